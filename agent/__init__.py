"""edge-agent core, laid out as the data flows: drivers (``drivers/``, through ``agent.api``)
→ ``agent.poll`` → ``agent.store`` → ``agent.uplink`` → the broker; commands come back through
``agent.uplink.commands`` to a driver's ``write``. ``agent.config`` reads the TOML file,
``agent.service`` runs it all under systemd, ``agent.cli`` is the technician's command line.
"""

__version__ = "0.3.0"
