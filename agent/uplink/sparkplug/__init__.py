"""Eclipse Sparkplug B 3.0, the SCADA world's MQTT: the payload codec (``codec``) first."""
