# The vod-webhook image: `vod-webhook serve` by default; the same image runs `reconcile`,
# `emulator` and the other commands (pass them as arguments).
#
#   docker build -t vod-webhook:0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#
# Two stages: `build` makes the wheel with a pinned hatchling; `runtime` installs only that
# wheel, with the project's pinned dependencies (constraints.txt), into a slim Python with no
# build tools, sources or tests. Needs BuildKit (Docker 23+ uses it by default) for the bind
# mounts. Pin the base by digest in your registry (python:3.11-slim-bookworm@sha256:...) for
# builds that are repeatable to the byte; the tag keeps Python 3.11 on Debian 12 and takes its
# security fixes.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# pyproject.toml only sets a floor (hatchling>=1.25); the image is built by exactly this one,
# and by the versions of its dependencies that constraints.txt pins (packaging, pathspec, pluggy).
ARG HATCHLING_VERSION=1.33.0
WORKDIR /src
COPY constraints.txt ./
RUN pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
        -c constraints.txt \
        "hatchling==${HATCHLING_VERSION}"
COPY pyproject.toml README.md ./
COPY webhook ./webhook
RUN pip wheel --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation \
        --wheel-dir /dist .

FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="vod-webhook" \
      org.opencontainers.image.description="Receiver for ApsaraVideo VOD dynamic-image callbacks, recorded and fanned out over Redis" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VOD_WEBHOOK_LOG_FORMAT=json
# The wheel and the constraints are mounted for this one step, so neither stays in a layer.
# [server] runs `serve` (and `emulator`, whose packages it includes), [submit] the commands that
# call VOD (`reconcile`, `submit`, `register`). pip compiles the bytecode now, so a read-only
# root filesystem costs nothing at start.
RUN --mount=type=bind,from=build,source=/dist,target=/dist \
    --mount=type=bind,source=constraints.txt,target=/tmp/constraints.txt \
    pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
        -c /tmp/constraints.txt \
        "$(echo /dist/vod_webhook-*.whl)[server,submit]" \
    && groupadd --system --gid 10001 vod \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent vod
# Numeric, so Kubernetes' runAsNonRoot can check it without a runAsUser of its own.
USER 10001:10001
WORKDIR /app

# `serve`'s default port (webhook/cli.py); tests/test_deploy.py keeps CMD, EXPOSE and HEALTHCHECK on it.
EXPOSE 8000
# curl is not in the slim image; Python is. /healthz answers while the process runs (readiness,
# which needs Redis, is /readyz: orchestrators probe that one themselves).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# uvicorn drains in-flight requests on SIGTERM (VOD_WEBHOOK_SHUTDOWN_TIMEOUT_SECONDS).
STOPSIGNAL SIGTERM
ENTRYPOINT ["vod-webhook"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
