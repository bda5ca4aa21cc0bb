"""The way to the broker and back: the MQTT link, telemetry (the buffer's samples out), the
wire encoding, and commands (the way back in)."""
