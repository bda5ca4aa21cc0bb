"""What MQTT itself accepts in the strings the agent sends: topics, client id, user name and
password.

Checked when the configuration is loaded, so that a string the broker would call malformed (or
the client could not even encode) is a line of ``edge-agent check`` naming the key, not a CONNECT
retried forever or a ``struct.error`` at start. Each function gives the messages for one value;
none of them echoes the value, so they serve for secrets too.
"""

from __future__ import annotations

from ..api.keys import lone_surrogate

#: Every MQTT string (topic, client id, user name) and the password carry a 16-bit length.
MAX_MQTT_BYTES = 65535
#: ``agent.id`` names the gateway in every topic and on every dashboard: a name, not a text.
MAX_AGENT_ID = 128
#: MQTT 3.1.1 obliges a broker to take 23 bytes only (most take far more); no real client id
#: or user name needs more than this.
MAX_CLIENT_ID = 256
MAX_USERNAME = 256
#: The longest topic the agent uses below ``{topic_prefix}/{agent.id}/``.
LONGEST_SUBTOPIC = "cmd/reply"


def text_problems(value: str, used_as: str) -> list[str]:
    """Why ``value`` cannot be an MQTT string ``used_as`` (e.g. "the client id"): not UTF-8,
    or a character MQTT says it SHOULD NOT hold (brokers refuse some)."""
    where = lone_surrogate(value)
    if where is not None:
        return [
            f"is not valid UTF-8: character {where + 1} is an undecodable byte (from an "
            f"environment variable?), which MQTT cannot carry in {used_as}; write it in UTF-8"
        ]
    for index, char in enumerate(value):
        if what := _refused(char):
            return [
                f"holds {what} (character {index + 1}), which MQTT brokers refuse in "
                f"{used_as}: remove it"
            ]
    return []


def length_problem(value: str, max_chars: int, why: str) -> str | None:
    """A message when ``value`` is longer than ``max_chars`` characters (or, whatever that
    limit, than the 65,535 bytes of UTF-8 MQTT can carry)."""
    if len(value) > max_chars:
        return f"is {len(value)} characters long: at most {max_chars} ({why})"
    size = utf8_size(value)
    if size > MAX_MQTT_BYTES:
        return f"is {size} bytes of UTF-8: MQTT carries at most {MAX_MQTT_BYTES}"
    return None


def password_problems(value: str) -> list[str]:
    """A password is bytes to MQTT: any character goes, but it must encode, and fit 64 KiB."""
    if lone_surrogate(value) is not None:
        return [
            "is not valid UTF-8: it holds an undecodable byte (from an environment variable?); "
            "write it in UTF-8 (not shown: it is a secret)"
        ]
    size = utf8_size(value)
    if size > MAX_MQTT_BYTES:
        return [f"is {size} bytes of UTF-8: MQTT carries at most {MAX_MQTT_BYTES}"]
    return []


def longest_topic_problem(prefix: str, agent_id: str) -> str | None:
    """A message when ``{prefix}/{agent_id}/cmd/reply`` does not fit an MQTT string."""
    size = utf8_size(f"{prefix}/{agent_id}/{LONGEST_SUBTOPIC}")
    if size <= MAX_MQTT_BYTES:
        return None
    return (
        f"makes the topic {{topic_prefix}}/{{agent.id}}/{LONGEST_SUBTOPIC} {size} bytes long: "
        f"MQTT carries at most {MAX_MQTT_BYTES}; shorten topic_prefix"
    )


def utf8_size(value: str) -> int:
    """Bytes of ``value`` in UTF-8, lone surrogates counted as the 3 bytes they would take."""
    return len(value.encode("utf-8", "surrogatepass"))


def _refused(char: str) -> str | None:
    """What ``char`` is when MQTT says a string SHOULD NOT hold it (and Mosquitto refuses it
    as malformed): NUL, a control character, or a Unicode non-character."""
    code = ord(char)
    if code == 0:
        return "a NUL"
    if code <= 0x1F or 0x7F <= code <= 0x9F:
        return f"the control character U+{code:04X}"
    if 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE:
        return f"the Unicode non-character U+{code:04X}"
    return None
