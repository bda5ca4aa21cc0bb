#!/usr/bin/env bash
# Proof on ARM: the release's wheel and Debian package installed, and the test suite run, in
# minimal Debian roots of the gateways' architectures under qemu-user emulation (binfmt_misc).
# For each architecture: a fresh root (debootstrap --variant=minbase, cached), the .deb installed
# with apt (then `edge-agent --version`, `edge-agent check` of the installed example, and
# `edge-agent templates`, as a technician would), and the sdist's tests run against the wheel in
# a venv of the root's own Python. Tests that need what a chroot does not have (systemd, mount
# namespaces, loop devices) skip themselves. Results and wall times go to build/arm-proof/.
#
# Usage: sudo scripts/arm-proof.sh [--arch arm64|armhf|amd64]... [--suite bookworm|trixie]
#                                  [-- PYTEST-OPTIONS...]   (such as -k sdi12, -x)
#   default: --arch arm64 --arch armhf --suite bookworm (Raspberry Pi OS bookworm is Debian 12)
# Needs root (debootstrap, chroot, mounts) and the network to deb.debian.org and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
clone=$(pwd)

die() { echo "arm-proof: $*" >&2; exit 1; }
say() { echo "arm-proof: $*" >&2; }

arches=()
suite=bookworm
pytest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) [ $# -ge 2 ] || die "--arch needs arm64, armhf or amd64"; arches+=("$2"); shift 2 ;;
    --suite) [ $# -ge 2 ] || die "--suite needs bookworm or trixie"; suite=$2; shift 2 ;;
    --) shift; pytest_args=("$@"); break ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see $0 --help)" ;;
  esac
done
[ ${#arches[@]} -gt 0 ] || arches=(arm64 armhf)
[ "$(id -u)" -eq 0 ] || die "run it as root: it makes roots with debootstrap and chroots into them"
for arch in "${arches[@]}"; do
  case "$arch" in arm64 | armhf | amd64) ;; *) die "--arch $arch: use arm64, armhf or amd64" ;; esac
done

out=$clone/build/arm-proof
cache=${XDG_CACHE_HOME:-$HOME/.cache}/edge-agent/roots
mkdir -p "$out" "$cache"

# --- Emulation: qemu-user-static registers its interpreters with binfmt_misc (the F flag: the
# kernel keeps the interpreter open, so it works inside a chroot without a copy of qemu there).
scripts/apt-install.sh debootstrap qemu-user-static binfmt-support
mounted_binfmt=false
mounts=()
cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}" 2>/dev/null || true; done
  if $mounted_binfmt; then umount /proc/sys/fs/binfmt_misc 2>/dev/null || true; fi
}
trap cleanup EXIT
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc"
  mounted_binfmt=true
fi
qemu_of() { case "$1" in arm64) echo qemu-aarch64 ;; armhf) echo qemu-arm ;; *) echo "" ;; esac; }
for arch in "${arches[@]}"; do
  entry=$(qemu_of "$arch")
  [ -z "$entry" ] || [ -e "/proc/sys/fs/binfmt_misc/$entry" ] || update-binfmts --enable "$entry" ||
    die "no $entry in binfmt_misc: dpkg-reconfigure qemu-user-static"
done

# --- What is proven: this clone's wheel, sdist and .deb.
venv=$(scripts/setup.sh | tail -n 1)
# A folder of this run's own: runs for different architectures can go side by side.
dist=$out/dist-$(IFS=-; echo "${arches[*]}")
rm -rf "$dist"
say "building the wheel and the sdist"
"$venv/bin/python" -m build --outdir "$dist" . >"$dist.build.log" 2>&1 ||
  { tail -n 20 "$dist.build.log" >&2; die "python -m build failed (above)"; }
say "building the Debian package"
deb=$(scripts/build-deb.sh --python "$venv/bin/python" --out "$dist" 2>"$dist.deb.log") ||
  { tail -n 20 "$dist.deb.log" >&2; die "scripts/build-deb.sh failed (above)"; }
# The tools the suite runs with: the test extra, less the linter and the type checker, which
# run once on the build machine (and mypy needs a compiler on armhf: librt has no wheel there).
mapfile -t test_tools < <("$venv/bin/python" - <<'PY'
import re, sys
if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib
with open("pyproject.toml", "rb") as file:
    extra = tomllib.load(file)["project"]["optional-dependencies"]["test"]
print("\n".join(r for r in extra if re.split(r"[<>=!~ ;\[]", r)[0] not in ("ruff", "mypy")))
PY
)
version=$("$venv/bin/python" -c 'import agent; print(agent.__version__)')
wheel=$dist/edge_agent-$version-py3-none-any.whl
sdist=$dist/edge_agent-$version.tar.gz
for made in "$wheel" "$sdist" "$deb"; do [ -f "$made" ] || die "the build made no $made"; done

# --- One root per architecture, made once and kept as a tarball; each run starts from a copy.
fresh_root() {
  local arch=$1 root=$2
  local tarball=$cache/$suite-$arch.tar
  if [ ! -f "$tarball" ]; then
    say "$arch: debootstrap $suite (once; kept in $tarball)"
    local build=$root.debootstrap
    rm -rf --one-file-system "$build"
    debootstrap --arch="$arch" --variant=minbase \
      --include=python3,python3-venv,mosquitto,ca-certificates \
      "$suite" "$build" http://deb.debian.org/debian >"$out/$arch-debootstrap.log" 2>&1 ||
      { tail -n 20 "$out/$arch-debootstrap.log" >&2; die "$arch: debootstrap failed (above)"; }
    tar -C "$build" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf --one-file-system "$build"
  fi
  # Never delete through a mount of the host's /proc, /sys or /dev (an earlier run cut short).
  if grep -q " $root/" /proc/mounts; then die "$root still has mounts: umount -R $root"; fi
  rm -rf --one-file-system "$root"
  mkdir -p "$root"
  tar -C "$root" -xf "$tarball"
}

bind() {
  mkdir -p "$2"
  mount "${@:3}" "$1" "$2"
  mounts+=("$2")
}

in_root() {
  chroot "$root" env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
}

# The package as a technician installs it, then a venv with the wheel and the test tools. Each
# step must work: the first that fails ends it.
install_in_root() {
  echo "== $suite $arch: $(in_root uname -m), $(in_root python3 --version)"
  echo "== apt-get install ./$(basename "$deb")"
  in_root apt-get install -y -qq "/proof/$(basename "$deb")" || return
  in_root edge-agent --version || return
  in_root sh -c 'CREDENTIALS_DIRECTORY=/etc/edge-agent edge-agent check -c /etc/edge-agent/config.toml' ||
    return
  in_root edge-agent templates >"$root/proof/templates.txt" || return
  head -n 3 "$root/proof/templates.txt"
  echo "== the sdist's tests against the wheel"
  in_root python3 -m venv /proof/venv || return
  in_root /proof/venv/bin/pip install -q "/proof/$(basename "$wheel")" "${test_tools[@]}" || return
  in_root tar -C /proof -xzf "/proof/$(basename "$sdist")" || return
  # The tests import the agent from the wheel: they run from /proof, where no copy of the sources
  # is (also the agent's own command lines they start, `python -m agent`, import it from there),
  # and --import-mode=append puts the sdist's folder after site-packages.
  echo "== the agent imported: $(in_root sh -c 'cd /proof && /proof/venv/bin/python -c "import agent; print(agent.__file__)"')"
}

summary=()
for arch in "${arches[@]}"; do
  root=$out/$suite-$arch
  log=$out/$suite-$arch.log
  started=$(date +%s)
  fresh_root "$arch" "$root"
  bind /proc "$root/proc" -t proc
  bind /sys "$root/sys" --rbind
  bind /dev "$root/dev" --rbind
  bind tmpfs "$root/tmp" -t tmpfs
  # The host's name servers and certificate authorities, so pip reaches PyPI as it does here.
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  mkdir -p "$root/proof"
  cp "$wheel" "$sdist" "$deb" "$root/proof/"
  src=/proof/edge_agent-$version
  if ! install_in_root >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    die "$arch: installing failed (above; all in $log)"
  fi
  say "$arch: installed; running the tests (log: $log)"
  tests_started=$(date +%s)
  set +e
  in_root sh -c "cd /proof && exec /proof/venv/bin/pytest -q -p no:cacheprovider \
    --import-mode=append --rootdir $src -c $src/pyproject.toml \"\$@\" $src/tests" \
    pytest "${pytest_args[@]}" >>"$log" 2>&1
  code=$?
  set -e
  ended=$(date +%s)
  result=$(grep -E '^(=+ )?[0-9]+ (passed|failed)' "$log" | tail -n 1 | sed 's/=//g; s/^ *//; s/ *$//' ||
    true)
  line="$suite $arch: pytest exit $code, ${result:-no summary}; tests $((ended - tests_started)) s,"
  line+=" all $((ended - started)) s"
  echo "== $line" >>"$log"
  say "$line"
  summary+=("$line")
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[i]}"; done
  mounts=()
done
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
