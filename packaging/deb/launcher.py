#!/usr/bin/python3 -I
"""``/opt/edge-agent/bin/edge-agent`` of the Debian package (scripts/build-deb.sh installs this
file there): the agent and the libraries it was built with, in /opt/edge-agent/lib, run by
Debian's own Python. See README.md, "The Debian package"."""

import sys

# -I keeps PYTHONPATH, the user's site-packages and the current directory out. The package's lib
# goes first, so that Debian's older python3-paho-mqtt or python3-pymodbus, if installed, or
# anything pip put in /usr/local, never shadows the versions the agent was tested with.
sys.path.insert(0, "/opt/edge-agent/lib")
# -I also ignores the unit's PYTHONDONTWRITEBYTECODE. The package's postinst compiles the
# bytecode for the system's python3; nothing else (not even root's `edge-agent check`) may write
# into /opt behind dpkg's back, or prerm would leave files behind.
sys.dont_write_bytecode = True

from agent.cli.main import main  # noqa: E402  (the path above comes first)

sys.exit(main())
