#!/usr/bin/env bash
# Set up what edge-agent needs on a Debian / Raspberry Pi OS machine, idempotently: system
# packages (Mosquitto, venv, and for tests a headless Chromium; through scripts/apt-install.sh,
# which starts and enables no daemon) and a virtual environment per Python in .venv/<version>, with edge-agent installed editable.
# Usage: scripts/setup.sh [--for test|demo] [PYTHON...]   (default: --for test, the system python3)
#   --for test   also the test tools (pytest, hypothesis, ruff, mypy, build)
#   --for demo   the agent alone, and mosquitto_sub to watch what it publishes
# Prints the venvs' paths, one per line.
set -euo pipefail
cd "$(dirname "$0")/.."

purpose="test"
if [ "${1:-}" = "--for" ]; then
  purpose=${2:-}
  shift 2 || true
fi
case "$purpose" in
  test) extras="[test]" ;;
  demo) extras="" ;;
  *) echo "setup: --for takes test or demo, not '$purpose'" >&2; exit 1 ;;
esac

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
if [ "$purpose" = demo ]; then
  command -v mosquitto_sub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
fi
if [ "$purpose" = test ]; then  # the technician's page is tested in a real browser
  command -v chromium-headless-shell >/dev/null 2>&1 || command -v chromium >/dev/null 2>&1 ||
    need_apt+=(chromium-headless-shell)
fi
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  scripts/apt-install.sh "${need_apt[@]}"
fi

pythons=("$@")
[ ${#pythons[@]} -gt 0 ] || pythons=(python3)
for python in "${pythons[@]}"; do
  version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  venv=".venv/$version"
  if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv" >&2
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
  fi
  # Install again only when the dependencies changed or the clone moved (an editable install
  # points at its folder): the stamp holds pyproject.toml's checksum with the folder, and what
  # was installed ("test" holds all the demo needs).
  stamp="$venv/.installed"
  checksum=$( (sha256sum pyproject.toml && pwd) | sha256sum | cut -d' ' -f1)
  have_checksum="" have_purpose=""
  if [ -f "$stamp" ]; then read -r have_checksum have_purpose <"$stamp" || true; fi
  if [ "${have_checksum:-}" != "$checksum" ] ||
    { [ "$purpose" = test ] && [ "${have_purpose:-test}" != test ]; }; then
    echo "setup: installing edge-agent${extras:+ and its test tools} into $venv" >&2
    # setuptools warns of folders shadowing the package in every editable install: these
    # folders are the package.
    PYTHONWARNINGS="ignore:Editable installation" "$venv/bin/python" -m pip install -q \
      --disable-pip-version-check -e ".$extras" >&2
    echo "$checksum $purpose" >"$stamp"
  fi
  echo "$venv"
done
