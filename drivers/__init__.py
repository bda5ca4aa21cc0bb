"""Built-in drivers, registered through the ``edge_agent.drivers`` entry-point group."""
