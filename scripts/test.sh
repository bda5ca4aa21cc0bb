#!/usr/bin/env bash
# The whole test suite: lint (ruff), types (mypy) and pytest on every supported Python found
# (3.10, 3.11, 3.13 — on PATH or under pyenv). With CI=true every one of them must be present.
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

supported=(3.10 3.11 3.13)
pythons=()
missing=()
for version in "${supported[@]}"; do
  found=""
  for candidate in "$HOME/.pyenv/versions/$version".*/bin/python "python$version"; do
    # a pyenv shim is on PATH even where it cannot run that version: try it
    if "$candidate" -c 'import venv' >/dev/null 2>&1; then found=$(command -v "$candidate"); break; fi
  done
  if [ -n "$found" ]; then pythons+=("$found"); else missing+=("$version"); fi
done
if [ ${#pythons[@]} -eq 0 ]; then
  pythons=(python3)  # a plain gateway: test on the system Python
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "${CI:-}" = "true" ]; then
    echo "test: Python ${missing[*]} not found; CI tests every supported version" >&2
    exit 1
  fi
  echo "test: Python ${missing[*]} not found; testing on ${pythons[*]}" >&2
fi

venv_list=$(scripts/setup.sh "${pythons[@]}")
mapfile -t venvs <<<"$venv_list"

lint_venv=${venvs[-1]}
echo "== ruff" >&2
"$lint_venv/bin/ruff" check .
"$lint_venv/bin/ruff" format --check .
echo "== mypy" >&2
"$lint_venv/bin/mypy"
"$lint_venv/bin/mypy" --strict examples/fleet/push.py  # an example, not a package

# The Pythons run side by side: the suite mostly waits on brokers, slaves and agents, so three
# runs take little longer than one. Each has its own temporary directory and its own log, shown
# whole, one after another, when all are done.
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
pids=()
for venv in "${venvs[@]}"; do
  version=${venv#.venv/}
  # Tests of the whole system (the wheel on every Python, the Debian package in a fresh Debian
  # root) need no second or third run: they go with the last Python only.
  system=""; [ "$venv" != "${venvs[-1]}" ] || system=1
  (
    set +e
    EDGE_AGENT_SYSTEM_TESTS=$system "$venv/bin/python" -m pytest --basetemp "$logs/tmp-$version" "$@" >"$logs/$version.log" 2>&1
    echo $? >"$logs/$version.code"
  ) &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || true; done

status=0
for venv in "${venvs[@]}"; do
  version=${venv#.venv/}
  echo "== pytest on Python $version" >&2
  cat "$logs/$version.log"
  code=$(cat "$logs/$version.code" 2>/dev/null || echo 1)
  if [ "$code" -eq 5 ]; then
    echo "test: pytest collected no tests on $version: that is a failure" >&2
    code=1
  fi
  [ "$code" -eq 0 ] || status=$code
done
if [ -d build/artefacts ]; then
  echo "test: screenshots of the technician's page under build/artefacts/" >&2
fi
exit "$status"
