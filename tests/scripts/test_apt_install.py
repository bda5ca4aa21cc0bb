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
    "dpkg-query": RECORD
    + 'case "$1" in -W) exit 1 ;; -L) echo /lib/systemd/system/mosquitto.service ;; esac\n',
    # apt-get also says whether the daemon would have been started, as invoke-rc.d asks.
    "apt-get": RECORD + 'if [ "$1" = install ]; then /usr/sbin/policy-rc.d mosquitto start;'
    ' echo "policy-rc.d says $?" >>"$CALLS"; fi\n',
    "deb-systemd-helper": RECORD,
    # sudo resets the environment, as Debian's does (env_reset).
    "sudo": RECORD + 'exec env -i PATH="$PATH" CALLS="$CALLS" "$@"\n',
    "id": 'echo "${FAKE_UID:-0}"\n',
}


def run(tmp_path: Path, *, uid: int, sudo: bool) -> tuple[subprocess.CompletedProcess[str], str]:
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, body in STUBS.items():
        if name != "sudo" or sudo:
            (stubs / name).write_text("#!/bin/sh\n" + body)
            (stubs / name).chmod(0o755)
    (tmp_path / "sbin").mkdir()
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
            "mosquitto",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": f"{stubs}:/usr/bin:/bin", "CALLS": str(calls), "FAKE_UID": str(uid)},
    )
    if result.stderr.startswith(("unshare:", "mount:")):
        pytest.skip(f"cannot make a mount namespace here: {result.stderr.strip()}")
    assert list((tmp_path / "sbin").iterdir()) == [], "policy-rc.d left behind"
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
