.PHONY: run test openapi check

# Run the manager on the embedded default: no database server, cluster or MinIO needed.
run:
	bash scripts/run

# Everything CI runs: set-up, ruff, mypy --strict, import contracts, pytest (SQLite and PostgreSQL).
test:
	bash scripts/test

# Regenerate openapi/openapi.json after an API change.
openapi:
	.venv/bin/oscar-manager openapi
