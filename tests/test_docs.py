"""The documentation's TOML is configuration that loads: every driver's ``sample.toml``, and every
``toml`` block of the README, ``docs/`` and each driver's README.

A ``pyproject.toml`` block (a driver's entry points) is not configuration. A block with an
``[agent]`` table is a whole configuration; any other is a fragment, checked
appended to a minimal ``[agent]`` and ``[mqtt]`` (the ones it lacks). A block that cannot load on
its own (it names files a gateway has, or shows a mistake) is marked in the Markdown with an
``<!-- not checked: why -->`` comment on the line before its opening fence.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import load_config
from agent.errors import ConfigError
from agent.registry import driver_names, load_driver

ROOT = Path(__file__).parent.parent
DRIVERS = ROOT / "drivers"
MARKDOWN = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *DRIVERS.glob("*/README.md")])
SAMPLES = sorted(DRIVERS.glob("*/sample.toml"))
_BLOCK = re.compile(r"(?P<before>[^\n]*)\n```toml\n(?P<body>.*?)\n```", re.S)
#: A block of a package's pyproject.toml (a driver's entry points), not a configuration.
_PACKAGING = re.compile(r"^\[(project|build-system|tool)\b", re.M)
#: Files a fragment may name, made in the test's directory so that the checks of paths pass.
ENV = {"MQTT_PASSWORD": "secret"}


def blocks(path: Path) -> list[tuple[int, str]]:
    """The checked ``toml`` blocks of ``path``: (line of the fence, text)."""
    text = path.read_text(encoding="utf-8")
    found = []
    for match in _BLOCK.finditer(text):
        if "not checked:" in match["before"] or _PACKAGING.search(match["body"]):
            continue
        line = text.count("\n", 0, match.start("body"))
        found.append((line, match["body"]))
    return found


def whole(fragment: str, data_dir: Path) -> str:
    """``fragment`` as a configuration: with the ``[agent]`` and ``[mqtt]`` it lacks."""
    head = ""
    if not re.search(r"^\[agent\]", fragment, re.M):
        head += f'[agent]\nid = "docs"\ndata_dir = "{data_dir}"\n\n'
    if not re.search(r"^\[mqtt\]", fragment, re.M):
        head += '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n\n'
    return head + fragment


def loads(tmp_path: Path, text: str) -> str:
    """The problems of ``text`` as a configuration, one per line ('' when it loads)."""
    path = tmp_path / "config.toml"
    path.write_text(whole(text, tmp_path / "data"), encoding="utf-8")
    # a password file the example names beside it holds a password, as it would on site
    for name in re.findall(r'^password_file = "([^"/$]+)"', text, re.M):
        (tmp_path / name).write_text("secret\n", encoding="utf-8")
    try:
        load_config(path, ENV)
    except ConfigError as exc:
        return "\n".join(str(p) for p in exc.problems if not p.warning)
    return ""


def test_every_driver_folder_carries_its_reference_sample_and_cases() -> None:
    folders = {d.parent.name for d in DRIVERS.glob("*/__init__.py")}
    assert folders, "no driver folders found"
    for folder in folders:
        assert (DRIVERS / folder / "README.md").is_file(), f"drivers/{folder} has no README.md"
        assert (DRIVERS / folder / "sample.toml").is_file(), f"drivers/{folder} has no sample"
        cases = [c for c in (DRIVERS / folder / "cases").glob("*") if c.is_dir()]
        assert cases, f"drivers/{folder} has no golden cases (cases/NAME/config.toml)"


def test_every_registered_driver_has_a_folder_with_a_readme() -> None:
    for name in driver_names():
        module = load_driver(name).__module__
        if module.startswith("drivers."):
            assert (DRIVERS / module.split(".")[1] / "README.md").is_file(), name


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.parent.name)
def test_each_sample_passes_check(tmp_path: Path, sample: Path) -> None:
    assert loads(tmp_path, sample.read_text(encoding="utf-8")) == ""


CASES = [(path, line, body) for path in MARKDOWN for line, body in blocks(path)]


def test_the_docs_hold_toml_to_check() -> None:
    assert len(CASES) >= 10


@pytest.mark.parametrize(
    ("path", "line", "body"),
    CASES,
    ids=[f"{p.relative_to(ROOT)}:{line}" for p, line, _ in CASES],
)
def test_each_toml_block_of_the_docs_loads(
    tmp_path: Path, path: Path, line: int, body: str
) -> None:
    assert loads(tmp_path, body) == "", f"{path.relative_to(ROOT)}:{line}"
