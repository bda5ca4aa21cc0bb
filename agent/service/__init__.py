"""The agent as a service: the supervisor (app), systemd's protocol, the status socket, logs,
the data dir's lock."""
