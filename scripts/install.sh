#!/usr/bin/env bash
# Install edge-agent as a systemd service on Debian / Raspberry Pi OS, from a clone, idempotently:
# the system user edge-agent, a virtual environment in /opt/edge-agent, /etc/edge-agent/config.toml
# (from systemd/config.example.toml, never overwritten), the unit, enabled, and the command
# /usr/local/bin/edge-agent. Running it again upgrades the agent to this clone's code (restarting
# a running service) and keeps the configuration.
#
# Usage: sudo scripts/install.sh [--start] [--python PYTHON] [--root DIR]
#        sudo scripts/install.sh --uninstall [--purge] [--root DIR]
#   --start      start the service now; without it the service is enabled for the next boot but
#                not started, as the example config must be edited first (a running service is
#                always restarted with the new version)
#   --python P   the interpreter for the virtual environment (default /usr/bin/python3)
#   --uninstall  stop, disable and remove the unit and /opt/edge-agent; keeps /etc/edge-agent, the
#                buffer in /var/lib/edge-agent and the user
#   --purge      with --uninstall: remove those too
#   --root DIR   install into DIR instead of / (for tests and images): everything under DIR,
#                `systemctl --root=DIR`, the user in DIR/etc/passwd; the running system is not
#                touched
set -euo pipefail
cd "$(dirname "$0")/.."
clone=$(pwd)

unit=edge-agent.service
user=edge-agent
prefix=/opt/edge-agent
conf_dir=/etc/edge-agent
state_dir=/var/lib/edge-agent
unit_dir=/etc/systemd/system
command_link=/usr/local/bin/edge-agent

die() { echo "install: $*" >&2; exit 1; }
say() { echo "install: $*" >&2; }

root=""
start=false
uninstall=false
purge=false
python=""
while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || die "--root needs a directory"; root=$2; shift 2 ;;
    --root=*) root=${1#--root=}; shift ;;
    --python) [ $# -ge 2 ] || die "--python needs an interpreter"; python=$2; shift 2 ;;
    --python=*) python=${1#--python=}; shift ;;
    --start) start=true; shift ;;
    --uninstall) uninstall=true; shift ;;
    --purge) purge=true; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see $0 --help)" ;;
  esac
done
if $purge && ! $uninstall; then die "--purge goes with --uninstall"; fi
if $start && $uninstall; then die "--start and --uninstall do not go together"; fi
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then die "run it as root: sudo $0"; fi
  die "run it as root, from a root shell (su -): $0"
fi
if [ -n "$root" ]; then
  [ -d "$root" ] || die "--root $root: no such directory"
  root=$(cd "$root" && pwd)
  [ "$root" != / ] || root=""
fi
# The Debian package owns /opt/edge-agent where it is installed: this script would mix its venv
# into the package's files (or, with --uninstall, delete them behind dpkg's back). A package
# removed but not purged still owns /etc/edge-agent and /var/lib/edge-agent: its purge would
# delete this script's configuration and buffer.
package=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${db:Status-Status}' edge-agent \
  2>/dev/null || true)
case "$package" in
  "" | not-installed) ;;
  installed) die "the Debian package edge-agent is installed here: upgrade it with apt install" \
    "./edge-agent_VERSION-1_all.deb, or apt remove edge-agent before using this script" ;;
  *) die "the Debian package edge-agent is still known here ($package): reinstall it, or" \
    "apt purge edge-agent first (that deletes /etc/edge-agent and the buffer in $state_dir)" ;;
esac
# Touch the running system's service manager only when installing into it and it runs (not in a
# chroot or an image being built, where `systemctl enable` still works offline).
live=false
if [ -z "$root" ] && [ -d /run/systemd/system ]; then live=true; fi
systemctl_() { if [ -n "$root" ]; then systemctl --root="$root" "$@"; else systemctl "$@"; fi; }
# Where no systemctl is (a container, an image being built by hand), the unit is enabled as
# `systemctl enable` would: its [Install] WantedBy= link, which systemd follows at boot.
wants_link=$root$unit_dir/multi-user.target.wants/$unit
enable_unit() {
  if command -v systemctl >/dev/null 2>&1; then
    systemctl_ enable "$unit" 2>&1 | sed 's/^/install: /' >&2
  else
    mkdir -p "$(dirname "$wants_link")"
    ln -sfn "$unit_dir/$unit" "$wants_link"
    say "no systemctl here: enabled $unit by its link in multi-user.target.wants"
  fi
}
disable_unit() {
  if command -v systemctl >/dev/null 2>&1; then
    systemctl_ disable "$unit" >/dev/null 2>&1 || true
  fi
  rm -f "$wants_link"
}

# The user's and group's ids in the target's own files (DIR/etc/passwd with --root), not the host's.
id_of() { awk -F: -v name="$2" '$1 == name { print $3; exit }' "$root/etc/$1" 2>/dev/null || true; }
# useradd, usermod, userdel: --prefix edits DIR/etc/{passwd,group,shadow,gshadow} without chroot.
account() {
  local tool=$1
  shift
  if [ -n "$root" ]; then "$tool" --prefix "$root" "$@"; else "$tool" "$@"; fi
}

if $uninstall; then
  if $live; then
    systemctl disable --now "$unit" 2>/dev/null || true
  elif [ -e "$root$unit_dir/$unit" ]; then
    disable_unit
  fi
  rm -f "$root$unit_dir/$unit"
  rm -rf "$root$prefix"
  if [ "$(readlink "$root$command_link" 2>/dev/null)" = "$prefix/bin/edge-agent" ]; then
    rm -f "$root$command_link"
  fi
  if $live; then systemctl daemon-reload; fi
  if $purge; then
    # The technician's drop-ins (systemctl edit), the config, the password and the buffer.
    rm -rf "$root$unit_dir/$unit.d" "$root$conf_dir" "$root$state_dir"
    if [ -n "$(id_of passwd "$user")" ]; then account userdel "$user"; fi
    # userdel removes the user's own group only where login.defs says USERGROUPS_ENAB yes.
    if [ -n "$(id_of group "$user")" ]; then account groupdel "$user"; fi
    say "removed edge-agent, its configuration, its buffer and the user $user"
  else
    # Kept: a reinstall finds the config and every sample not yet sent. The user stays because
    # it owns them (a new user could get another uid, or its old uid could go to someone else).
    say "removed the service and $prefix; kept $conf_dir, $state_dir (the buffer) and the" \
      "user $user: \`$0 --uninstall --purge\` removes them"
  fi
  exit 0
fi

# --- Python with venv. The system's by default: a pyenv or /home Python is hidden from the service
# (ProtectHome=yes), and python3-venv is the Debian package that completes it.
if [ -z "$python" ]; then
  if [ -x /usr/bin/python3 ]; then python=/usr/bin/python3; else python=$(command -v python3 || true); fi
fi
if [ -z "$python" ] && command -v apt-get >/dev/null 2>&1 && [ -z "$root" ]; then
  "$clone/scripts/apt-install.sh" python3
  python=/usr/bin/python3
fi
if [ -z "$python" ] || ! command -v "$python" >/dev/null 2>&1; then
  die "no python3: apt-get install python3"
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null ||
  die "$python is older than 3.10, which edge-agent needs (try --python python3.11)"
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  if [ "$python" = /usr/bin/python3 ] && command -v apt-get >/dev/null 2>&1; then
    "$clone/scripts/apt-install.sh" python3-venv
  else
    die "$python has no venv module: apt-get install python3-venv (or pass --python)"
  fi
fi
base=$("$python" -c 'import sys; print(sys.base_prefix)')
case "$base" in
  /home/* | /root/* | /run/user/*)
    if [ -z "$root" ]; then
      die "$python lives in $base, which the service cannot see (ProtectHome=yes): use --python /usr/bin/python3"
    fi ;;
esac

# --- The user: a system account without a login or a home of its own, in dialout (serial ports)
# and, where the group exists (Raspberry Pi OS), gpio. systemd gives the service these groups from
# /etc/group; the unit cannot name gpio itself, as a missing group fails the start on Debian.
if [ -n "$root" ] && [ ! -f "$root/etc/passwd" ]; then
  say "no $root/etc/passwd: the user $user is not created and the files stay root's"
elif [ -z "$(id_of passwd "$user")" ]; then
  say "creating the system user $user"
  account useradd --system --user-group --home-dir "$state_dir" --no-create-home \
    --shell /usr/sbin/nologin --comment "edge-agent service" "$user"
fi
if [ -n "$(id_of passwd "$user")" ]; then
  groups=""
  for group in dialout gpio; do
    if [ -n "$(id_of group "$group")" ]; then groups=${groups:+$groups,}$group; fi
  done
  if [ -n "$groups" ]; then account usermod --append --groups "$groups" "$user"; fi
fi
uid=$(id_of passwd "$user")
gid=$(id_of group "$user")
uid=${uid:-0}
gid=${gid:-0}

# --- The agent in its own virtual environment. A venv whose interpreter no longer runs (the OS
# upgraded Python) or is another version is made anew. pip builds from a copy of the sources, so
# the clone gets no root-owned build/ or *.egg-info. Dependencies change only when the clone's
# pyproject.toml asks for it; the agent itself is always reinstalled from this clone.
venv=$root$prefix
want=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
have=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
if [ "$have" != "$want" ]; then
  say "creating the virtual environment $venv (Python $want)"
  rm -rf "${venv:?}"
  "$python" -m venv "$venv"
fi
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cp -r "$clone/pyproject.toml" "$clone/README.md" "$clone/agent" "$clone/drivers" "$src/"
find "$src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
say "installing edge-agent into $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  "$src" >&2
install -m 0644 "$clone/README.md" "$venv/README.md"  # the unit's Documentation=

# --- /etc/edge-agent: root's, readable by the agent's group only (the config names the broker).
install -d -m 0750 -o 0 -g "$gid" "$root$conf_dir"
if [ -e "$root$conf_dir/config.toml" ]; then
  say "kept $conf_dir/config.toml; the current example is $conf_dir/config.example.toml"
else
  install -m 0640 -o 0 -g "$gid" "$clone/systemd/config.example.toml" "$root$conf_dir/config.toml"
  say "wrote $conf_dir/config.toml from the example: edit it"
fi
install -m 0640 -o 0 -g "$gid" "$clone/systemd/config.example.toml" "$root$conf_dir/config.example.toml"
# The MQTT password file, read by systemd (root) only; it hands the service a private copy. An
# empty file means no password; it exists so that `edge-agent check` finds what the config names.
if [ ! -e "$root$conf_dir/mqtt-password" ]; then
  install -m 0600 -o 0 -g 0 /dev/null "$root$conf_dir/mqtt-password"
fi
# The buffer's directory; systemd would make it at the first start, the CLI wants it before.
install -d -m 0700 -o "$uid" -g "$gid" "$root$state_dir"

# --- `edge-agent` on PATH for technicians (sudo edge-agent check, buffer stats, read …). The
# example config finds the password outside systemd too (${CREDENTIALS_DIRECTORY:-/etc/edge-agent}).
# Another program's /usr/local/bin/edge-agent is left alone.
command=$root$command_link
if [ ! -e "$command" ] || [ "$(readlink "$command")" = "$prefix/bin/edge-agent" ]; then
  mkdir -p "$(dirname "$command")"
  ln -sfn "$prefix/bin/edge-agent" "$command"
else
  say "left $command alone (not ours); the agent is $prefix/bin/edge-agent"
fi

# --- The unit, enabled for the next boot.
install -D -m 0644 "$clone/systemd/$unit" "$root$unit_dir/$unit"
if $live; then systemctl daemon-reload; fi
enable_unit

check() {
  CREDENTIALS_DIRECTORY=$root$conf_dir STATE_DIRECTORY=$root$state_dir \
    "$venv/bin/edge-agent" check -c "$root$conf_dir/config.toml" >&2
}
if check; then valid=true; else valid=false; fi
if $live && systemctl is-active --quiet "$unit"; then
  $valid || die "not restarted: $conf_dir/config.toml is invalid (above); the old agent runs on"
  systemctl restart "$unit"
  say "restarted $unit with the new version"
elif $start && [ -z "$root" ]; then
  $valid || die "not started: fix $conf_dir/config.toml (above), then systemctl start $unit"
  if $live; then
    systemctl start "$unit"
    say "started $unit: journalctl -u $unit -f"
  else
    say "systemd does not run here: $unit starts at the next boot"
  fi
else
  say "enabled $unit for the next boot. Edit $conf_dir/config.toml (the broker password goes in" \
    "$conf_dir/mqtt-password), then: edge-agent check && systemctl start $unit"
fi
