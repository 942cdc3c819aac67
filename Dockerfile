# syntax=docker/dockerfile:1
# The API and its dashboard in one image: `docker build -t backend .` (or podman).
# Three stages: node builds the dashboard, uv builds a virtualenv from uv.lock, and the
# runtime stage gets only those two results: no compiler, no uv, no npm, a user of its own.
#
# BASE and NODE_BASE are build arguments so that a machine without a registry can build
# from base images it made itself (.ci/container does, with debootstrap). BASE must be a
# Debian-like image with Python 3.11 as python3, venv included.
ARG BASE=python:3.11-slim
ARG NODE_BASE=node:20-slim

FROM ${NODE_BASE} AS dashboard
WORKDIR /src
COPY clients/admin/package.json clients/admin/package-lock.json ./
# The secret `ca`, when given, is a CA bundle for a TLS-intercepting proxy: mounted for
# this command only, it never lands in a layer.
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/ca; fi; \
    npm ci --no-audit --no-fund
COPY clients/admin/ ./
RUN npm run build

FROM ${BASE} AS build
# Pinned: the same uv makes the same environment from the same lock file.
ARG UV_VERSION=0.13.10
ENV UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=python3 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/venv
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install --quiet --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
WORKDIR /src
# The dependencies first, in a layer of their own: a code change does not reinstall them.
COPY pyproject.toml uv.lock ./
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca UV_NATIVE_TLS=1; fi; \
    /opt/uv/bin/uv sync --locked --no-dev --no-editable --no-install-project --no-cache
COPY README.md ./
COPY alembic/ alembic/
COPY backend/ backend/
# --no-editable: the project is installed into the venv as its wheel would be (migrations
# included), so the runtime stage needs nothing from /src.
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export SSL_CERT_FILE=/run/secrets/ca UV_NATIVE_TLS=1; fi; \
    /opt/uv/bin/uv sync --locked --no-dev --no-editable --no-cache

FROM ${BASE}
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home app \
    && mkdir /app && chown app:app /app
COPY --from=build /opt/venv /opt/venv
COPY --from=dashboard /src/dist /opt/admin
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STAGE=production \
    ADMIN_DIR=/opt/admin
WORKDIR /app
USER app
EXPOSE 8000
# Ready means the database answers; no curl in the image.
# HEALTHCHECK_URL: for a command that serves on another port.
ENV HEALTHCHECK_URL=http://127.0.0.1:8000/health/ready
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]
# `backend` is PID 1 (exec form, no shell in between), so SIGTERM reaches it: it stops
# accepting, lets requests finish for SHUTDOWN_GRACE_SECONDS, and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["backend"]
CMD ["serve", "--host", "0.0.0.0"]
