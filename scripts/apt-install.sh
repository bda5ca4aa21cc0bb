#!/usr/bin/env bash
# Install the Debian packages named that are missing, the one way every script here does it:
# without questions (DEBIAN_FRONTEND=noninteractive, also through sudo), quietly (apt's output
# only when it fails), through sudo when not root, and without side effects on the machine's
# services: a daemon a package brings (mosquitto.service) is neither started now nor enabled
# for the next boot. A package already installed is left as it is.
# Usage: scripts/apt-install.sh PACKAGE...
set -euo pipefail

die() { echo "apt-install: $*" >&2; exit 1; }

missing=()
for package in "$@"; do
  # The package's state alone ("installed"), whatever is wanted of it: a held one is installed.
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null)" = installed ] ||
    missing+=("$package")
done
[ ${#missing[@]} -gt 0 ] || exit 0

command -v apt-get >/dev/null 2>&1 || die "no apt-get: install ${missing[*]} yourself"
as_root=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 ||
    die "installing ${missing[*]} needs root: run this as root, or install sudo"
  as_root=(sudo)
fi
run() { "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive "$@"; }

log=$(mktemp)
# policy-rc.d answering 101 ("action forbidden") is Debian's switch that stops a package's
# maintainer scripts from starting its daemon; one the administrator keeps is left alone. Ours
# says whose it is: one left by a run that was killed (no trap runs then) is taken back, since it
# would forbid every daemon's restart by apt from then on.
policy=/usr/sbin/policy-rc.d
marker="# edge-agent apt-install, pid"
ours=false
cleanup() {
  if $ours; then run rm -f "$policy"; fi
  rm -f "$log"
}
trap cleanup EXIT
left_by=$(sed -n "s/^$marker \([0-9]*\)\$/\1/p" "$policy" 2>/dev/null || true)
if [ -n "$left_by" ] && [ ! -d "/proc/$left_by" ]; then
  run rm -f "$policy"
fi
if [ ! -e "$policy" ]; then
  run sh -c "printf '#!/bin/sh\n$marker $$\nexit 101\n' >$policy && chmod 0755 $policy"
  ours=true
fi

echo "apt-install: installing ${missing[*]}" >&2
if ! { run apt-get update -qq && run apt-get install -y -qq --no-install-recommends \
  "${missing[@]}"; } >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  die "apt-get could not install ${missing[*]} (its last lines above)"
fi

# The packages were not here before, so their units were not the administrator's choice: undo
# the enabling their postinst did (deb-systemd-helper remembers it, so upgrades keep it off).
if command -v deb-systemd-helper >/dev/null 2>&1; then
  for package in "${missing[@]}"; do
    # Most packages bring no unit: grep then finds nothing, which is no failure.
    units=$(dpkg-query -L "$package" 2>/dev/null |
      grep -E '^(/usr)?/lib/systemd/system/[^/]+\.service$' || true)
    for unit in $units; do
      run deb-systemd-helper disable "$(basename "$unit")" >/dev/null 2>&1 || true
    done
  done
fi
