"""``[sparkplug]``: the agent as an Eclipse Sparkplug B 3.0 edge node, instead of the JSON
topics (off by default). ``[mqtt]`` still says how to reach the broker."""

from __future__ import annotations

from ..api import keys as conv
from .sections import Section
from .types import SparkplugSection


def load_sparkplug(s: Section, agent_id: str) -> SparkplugSection:
    """The ``[sparkplug]`` table ``s``, every problem said at its key."""
    enabled = bool(s.take("enabled", conv.boolean, False))
    group = s.take("group_id", conv.name, None)
    node = s.take("edge_node_id", conv.name, agent_id) or agent_id
    host = s.take("primary_host_id", conv.name, None)
    if enabled and group is None and not s.has("group_id"):
        s.problem("group_id", 'is required with [sparkplug] enabled: write e.g. group_id = "farm"')
    s.finish()
    return SparkplugSection(enabled, group or "", node, host)
