"""edge-agent's ``textfile`` driver: see ``edge_agent_textfile.driver``."""
