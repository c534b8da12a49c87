# The manager's image: `docker build -t oscar-manager:latest .`
#
# builder: the package in a virtualenv, and the self-contained supervisor executable built by
#          scripts/build-supervisor (the same script the tests build and run it with).
# runtime: that virtualenv and that executable on a slim Python, as a non-root numeric user. Kubernetes
#          jobs take the supervisor from this image: their init container copies it from
#          /opt/oscar-manager/bin/supervisor (manifests.IMAGE_SUPERVISOR) into the job's pod.
# tests/unit/test_dockerfile.py checks what would break here without a Docker engine to build it.

FROM python:3.11-slim-bookworm AS builder
# binutils: objdump and objcopy, which PyInstaller and staticx run.
RUN apt-get update \
 && apt-get install -y --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 UV_NO_CACHE=1 UV_PYTHON_DOWNLOADS=never
RUN pip install uv==0.13.9
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY migrations ./migrations
COPY oscar_manager ./oscar_manager
# Not editable: the virtualenv is all the runtime stage takes, without the sources.
RUN uv venv --python /usr/local/bin/python3 /opt/venv \
 && uv pip install --python /opt/venv/bin/python /src
COPY scripts/build-supervisor ./scripts/build-supervisor
RUN scripts/build-supervisor /opt/oscar-manager/bin/supervisor

FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OSCAR_HOST=0.0.0.0 \
    OSCAR_DATA_DIR=/var/lib/oscar-manager
# bubblewrap: the local backend's sandbox, used where the container may create user namespaces (the
# manager probes it at start; without it, jobs fail and /run answers 503 unless OSCAR_ALLOW_UNSANDBOXED=true,
# and OSCAR_REQUIRE_SANDBOX=true refuses to start instead).
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 oscar \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/oscar-manager \
      --shell /usr/sbin/nologin oscar \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/oscar-manager
COPY --from=builder /opt/venv /opt/venv
# Owned by root, mode 0755: readable by whatever user the init container runs as, and not writable by it.
COPY --from=builder /opt/oscar-manager/bin/supervisor /opt/oscar-manager/bin/supervisor
USER 10001:10001
WORKDIR /var/lib/oscar-manager
EXPOSE 8080
# No curl in the slim image: the interpreter asks /health.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('OSCAR_SERVICE_PORT', '8080'), timeout=4)"
ENTRYPOINT ["oscar-manager"]
CMD ["serve"]
