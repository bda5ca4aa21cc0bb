"""examples/site-test as a user runs it: edge-agent installed (not editable) in a fresh virtual
environment, the example copied beside nothing of ours (no conftest, no ini, no ``tests``
package), the test kit found through its pytest11 entry point. Proves in CI that the package ships
the kit and the templates, and that the example works outside this repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "site-test"


def fresh_venv(tmp_path: Path) -> Path:
    """A virtual environment with edge-agent installed from a copy of this tree, built as a wheel
    would be; its dependencies (and pytest) are borrowed from ours, so that nothing is downloaded.
    """
    source = tmp_path / "source"  # a copy: building in the tree would leave build/ behind
    for name in ("agent", "drivers"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    home = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(home)
    python = home / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    # Ours after its own: a .pth file's paths come after the site dir, and the .pth files in
    # them (our editable install of edge-agent) are not run.
    Path(site, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "--no-deps", "--no-build-isolation", "--no-index", "--target", site, str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    return python


def test_the_site_example_passes_in_a_fresh_venv_from_an_unrelated_directory(
    tmp_path: Path,
) -> None:
    python = fresh_venv(tmp_path)
    work = tmp_path / "elsewhere"
    shutil.copytree(EXAMPLE, work / "site-test", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}

    where = subprocess.run(
        [python, "-c", "import agent.testkit.plugin as p; print(p.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(tmp_path / "venv"), where.stdout

    done = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", "site-test"],
        cwd=work, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout, done.stdout
