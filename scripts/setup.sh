#!/usr/bin/env bash
# Set up what edge-agent needs on a Debian / Raspberry Pi OS machine, idempotently:
# system packages (Mosquitto, venv) and a virtual environment per Python in .venv/<version>.
# Usage: scripts/setup.sh [PYTHON...]   (default: the system python3)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${need_apt[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
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
  # Install again only when the dependencies changed: the stamp holds pyproject.toml's checksum.
  stamp="$venv/.installed"
  wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "setup: installing edge-agent and its test tools into $venv" >&2
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" >&2
    echo "$wanted" >"$stamp"
  fi
  echo "$venv"
done
