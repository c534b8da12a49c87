# Minimal image of the manager; the supervisor executable and multi-stage build arrive with the
# Kubernetes backend.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md LICENSE alembic.ini ./
COPY oscar_manager ./oscar_manager
COPY migrations ./migrations
RUN pip install --no-cache-dir . && useradd --uid 10001 --create-home oscar
USER 10001
ENV OSCAR_HOST=0.0.0.0 OSCAR_DATA_DIR=/home/oscar/data
EXPOSE 8080
CMD ["oscar-manager", "serve"]
