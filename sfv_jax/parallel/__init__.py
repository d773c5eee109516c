"""Device mesh, logical-axis sharding rules and shardings of the SF-V train state."""
