#!/usr/bin/env bash
# Build the Debian package of edge-agent from this tree: dist/edge-agent_<version>-1_all.deb,
# <version> being agent/__init__.py's __version__. One package for armhf, arm64 and amd64,
# Debian 12 and 13: it runs on the system's /usr/bin/python3 (3.10 or later).
#
# How: `python -m build --wheel` makes the agent's wheel from a copy of the sources; `pip install
# --target /opt/edge-agent/lib --no-compile` puts it there with its dependencies, which must all
# be pure-Python wheels (packaging/deb/vendored.py checks it, and adds what an older or newer
# Python needs beyond what pip chose for this one, such as tomli on 3.10). Beside them go the
# launcher, the unit systemd/edge-agent.service, systemd/config.example.toml as the conffile
# /etc/edge-agent/config.toml, and the maintainer scripts of packaging/deb/; then
# `dpkg-deb --root-owner-group --build`. See README.md, "The Debian package".
#
# Usage: scripts/build-deb.sh [--python PYTHON] [--out DIR]
#   --python P  the Python with pip and `build` that builds the wheel and runs pip (default: the
#               newest .venv/*/bin/python that has them, else python3)
#   --out DIR   where the package goes (default: the tree's dist/)
# Needs dpkg-deb and PyPI (or pip's cache). Prints the package's path; the rest goes to stderr.
# DEB_MAINTAINER sets the Maintainer field (default: the author of the last commit).
set -euo pipefail
caller=$(pwd)
cd "$(dirname "$0")/.."
tree=$(pwd)

die() { echo "build-deb: $*" >&2; exit 1; }
say() { echo "build-deb: $*" >&2; }

python=""
out=$tree/dist
while [ $# -gt 0 ]; do
  case "$1" in
    --python) [ $# -ge 2 ] || die "--python needs an interpreter"; python=$2; shift 2 ;;
    --python=*) python=${1#--python=}; shift ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see $0 --help)" ;;
  esac
done
case "$out" in /*) ;; *) out=$caller/$out ;; esac

command -v dpkg-deb >/dev/null 2>&1 || die "no dpkg-deb: apt-get install dpkg"
# Python runs outside the tree: there, its build/ folder would hide the module build.
has_tools() { (cd / && "$1" -c 'import build, packaging, pip') >/dev/null 2>&1; }
if [ -z "$python" ]; then
  for candidate in $(printf '%s\n' "$tree"/.venv/*/bin/python | sort -rV) python3; do
    if has_tools "$candidate"; then python=$candidate; break; fi
  done
  [ -n "$python" ] || die "no Python with pip and build: scripts/setup.sh, or pass --python"
fi
# Absolute, not resolved: a venv's python, resolved, would lose its venv.
case "$python" in */*) python=$(cd "$(dirname "$python")" && pwd)/$(basename "$python") ;; esac
has_tools "$python" || die "$python lacks pip or build: pip install build, or pass another --python"

upstream=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' agent/__init__.py)
[ -n "$upstream" ] || die "no __version__ = \"…\" line in agent/__init__.py"
# A pre-release sorts before its release in Debian only with a tilde: 0.3.0rc1 -> 0.3.0~rc1.
version=$(echo "$upstream" | sed -E 's/^([0-9.]*[0-9])\.?((a|b|rc|dev)[0-9]*)/\1~\2/')-1
maintainer=${DEB_MAINTAINER:-$(git log -1 --format='%an <%ae>' 2>/dev/null || true)}
maintainer=${maintainer:-edge-agent maintainers <root@localhost>}

umask 022
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
py() { (cd "$work" && "$python" "$@"); }

# --- The wheel, from a copy: the tree gets no build/ or *.egg-info of root's.
mkdir "$work/src"
cp -r pyproject.toml README.md agent drivers "$work/src/"
find "$work/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
say "building the wheel of edge-agent $upstream with $python"
py -m build --wheel --outdir "$work/wheel" "$work/src" >"$work/build.log" 2>&1 ||
  { cat "$work/build.log" >&2; die "the wheel did not build (above)"; }
wheel=$(echo "$work"/wheel/edge_agent-*.whl)
[ -f "$wheel" ] || die "python -m build made no edge_agent wheel in $work/wheel"

# --- The agent and its dependencies in /opt/edge-agent/lib. Wheels only, and only those for any
# platform (py3-none-any): an sdist could build a C extension, a platform wheel would tie the
# package to this machine's architecture.
stage=$work/stage
lib=$stage/opt/edge-agent/lib
# --python-version: resolved for the oldest Python the package promises (Depends: python3 >= 3.10),
# so that a library whose release dropped 3.10 is refused here, not on a gateway.
pure=(--only-binary=:all: --platform any --implementation py --abi none --python-version 3.10)
pip_install() {
  py -m pip install --quiet --disable-pip-version-check --no-compile \
    --no-warn-script-location --target "$lib" "${pure[@]}" "$@" >&2
}
say "vendoring the dependencies into /opt/edge-agent/lib"
pip_install "$wheel" || die "pip could not install the wheel's dependencies (above)"
# colorzero names setuptools among its requirements but never imports it: not shipped.
not_at_run_time=(setuptools)
for round in 1 2 3 4; do
  wanted=$(py "$tree/packaging/deb/vendored.py" missing "$lib" --ignore "${not_at_run_time[@]}") ||
    die "the vendored libraries do not fit together (above)"
  [ -n "$wanted" ] || break
  [ "$round" -lt 4 ] || die "the vendored libraries still lack $wanted after three rounds"
  mapfile -t wanted_list <<<"$wanted"
  say "adding what other Pythons need: ${wanted_list[*]}"
  pip_install --no-deps "${wanted_list[@]}" || die "pip could not add ${wanted_list[*]} (above)"
done
# setuptools and what it brings; pip's console scripts, whose shebang is this build's Python; the
# record of where the wheel was built from.
(cd "$lib" && rm -rf setuptools setuptools-*.dist-info pkg_resources _distutils_hack \
  distutils-precedence.pth bin edge_agent-*.dist-info/direct_url.json)
find "$lib" -name __pycache__ -prune -exec rm -rf {} +
vendored=$(py "$tree/packaging/deb/vendored.py" check "$lib") ||
  die "not pure Python (above): the package could not be Architecture: all"

# --- The rest of the package's files.
opt=$stage/opt/edge-agent
install -D -m 0755 packaging/deb/launcher.py "$opt/bin/edge-agent"
install -m 0644 README.md "$opt/README.md"  # the unit's Documentation=
install -m 0644 systemd/config.example.toml "$opt/config.example.toml"
install -d "$stage/usr/bin"
ln -s /opt/edge-agent/bin/edge-agent "$stage/usr/bin/edge-agent"
install -D -m 0644 systemd/edge-agent.service "$stage/usr/lib/systemd/system/edge-agent.service"
install -D -m 0755 packaging/deb/edge-agent.rtupdate \
  "$stage/usr/share/python3/runtime.d/edge-agent.rtupdate"
# Root's, and the group edge-agent's once postinst made it (dpkg-statoverride).
install -d -m 0750 "$stage/etc/edge-agent"
install -m 0640 systemd/config.example.toml "$stage/etc/edge-agent/config.toml"

# --- Control: the fields, the conffile, the checksums dpkg --verify compares, the scripts.
control=$stage/DEBIAN
install -d "$control"
size=$(du -sk --apparent-size "$stage" | cut -f1)
fields=$(<packaging/deb/control)
fields=${fields//@VERSION@/"$version"}  # quoted: the values are taken literally
fields=${fields//@MAINTAINER@/"$maintainer"}
fields=${fields//@INSTALLED_SIZE@/"$size"}
# The libraries and their versions, folded as a description's lines are (a space first).
fields=${fields//@VENDORED@/"$(echo "Vendored: $vendored." | fold -s -w 72 | sed 's/ *$//; s/^/ /')"}
echo "$fields" >"$control/control"
echo /etc/edge-agent/config.toml >"$control/conffiles"
(cd "$stage" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' | sort -z |
  xargs -0 md5sum) >"$control/md5sums"
for script in preinst postinst prerm postrm; do
  install -m 0755 "packaging/deb/$script" "$control/$script"
done

mkdir -p "$out"
deb=$(cd "$out" && pwd)/edge-agent_${version}_all.deb
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
say "built $deb ($(du -k "$deb" | cut -f1) KiB, $(($(date +%s) - started)) s): $vendored"
echo "$deb"
