"""``${ENV}`` substitution in the TOML file's strings."""

from __future__ import annotations

import re
from collections.abc import Mapping

#: ``$${`` first: it is the escape that writes a literal ``${`` (a password may hold one).
_ENV = re.compile(r"\$\$\{|\$\{([^}]*)\}")
ESCAPED_BRACE = "$${"


class UnsetVariableError(ValueError):
    """``${NAME}`` names a variable that is not set; ``name`` is what stood between the braces."""

    def __init__(self, name: str) -> None:
        super().__init__(f"environment variable {name} is not set (used as ${{{name}}})")
        self.name = name


def environment_names(text: str) -> list[str]:
    """The environment variables ``text`` names as ``${NAME}`` or ``${NAME:-default}``."""
    names = []
    for match in _ENV.finditer(text):
        if match[0] != ESCAPED_BRACE:
            names.append(match[1].partition(":-")[0])
    return names


def substitute_env(text: str, environ: Mapping[str, str]) -> str:
    """Replace every ``${NAME}`` with the environment variable (an unset one is an error), and
    ``${NAME:-default}`` with it or, when it is unset or empty, with ``default`` (as a shell does:
    ``"${CREDENTIALS_DIRECTORY:-/etc/edge-agent}/mqtt-password"`` works under systemd and
    beside it). ``$${`` is a literal ``${``, for the text (a password) that holds one."""

    def replace(match: re.Match[str]) -> str:
        if match[0] == ESCAPED_BRACE:
            return "${"
        name, has_default, default = match[1].partition(":-")
        if has_default:
            return environ.get(name) or default
        if name not in environ:
            raise UnsetVariableError(name)
        return environ[name]

    return _ENV.sub(replace, text)
