"""scripts/apt-install.sh, the one way the scripts install Debian packages, against stand-ins for
apt-get, dpkg-query, sudo, id and deb-systemd-helper that record how they were called.

It runs in a mount namespace of its own with an empty directory over /usr/sbin, so the
policy-rc.d it writes there for the length of the install never reaches the host."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
APT_INSTALL = ROOT / "scripts" / "apt-install.sh"

#: Stand-ins: each appends its name, arguments and DEBIAN_FRONTEND to $CALLS.
RECORD = 'echo "$(basename "$0") [${DEBIAN_FRONTEND:-}] $*" >>"$CALLS"\n'
STUBS = {
    # Nothing is installed; the mosquitto package brings one unit.
    "dpkg-query": RECORD + 'case "$1" in -W) exit 1 ;; -L) [ "$2" != mosquitto ] ||'
    " echo /lib/systemd/system/mosquitto.service ;; esac\n",
    # apt-get also says whether the daemon would have been started, as invoke-rc.d asks.
    "apt-get": RECORD + 'if [ "$1" = install ]; then /usr/sbin/policy-rc.d mosquitto start;'
    ' echo "policy-rc.d says $?" >>"$CALLS"; fi\n',
    "deb-systemd-helper": RECORD,
    # sudo resets the environment, as Debian's does (env_reset).
    "sudo": RECORD + 'exec env -i PATH="$PATH" CALLS="$CALLS" "$@"\n',
    "id": 'echo "${FAKE_UID:-0}"\n',
}


def run(
    tmp_path: Path,
    *,
    uid: int,
    sudo: bool,
    packages: tuple[str, ...] = ("mosquitto",),
    policy: str | None = None,
) -> tuple[subprocess.CompletedProcess[str], str]:
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, body in STUBS.items():
        if name != "sudo" or sudo:
            (stubs / name).write_text("#!/bin/sh\n" + body)
            (stubs / name).chmod(0o755)
    (tmp_path / "sbin").mkdir()
    if policy is not None:
        (tmp_path / "sbin" / "policy-rc.d").write_text(policy)
        (tmp_path / "sbin" / "policy-rc.d").chmod(0o755)
    calls = tmp_path / "calls"
    calls.touch()
    script = 'mount --bind "$0" /usr/sbin && exec "$@"'
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            str(tmp_path / "sbin"),
            str(APT_INSTALL),
            *packages,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": f"{stubs}:/usr/bin:/bin", "CALLS": str(calls), "FAKE_UID": str(uid)},
    )
    if result.stderr.startswith(("unshare:", "mount:")):
        pytest.skip(f"cannot make a mount namespace here: {result.stderr.strip()}")
    left = sorted(path.name for path in (tmp_path / "sbin").iterdir())
    assert left == ([] if policy is None or "edge-agent" in policy else ["policy-rc.d"])
    return result, calls.read_text()


pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts in a namespace: needs root")


def test_installs_without_questions_starting_or_enabling_a_daemon(tmp_path: Path) -> None:
    result, calls = run(tmp_path, uid=0, sudo=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "apt-install: installing mosquitto\n"
    assert "apt-get [noninteractive] update -qq" in calls
    assert "apt-get [noninteractive] install -y -qq --no-install-recommends mosquitto" in calls
    assert "policy-rc.d says 101" in calls  # the daemon is not started
    assert "deb-systemd-helper [noninteractive] disable mosquitto.service" in calls


def test_through_sudo_the_answers_stay_non_interactive(tmp_path: Path) -> None:
    result, calls = run(tmp_path, uid=1000, sudo=True)
    assert result.returncode == 0, result.stderr
    assert "sudo [] env DEBIAN_FRONTEND=noninteractive apt-get install" in calls
    assert "apt-get [noninteractive] install -y -qq --no-install-recommends mosquitto" in calls


def test_without_root_or_sudo_it_says_so_in_one_line(tmp_path: Path) -> None:
    result, calls = run(tmp_path, uid=1000, sudo=False)
    assert result.returncode == 1
    assert result.stderr == (
        "apt-install: installing mosquitto needs root: run this as root, or install sudo\n"
    )
    assert "apt-get" not in calls


def test_packages_without_a_daemon_install_as_well(tmp_path: Path) -> None:
    """python3-venv and mosquitto-clients bring no unit: nothing to disable, and no failure."""
    packages = ("mosquitto", "mosquitto-clients", "python3-venv")
    result, calls = run(tmp_path, uid=0, sudo=False, packages=packages)
    assert result.returncode == 0, result.stderr
    assert (
        "install -y -qq --no-install-recommends mosquitto mosquitto-clients python3-venv" in calls
    )
    assert calls.count("deb-systemd-helper") == 1


def test_a_policy_left_by_a_killed_run_is_taken_back(tmp_path: Path) -> None:
    """A run killed mid-install (no trap runs) leaves its policy-rc.d: it would forbid every
    daemon's restart by apt from then on, so the next run removes it when it is done."""
    dead = "#!/bin/sh\n# edge-agent apt-install, pid 999999999\nexit 101\n"
    result, calls = run(tmp_path, uid=0, sudo=False, policy=dead)
    assert result.returncode == 0, result.stderr
    assert "policy-rc.d says 101" in calls


def test_the_administrators_own_policy_is_left_alone(tmp_path: Path) -> None:
    theirs = "#!/bin/sh\nexit 0\n"
    result, calls = run(tmp_path, uid=0, sudo=False, policy=theirs)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sbin" / "policy-rc.d").read_text() == theirs
    assert "policy-rc.d says 0" in calls
