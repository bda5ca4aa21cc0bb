"""The technician's commands: ``edge-agent`` itself (main), ``check --plan``, ``read``,
``templates`` and ``buffer`` (tools), ``scan`` and ``simulate``."""
