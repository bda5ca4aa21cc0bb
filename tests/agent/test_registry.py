"""The registry: built-in drivers found without reading any distribution's metadata, the same
as their entry points; other names through the entry points."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from agent import registry
from agent.errors import UnknownDriverError

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def test_the_built_in_drivers_are_the_ones_pyproject_registers() -> None:
    entry_points = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"]
    assert entry_points[registry.DRIVERS_GROUP] == registry.BUILT_IN_DRIVERS
    assert entry_points[registry.BUS_TYPES_GROUP] == registry.BUILT_IN_BUS_TYPES


def test_a_configuration_of_built_in_drivers_loads_without_the_metadata(tmp_path: Path) -> None:
    """``importlib.metadata`` is never imported by loading one (nor by building its driver)."""
    config = Path(__file__).parents[2] / "config.toml"
    probe = (
        "import sys; from pathlib import Path; from agent.config import load_config; "
        "from agent import registry; "
        f"c, _ = load_config(Path({str(config)!r}), {{}}); "
        "[registry.load_driver(d.driver) for d in c.devices]; "
        "print('importlib.metadata' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.strip() == "False", out.stderr


def test_a_name_not_built_in_is_looked_for_among_the_entry_points() -> None:
    found = registry.Registry()
    with pytest.raises(UnknownDriverError, match="unknown driver 'no-such'; known drivers: dlt645"):
        found.load_driver("no-such")
    with pytest.raises(UnknownDriverError, match="unknown bus type 'can-bus'"):
        found.bus_type("can-bus")
    assert set(registry.BUILT_IN_DRIVERS) <= set(found.driver_names())


@pytest.mark.parametrize(
    ("reference", "error"),
    [
        ("drivers.nowhere:Driver", "cannot be loaded: No module named 'drivers.nowhere'"),
        ("drivers.modbus:Nothing", "cannot be loaded: module 'drivers.modbus' has no attribute"),
        ("not a reference", "cannot be loaded: not a module:attribute reference"),
    ],
)
def test_a_reference_that_cannot_be_loaded_says_so(reference: str, error: str) -> None:
    with pytest.raises(UnknownDriverError, match=error):
        registry._load(reference, "driver 'x'")  # noqa: SLF001 - the loading alone
