"""edge-agent core: configuration, scheduling, buffering, uplink and the command line.

The data flows drivers → ``agent.scheduler`` → ``agent.buffer`` → ``agent.uplink``.
"""

__version__ = "0.2.0"
