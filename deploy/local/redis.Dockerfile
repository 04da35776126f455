# Local stand-in for redis:7, from Debian bookworm's Redis 7.0: for machines that cannot pull from a registry.
# Like the official image: listens on every interface of the container (protected mode off), data in /data.
ARG BASE_IMAGE=mona-local/debian:bookworm
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="mona-local/redis" \
      org.opencontainers.image.description="Redis 7.0 from Debian bookworm packages (redis:7 stand-in)"

ENV DEBIAN_FRONTEND=noninteractive
# uid/gid 999 as in the official image; the package reuses the user.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 redis \
    && useradd --system --uid 999 --gid redis --home-dir /var/lib/redis --shell /usr/sbin/nologin redis \
    && apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data \
    && chown redis:redis /data

VOLUME /data
WORKDIR /data
USER 999:999
EXPOSE 6379
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "/data"]
