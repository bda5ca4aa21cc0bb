"""The secrets a configuration holds, so that no message sent over MQTT carries one.

A reply goes through ``scrubbed``: every known secret (the MQTT password, the page's password,
the values of the environment variables the configuration's files name, the password values
written in a pushed text) is replaced wherever it appears, whatever put it there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from .push import secret_values
from .types import Config
from .units import environment_names

#: Shorter values are not replaced everywhere: "1" would blank every digit of a status.
SHORTEST = 4
REDACTED = "<redacted>"


def known_secrets(
    config: Config, texts: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> frozenset[str]:
    """The secrets of ``config``, and those written in ``texts`` (a pushed configuration)."""
    env = os.environ if environ is None else environ
    found = {config.mqtt.password or "", config.web.password or ""}
    every_text = [*(text for _, text in config.files), *texts]
    for text in every_text:
        found.update(env.get(name, "") for name in environment_names(text))
        found.update(secret_values(text))
    return frozenset(s for s in found if len(s) >= SHORTEST)


def scrubbed(message: dict[str, Any], secrets: frozenset[str]) -> dict[str, Any]:
    """``message`` with every secret replaced, in any of its strings, however nested."""
    if not secrets:
        return message
    text = json.dumps(message)
    for secret in sorted(secrets, key=len, reverse=True):  # a longer one may hold a shorter
        text = text.replace(json.dumps(secret)[1:-1], REDACTED)
    result: dict[str, Any] = json.loads(text)
    return result
