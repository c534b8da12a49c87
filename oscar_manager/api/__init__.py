"""HTTP in: thin routers that parse, call ``operations`` and shape the upstream responses."""
