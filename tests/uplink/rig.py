"""A small configuration for driving ``Uplink`` in-process against a real broker."""

from __future__ import annotations

from pathlib import Path

from agent.config import Config, load_config


def config_for(tmp_path: Path, url: str, extra: str = "") -> Config:
    """An agent ``gw-r`` with topic prefix ``r``, ``extra`` lines under ``[mqtt]``, and one
    device on a bus nothing answers (the tests feed the buffer themselves)."""
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[agent]\nid = "gw-r"\ndata_dir = "data"\n[mqtt]\nurl = "{url}"\n'
        f'topic_prefix = "r"\nbatch_interval = "100ms"\n{extra}'
        '[[bus]]\nname = "plc"\ntype = "modbus-tcp"\nhost = "127.0.0.1"\nport = 1\n'
        'timeout = "150ms"\n[[device]]\nname = "m"\nbus = "plc"\ninterval = "1s"\n'
        '  [[device.point]]\n  name = "v"\n  table = "input"\n  address = 0\n  type = "uint16"\n'
    )
    config, _ = load_config(path, {})
    return config
