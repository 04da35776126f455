# Local stand-in for python:3.11-slim, from Debian bookworm's packages (Python 3.11.2): for machines that cannot
# pull from a registry. Built by deploy/local/base-images.sh on a base image made with debootstrap.
ARG BASE_IMAGE=mona-local/debian:bookworm
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="mona-local/python" \
      org.opencontainers.image.description="Python 3.11 from Debian bookworm packages (python:3.11-slim stand-in)"

ENV LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python-is-python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

CMD ["python3"]
