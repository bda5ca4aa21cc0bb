"""The wheel and the sdist that `python -m build` makes: the version from its one place, what
each holds, and the wheel installed into a fresh venv of every Python from 3.10 to 3.13, where
`edge-agent --version` and `edge-agent check` must work."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from agent import __version__

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib
from tests.packaging.marks import system

ROOT = Path(__file__).parents[2]
#: A cold pip cache downloads the build backend and the dependencies.
PIP_TIMEOUT = 300
PYTHONS = ("3.10", "3.11", "3.12", "3.13")


def test_the_version_is_written_in_one_place() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "agent.__version__"}
    changelog = (ROOT / "CHANGELOG.md").read_text()
    newest = re.search(r"^## (\S+)", changelog, re.MULTILINE)
    assert newest, "CHANGELOG.md has no release heading (## VERSION — DATE)"
    assert newest.group(1) == __version__, "CHANGELOG.md's newest release is not agent.__version__"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        check=True,
        timeout=PIP_TIMEOUT,
    )
    return (
        out / f"edge_agent-{__version__}-py3-none-any.whl",
        out / f"edge_agent-{__version__}.tar.gz",
    )


@system
def test_the_wheel_holds_the_agent_its_drivers_and_their_data(built: tuple[Path, Path]) -> None:
    wheel, _ = built
    info = f"edge_agent-{__version__}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"{info}/METADATA").decode()
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert "agent/cli/main.py" in names
    assert "agent/py.typed" in names
    assert any(n.startswith("drivers/modbus/templates/") and n.endswith(".toml") for n in names)
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    assert f"\nVersion: {__version__}\n" in metadata
    assert "edge-agent = agent.cli.main:main" in entry_points


@system
def test_the_sdist_rebuilds_tests_and_installs(built: tuple[Path, Path]) -> None:
    _, sdist = built
    top = f"edge_agent-{__version__}"
    with tarfile.open(sdist) as archive:
        names = set(archive.getnames())
    wanted = [
        "CHANGELOG.md",
        "config.toml",
        "pyproject.toml",
        "MANIFEST.in",
        "systemd/edge-agent.service",
        "systemd/config.example.toml",
        "scripts/install.sh",
        "tests/conftest.py",
        "tests/service/test_unit.py",
        "agent/cli/main.py",
    ]
    assert [name for name in wanted if f"{top}/{name}" not in names] == []
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)


def python(version: str) -> Path | None:
    """That Python, under pyenv or on PATH."""
    for candidate in sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python")):
        return candidate
    found = subprocess.run(
        ["sh", "-c", f"command -v python{version}"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return Path(found) if found else None


@system
@pytest.mark.parametrize("version", PYTHONS)
def test_the_wheel_runs_on_every_supported_python(
    built: tuple[Path, Path], version: str, tmp_path: Path
) -> None:
    interpreter = python(version)
    if interpreter is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Python {version} not found: CI tests the wheel on every one")
        pytest.skip(f"Python {version} not found")
    wheel, _ = built
    venv = tmp_path / "venv"
    subprocess.run([str(interpreter), "-m", "venv", str(venv)], check=True, timeout=PIP_TIMEOUT)
    subprocess.run(
        [
            str(venv / "bin/python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            str(wheel),
        ],
        capture_output=True,
        check=True,
        timeout=PIP_TIMEOUT,
    )
    command = venv / "bin" / "edge-agent"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def edge_agent(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(command), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
            check=False,
        )

    shown = edge_agent("--version")
    assert (shown.returncode, shown.stdout) == (0, f"edge-agent {__version__}\n")
    checked = edge_agent("check", "-c", str(ROOT / "config.toml"))
    assert checked.returncode == 0, checked.stderr
    assert "config.toml: ok" in checked.stdout
    templates = edge_agent("templates")
    assert templates.returncode == 0, templates.stderr
    assert "eastron-sdm120" in templates.stdout  # package data of drivers.modbus
