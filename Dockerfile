# CPU image: the API, the migration job and CPU workers.
#   docker build -t ghcr.io/example/mona:0.1.0 .
# The GPU worker image is Dockerfile.gpu (CUDA torch, onnxruntime-gpu instead of onnxruntime).
#
# Build arguments (defaults: the official image and indexes):
#   PYTHON_IMAGE    the Python 3.11 base (`make compose-up` passes mona-local/python:3.11-slim, built from Debian
#                   packages, where python:3.11-slim cannot be pulled: deploy/local/)
#   PIP_INDEX_ARGS  where pip looks besides deploy/wheelhouse/ (`--no-index` once deploy/local/wheelhouse.sh filled it)
ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtual environment in /opt/venv, copied whole into the runtime stage ----
FROM ${PYTHON_IMAGE} AS build
ARG PIP_INDEX_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from the pinned lock, so that a source change does not reinstall them.
# torch comes from the CPU wheel index: PyPI's Linux x86_64 torch wheel pulls ~3 GB of CUDA libraries.
# `torch 2.13.0+cpu` satisfies the `torch==2.13.0` pin (PEP 440 ignores the local label) and pip prefers it.
# deploy/wheelhouse/ holds only a README unless deploy/local/wheelhouse.sh filled it (then PIP_INDEX_ARGS=--no-index).
COPY pyproject.toml constraints.txt README.md ./
COPY deploy/wheelhouse/ /wheelhouse/
# hadolint ignore=SC2086
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -c constraints.txt --find-links /wheelhouse \
        ${PIP_INDEX_ARGS} -r /tmp/requirements.txt

# The project itself (dependencies already satisfied: this only builds mona-service), then a consistency check.
COPY mona_core ./mona_core
COPY mona_client ./mona_client
COPY services ./services
COPY migrations ./migrations
# hadolint ignore=SC2086
RUN pip install --no-cache-dir -c constraints.txt --find-links /wheelhouse ${PIP_INDEX_ARGS} . \
    && pip check

# ---- runtime ----
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="mona" \
      org.opencontainers.image.description="MONA as a service: the API, migrations and CPU workers" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.source="https://github.com/example/mona"

# One non-root user, the same uid/gid in the GPU image: both write the shared artifact volume.
RUN groupadd --system --gid 10001 mona \
    && useradd --system --uid 10001 --gid mona --create-home --home-dir /home/mona --shell /usr/sbin/nologin mona \
    && mkdir -p /data \
    && chown mona:mona /data

COPY --from=build /opt/venv /opt/venv

# `mona db upgrade` uses the installed `migrations` package; alembic.ini + migrations/ here serve the alembic
# command line (`alembic current`, `alembic history`) run from /app.
WORKDIR /app
COPY alembic.ini ./
COPY migrations ./migrations

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg \
    MONA_DATA_DIR=/data

USER 10001:10001
EXPOSE 8000
CMD ["mona", "api", "--host", "0.0.0.0", "--port", "8000"]
