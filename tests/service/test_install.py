"""scripts/install.sh into a temporary root (--root DIR): the files, their owners and modes, the
unit enabled and verified against what was installed, a second run, --uninstall and --purge.

The installer builds a real virtual environment and pip-installs this clone into it, from a copy,
with the test's own Python (--python): about 5 s with pip's cache. Nothing of the running system
changes: the user goes into DIR/etc/passwd (useradd --prefix) and systemctl works on DIR."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
INSTALL = ROOT / "scripts" / "install.sh"
UNIT = "edge-agent.service"
#: A generous bound: a cold pip cache downloads the dependencies.
INSTALL_TIMEOUT = 300

pytestmark = [
    pytest.mark.skipif(
        hasattr(os, "geteuid") and os.geteuid() != 0,
        reason="the installer runs as root (useradd, chown); CI does",
    ),
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("systemctl", "useradd", "systemd-analyze")),
        reason="needs systemd's systemctl and systemd-analyze and shadow's useradd (Debian)",
    ),
]


def make_root(root: Path, *, gpio: bool) -> Path:
    """The least a target system holds for useradd: root, dialout and (Raspberry Pi OS) gpio."""
    etc = root / "etc"
    etc.mkdir(parents=True)
    groups = ["root:x:0:", "dialout:x:20:", *(["gpio:x:997:"] if gpio else [])]
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("".join(f"{g}\n" for g in groups))
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("".join(f"{g.split(':')[0]}:*::\n" for g in groups))
    return root


def install(root: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(INSTALL), "--root", str(root), "--python", sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        check=False,
        env={**os.environ, "PATH": path or os.environ["PATH"]},
    )


def path_without(tmp_path: Path, *missing: str) -> str:
    """A PATH of the system's commands, less ``missing``: a machine without them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in ("/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        for command in Path(directory).iterdir() if Path(directory).is_dir() else ():
            link = bin_dir / command.name
            if command.name not in missing and not link.exists():
                link.symlink_to(command)
    return str(bin_dir)


def entry(root: Path, table: str, name: str) -> list[str] | None:
    for line in (root / "etc" / table).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    return None


def host_accounts() -> str:
    return "".join(
        hashlib.sha256(Path(f"/etc/{table}").read_bytes()).hexdigest()
        for table in ("passwd", "group")
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """One installation, Raspberry Pi OS-like (a gpio group), for the tests that only look."""
    root = make_root(tmp_path_factory.mktemp("pi-root"), gpio=True)
    host = host_accounts()
    started = time.monotonic()
    result = install(root)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert host_accounts() == host, "the installer changed the host's /etc/passwd or /etc/group"
    return root, took


def test_installs_in_reasonable_time(installed: tuple[Path, float]) -> None:
    _, took = installed
    assert took < INSTALL_TIMEOUT / 2, f"install took {took:.0f}s"


def test_files_land_where_the_unit_expects_them(installed: tuple[Path, float]) -> None:
    root, _ = installed
    user = entry(root, "passwd", "edge-agent")
    assert user is not None
    uid, gid = int(user[2]), int(user[3])
    assert user[5:] == ["/var/lib/edge-agent", "/usr/sbin/nologin"]
    assert entry(root, "group", "edge-agent") is not None
    for group in ("dialout", "gpio"):
        members = entry(root, "group", group)
        assert members is not None
        assert "edge-agent" in members[3].split(","), group

    def owner_mode(path: Path) -> tuple[int, int, int]:
        st = path.lstat()
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)

    etc = root / "etc" / "edge-agent"
    assert owner_mode(etc) == (0, gid, 0o750)
    assert owner_mode(etc / "config.toml") == (0, gid, 0o640)
    example = (ROOT / "systemd" / "config.example.toml").read_text()
    assert (etc / "config.toml").read_text() == example
    assert owner_mode(etc / "mqtt-password") == (0, 0, 0o600)
    assert (etc / "mqtt-password").read_text() == ""
    assert owner_mode(root / "var" / "lib" / "edge-agent") == (uid, gid, 0o700)

    unit = root / "etc" / "systemd" / "system" / UNIT
    assert unit.read_text() == (ROOT / "systemd" / UNIT).read_text()
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants" / UNIT
    assert wants.is_symlink()
    assert os.readlink(wants) == f"/etc/systemd/system/{UNIT}"
    assert os.access(root / "opt" / "edge-agent" / "bin" / "edge-agent", os.X_OK)
    assert (root / "opt" / "edge-agent" / "README.md").is_file()  # the unit's Documentation=


#: Prints a line starting with this when the mount namespace is made, before the command runs.
NAMESPACE_READY = "in-target: ready"


def in_target(root: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """``command`` in a mount namespace of its own where DIR/opt is /opt: the installed files where
    the unit and the command expect them, and the host's /opt untouched. A host's own
    /etc/edge-agent (an agent installed on this machine) is hidden behind an empty directory, so
    that what the command finds there is the test's doing. Where no namespace can be made (a
    chroot, a container without the right), the test is skipped."""
    empty = root / "empty"
    empty.mkdir(exist_ok=True)
    script = (
        'mount --bind "$0/opt" /opt'
        ' && { [ ! -d /etc/edge-agent ] || mount --bind "$0/empty" /etc/edge-agent; }'
        f' && echo "{NAMESPACE_READY}" >&2 && exec "$@"'
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(root), *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    before, ready, after = result.stderr.partition(NAMESPACE_READY + "\n")
    if not ready:
        pytest.skip(f"cannot make a mount namespace here: {before.strip()}")
    result.stderr = after
    return result


def test_installed_unit_verifies_against_the_installed_files(
    installed: tuple[Path, float],
) -> None:
    """systemd-analyze verify checks that ExecStart exists: the installed unit is verified as it
    is, against what the installer put in /opt."""
    root, _ = installed
    result = in_target(root, "systemd-analyze", "verify", str(root / "etc/systemd/system" / UNIT))
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).strip() == ""


def test_command_on_path_reads_the_password_where_systemd_does(
    installed: tuple[Path, float],
) -> None:
    """/usr/local/bin/edge-agent is the venv's agent, and the example config's password_file
    falls back to /etc/edge-agent outside the service, so `sudo edge-agent check` works."""
    root, _ = installed
    command = root / "usr" / "local" / "bin" / "edge-agent"
    assert os.readlink(command) == "/opt/edge-agent/bin/edge-agent"
    config = str(root / "etc" / "edge-agent" / "config.toml")
    given = f"CREDENTIALS_DIRECTORY={root}/etc/edge-agent"
    ok = in_target(root, "env", given, str(command), "check", "-c", config)
    assert ok.returncode == 0, ok.stderr
    assert f"{config}: ok" in ok.stdout
    default = in_target(
        root, "env", "-u", "CREDENTIALS_DIRECTORY", str(command), "check", "-c", config
    )
    assert default.returncode == 2
    # The host has no /etc/edge-agent: the message proves the default the config applied.
    assert "mqtt.password_file: cannot read /etc/edge-agent/mqtt-password" in default.stderr


def test_installed_agent_accepts_the_example_config(installed: tuple[Path, float]) -> None:
    root, _ = installed
    etc = root / "etc" / "edge-agent"
    agent = root / "opt" / "edge-agent" / "bin" / "edge-agent"
    result = subprocess.run(
        [str(agent), "check", "-c", str(etc / "config.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "CREDENTIALS_DIRECTORY": str(etc)},
    )
    assert result.returncode == 0, result.stderr
    assert "ok (1 bus(es), 2 device(s), 14 point(s), 1 warning(s))" in result.stdout
    # the installer's empty password file, until the technician fills it in
    assert "mqtt-password is empty: connecting without a password" in result.stderr


def test_second_run_upgrades_then_uninstall_keeps_the_buffer(tmp_path: Path) -> None:
    """Debian-like (no gpio group): install, edit, install again, --uninstall, --purge."""
    root = make_root(tmp_path, gpio=False)
    assert install(root).returncode == 0
    assert entry(root, "group", "gpio") is None  # not made up where the OS has none
    dialout = entry(root, "group", "dialout")
    assert dialout is not None
    assert dialout[3] == "edge-agent"
    etc = root / "etc" / "edge-agent"
    config = etc / "config.toml"
    config.write_text(config.read_text().replace('id = "gw-site01"', 'id = "pump-7"'))
    (etc / "mqtt-password").write_text("s3cret\n")
    installed_init = next((root / "opt" / "edge-agent").glob("lib/python3*/site-packages/agent"))
    (installed_init / "__init__.py").write_text("raise SystemExit('stale')\n")
    buffer = root / "var" / "lib" / "edge-agent" / "buffer.sqlite"
    buffer.write_bytes(b"samples not sent yet")

    again = install(root)
    assert again.returncode == 0, again.stderr
    assert "kept /etc/edge-agent/config.toml" in again.stderr
    assert 'id = "pump-7"' in config.read_text()
    assert (etc / "mqtt-password").read_text() == "s3cret\n"
    assert (etc / "config.example.toml").read_text() == (
        ROOT / "systemd" / "config.example.toml"
    ).read_text()
    assert "stale" not in (installed_init / "__init__.py").read_text()  # this clone's code again
    assert buffer.read_bytes() == b"samples not sent yet"
    assert len([e for e in (root / "etc" / "passwd").read_text().splitlines() if "edge" in e]) == 1

    units = root / "etc" / "systemd" / "system"
    removed = install(root, "--uninstall")
    assert removed.returncode == 0, removed.stderr
    assert not (units / UNIT).exists()
    assert not (units / "multi-user.target.wants" / UNIT).is_symlink()
    assert not (root / "opt" / "edge-agent").exists()
    assert not (root / "usr" / "local" / "bin" / "edge-agent").exists()
    assert 'id = "pump-7"' in config.read_text()
    assert (etc / "mqtt-password").read_text() == "s3cret\n"
    assert buffer.read_bytes() == b"samples not sent yet"
    assert entry(root, "passwd", "edge-agent") is not None
    assert "--purge" in removed.stderr

    purged = install(root, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not etc.exists()
    assert not buffer.parent.exists()
    assert entry(root, "passwd", "edge-agent") is None
    assert entry(root, "group", "edge-agent") is None


def test_without_systemctl_the_unit_is_enabled_by_its_link(tmp_path: Path) -> None:
    """A container or an image built by hand has no systemctl: the installer still finishes,
    enabling the unit as `systemctl enable` would, and --uninstall removes the link."""
    root = make_root(tmp_path / "root", gpio=False)
    path = path_without(tmp_path, "systemctl")
    result = install(root, path=path)
    assert result.returncode == 0, result.stderr
    assert "no systemctl here: enabled edge-agent.service by its link" in result.stderr
    wants = root / "etc" / "systemd" / "system" / "multi-user.target.wants" / UNIT
    assert os.readlink(wants) == f"/etc/systemd/system/{UNIT}"
    assert os.access(root / "opt" / "edge-agent" / "bin" / "edge-agent", os.X_OK)
    removed = install(root, "--uninstall", path=path)
    assert removed.returncode == 0, removed.stderr
    assert not wants.is_symlink()
    assert not (root / "etc" / "systemd" / "system" / UNIT).exists()


def test_refuses_a_system_where_the_debian_package_is_installed(tmp_path: Path) -> None:
    """The package owns /opt/edge-agent there: neither an install nor --uninstall touches it."""
    root = make_root(tmp_path, gpio=False)
    dpkg = root / "var" / "lib" / "dpkg"
    dpkg.mkdir(parents=True)
    # Installed, held, and removed with its configuration kept (its purge would delete ours).
    states = {
        "install ok installed": "is installed here",
        "hold ok installed": "is installed here",
        "deinstall ok config-files": "is still known here (config-files)",
    }
    for status, said in states.items():
        (dpkg / "status").write_text(
            f"Package: edge-agent\nStatus: {status}\nVersion: 0.2.0-1\nArchitecture: all\n\n"
        )
        before = sorted(str(path) for path in root.rglob("*"))
        for args in ([], ["--uninstall"]):
            result = install(root, *args)
            assert result.returncode == 1, result.stderr
            assert result.stderr.startswith(f"install: the Debian package edge-agent {said}")
            assert len(result.stderr.splitlines()) == 1
        assert sorted(str(path) for path in root.rglob("*")) == before


def test_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    """One line each, before touching anything."""
    cases = [
        (["--purge"], "install: --purge goes with --uninstall"),
        (["--root", str(tmp_path / "nope")], f"install: --root {tmp_path}/nope: no such directory"),
        (["--bogus"], "install: unknown argument --bogus"),
    ]
    for args, message in cases:
        result = subprocess.run(
            [str(INSTALL), *args], capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 1, args
        assert result.stderr.startswith(message), result.stderr
        assert len(result.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
