"""Polling, the first leg of the data path: the scheduler (one owner task per bus, driving its
driver), report by exception (deadband, heartbeat), and the health payloads."""
