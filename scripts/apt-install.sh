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
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
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
# maintainer scripts from starting its daemon; one the administrator keeps is left alone.
policy=/usr/sbin/policy-rc.d
ours=false
cleanup() {
  if $ours; then run rm -f "$policy"; fi
  rm -f "$log"
}
trap cleanup EXIT
if [ ! -e "$policy" ]; then
  run sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod 0755 $policy"
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
    dpkg-query -L "$package" 2>/dev/null | grep -E '^(/usr)?/lib/systemd/system/[^/]+\.service$' |
      while read -r unit; do
        run deb-systemd-helper disable "$(basename "$unit")" >/dev/null 2>&1 || true
      done
  done
fi
