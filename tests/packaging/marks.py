"""Marks for the packaging tests: what a release ships (the wheel, the sdist, the Debian package).

The slow ones, which build whole environments (a venv per Python, a Debian root), carry the
``system`` mark defined here and run where ``EDGE_AGENT_SYSTEM_TESTS=1``: ``scripts/test.sh``
sets it for one of its Pythons, since one run proves them. As root, like CI, they need no more."""

from __future__ import annotations

import os

import pytest

#: Tests that build whole environments; run once per suite run (see the module docstring).
system = pytest.mark.skipif(
    os.environ.get("EDGE_AGENT_SYSTEM_TESTS") != "1",
    reason="builds whole environments: run with EDGE_AGENT_SYSTEM_TESTS=1 (scripts/test.sh "
    "sets it for one Python)",
)
