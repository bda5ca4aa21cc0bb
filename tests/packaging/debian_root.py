"""A fresh Debian 12 root for the package's system test, booted with ``systemd-nspawn --boot``.

The root is made once by ``debootstrap --variant=minbase`` (plus systemd, to boot: a gateway has
it) and kept as a tarball in ``~/.cache/edge-agent/roots/`` (``$XDG_CACHE_HOME`` if set), named
after its recipe, so that a changed recipe makes a new one. Every test unpacks its own copy and
deletes it. apt's downloads and lists are kept in ``~/.cache/edge-agent/apt/`` and bound into the
root by nspawn, so a warm run fetches only what changed in the archive.

``BootedRoot`` runs systemd as the container's PID 1 on the host's network namespace (a broker on
the host's loopback is the container's loopback too), and commands inside it through ``nsenter``
(the host need not run systemd; no machined). nspawn makes its mounts in a mount namespace of its
own, so nothing is mounted on the host, and stopping nspawn (our child, by its PID) shuts the
container down. Needs root, debootstrap, systemd-nspawn (systemd-container) and the Debian
archive; the tools are installed with scripts/apt-install.sh when missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

#: Debian 12, what the gateways run (Raspberry Pi OS bookworm); "trixie" (13) works too.
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
#: Beyond minbase: what boots it. Nothing of Python: the package's Depends must bring that.
INCLUDE = ("systemd", "systemd-sysv")


def sources(suite: str) -> str:
    """A gateway's sources: the release, its updates and its security updates."""
    return (
        f"deb {MIRROR} {suite} main\n"
        f"deb {MIRROR} {suite}-updates main\n"
        f"deb http://deb.debian.org/debian-security {suite}-security main\n"
    )


#: Generous bounds, for a cold cache on a slow mirror.
DEBOOTSTRAP_TIMEOUT = 900
BOOT_TIMEOUT = 90
#: Tools of the host: the command and the Debian package it comes from.
HOST_TOOLS = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container"}
APT_INSTALL = Path(__file__).parents[2] / "scripts" / "apt-install.sh"
#: Commands inside the root get this environment, nothing of the test's.
ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "TERM": "dumb",
    "DEBIAN_FRONTEND": "noninteractive",
}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-agent"


def ensure_host_tools() -> None:
    """debootstrap and systemd-nspawn, installed the project's way where missing
    (scripts/apt-install.sh: quietly, and no daemon of theirs started or enabled)."""
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        subprocess.run([str(APT_INSTALL), *missing], timeout=900, check=True)


def architecture() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


def cached_tarball(suite: str) -> Path:
    """The debootstrapped root as a tarball, made when missing (about a minute)."""
    recipe = hashlib.sha256(f"{suite} minbase {INCLUDE} {sources(suite)}".encode()).hexdigest()
    recipe = recipe[:10]
    roots = cache_dir() / "roots"
    roots.mkdir(parents=True, exist_ok=True)
    tarball = roots / f"debian-{suite}-{architecture()}-minbase-{recipe}.tar.gz"
    # Two runs at once would debootstrap twice and race for the name: the second one waits.
    with (roots / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tarball.exists():
            make_tarball(tarball, suite)
    return tarball


def make_tarball(tarball: Path, suite: str) -> None:
    work = Path(tempfile.mkdtemp(prefix=".debootstrap-", dir=tarball.parent))
    root = work / "root"
    try:
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}", suite,
             str(root), MIRROR],
            capture_output=True, text=True, timeout=DEBOOTSTRAP_TIMEOUT, check=True,
        )  # fmt: skip
        (root / "etc" / "apt" / "sources.list").write_text(sources(suite))
        partial = tarball.with_suffix(".partial")
        subprocess.run(
            ["tar", "--numeric-owner", "-czf", str(partial), "-C", str(root), "."],
            capture_output=True, timeout=600, check=True,
        )  # fmt: skip
        partial.rename(tarball)
    finally:
        # debootstrap mounts /proc and /sys in the root while it works; a failed one may leave
        # them: unmount before deleting, never delete through a mount.
        unmount_below(work)
        shutil.rmtree(work)


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below ``path`` in the host's mount table, deepest first."""
    prefix = str(path.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def unmount_below(path: Path) -> None:
    for point in mounts_below(path):
        subprocess.run(["umount", point], capture_output=True, timeout=60, check=False)
    left = mounts_below(path)
    if left:
        raise RuntimeError(f"still mounted below {path}: {left}; not deleting it")


@contextlib.contextmanager
def fresh_root(parent: Path, suite: str = SUITE) -> Iterator[Path]:
    """A copy of the cached root of ``suite`` under ``parent`` (pytest's tmp dir), deleted
    afterwards."""
    ensure_host_tools()
    tarball = cached_tarball(suite)
    root = parent / "debian-root"
    root.mkdir()
    try:
        subprocess.run(
            ["tar", "--numeric-owner", "-xzf", str(tarball), "-C", str(root)],
            capture_output=True, timeout=300, check=True,
        )  # fmt: skip
        yield root
    finally:
        unmount_below(root)
        shutil.rmtree(root)


class BootedRoot:
    """``root`` booted by systemd-nspawn until ``stop()`` (or the end of a ``with``)."""

    def __init__(self, root: Path, log: Path, suite: str = SUITE) -> None:
        self.root = root
        self.log = log
        self.suite = suite
        self.name = f"edge-agent-test-{os.getpid()}"
        self._nspawn: subprocess.Popen[bytes] | None = None
        self.init_pid = 0

    def __enter__(self) -> BootedRoot:
        self.boot()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def boot(self) -> None:
        apt = cache_dir() / "apt" / self.suite  # apt-get update drops lists of other suites
        for part in ("archives/partial", "lists/partial"):
            (apt / part).mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self._nspawn = subprocess.Popen(
                [
                    "systemd-nspawn", "--quiet", "--boot", f"--directory={self.root}",
                    f"--machine={self.name}",
                    # Without a host systemd to talk to: no machined, no scope of its own.
                    "--register=no", "--keep-unit",
                    "--resolv-conf=copy-host", "--link-journal=no", "--timezone=off",
                    f"--bind={apt / 'archives'}:/var/cache/apt/archives",
                    f"--bind={apt / 'lists'}:/var/lib/apt/lists",
                ],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # cgroup v2 alone inside, as on a Debian 12 gateway, even on a host that still
                # mounts v1 (systemd 256 and later, Debian 13's, boot on v2 only).
                env={**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"},
            )  # fmt: skip
        try:
            self.init_pid = self._wait_for_init()
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise

    def _wait_for_init(self) -> int:
        """The container's PID 1 (its pid on the host), once nspawn has started it."""
        assert self._nspawn is not None
        deadline = time.monotonic() + BOOT_TIMEOUT
        tasks = Path(f"/proc/{self._nspawn.pid}/task")
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise RuntimeError(
                    f"systemd-nspawn exited:\n{self.log.read_text(errors='replace')}"
                )
            for children in tasks.glob("*/children"):
                for pid in children.read_text().split():
                    with contextlib.suppress(OSError):
                        status = Path(f"/proc/{pid}/status").read_text()
                        if any(line.split()[-1] == "1" for line in status.splitlines()
                               if line.startswith("NSpid:")):  # fmt: skip
                            return int(pid)
            time.sleep(0.05)  # another process's state: no event announces it
        raise TimeoutError(f"no init in the container after {BOOT_TIMEOUT}s")

    def _wait_until_up(self) -> None:
        """Until systemd says the boot is done: `is-system-running --wait` awaits it, once
        systemd answers at all."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        state = ""
        while time.monotonic() < deadline:
            result = self.run(
                "systemctl", "is-system-running", "--wait", timeout=BOOT_TIMEOUT, check=False
            )
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.1)  # systemd does not answer yet: nothing to await before it does
        raise TimeoutError(f"the container did not boot in {BOOT_TIMEOUT}s (state {state!r})")

    def run(
        self, *command: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``command`` inside the container, as its root, in all its namespaces."""
        result = subprocess.run(
            ["nsenter", f"--target={self.init_pid}", "--all", "--root", "--wd",
             "env", "-i", *(f"{k}={v}" for k, v in ENV.items()), *command],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def stop(self, timeout: float = 60) -> None:
        """Shut the container down: SIGTERM makes nspawn ask its systemd to power off."""
        nspawn, self._nspawn = self._nspawn, None
        if nspawn is None:
            return
        nspawn.terminate()
        try:
            nspawn.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            nspawn.kill()
            nspawn.wait(timeout=30)
