"""Why a serial port cannot be opened, found the way pyserial opens one, and the line a
technician reads about it."""

from __future__ import annotations

import errno
import fcntl
import os

# errno values of a failed open(), as a technician would put them.
_GONE = frozenset({errno.ENOENT, errno.ENODEV, errno.ENXIO})


_DENIED = frozenset({errno.EACCES, errno.EPERM})


_BUSY = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY})


def serial_port_problem(path: str) -> tuple[int | None, str]:
    """Why ``path`` cannot be opened as a serial port of our own: (errno, reason), or (None, "").

    Found by trying what pyserial does (open, then an exclusive lock): pymodbus logs the reason a
    port did not open but does not return it.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        return exc.errno, exc.strerror or str(exc)
    try:
        if not os.isatty(fd):
            return None, "it is not a serial port"
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when closed
    except OSError as exc:
        return exc.errno, exc.strerror or str(exc)
    finally:
        os.close(fd)
    return None, ""


def port_problem_message(bus: str, path: str, code: int | None, reason: str) -> str:
    """One line for a technician: what is wrong with the serial port and what to do."""
    if code in _GONE:
        return f"bus {bus}: {path} is gone (adapter unplugged?); retrying"
    if code in _DENIED:
        return (
            f"bus {bus}: no permission to open {path}: add the agent's user to the dialout "
            "group; retrying"
        )
    if code in _BUSY:
        return (
            f"bus {bus}: {path} is busy: another program (another edge-agent?) has it open; "
            "retrying"
        )
    return f"bus {bus}: cannot open {path}: {reason or 'pymodbus did not say why'}; retrying"
