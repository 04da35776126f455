# Local stand-in for postgres:15, from Debian bookworm's PostgreSQL 15: for machines that cannot pull from a
# registry. Honours what compose uses of the official image: POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, the data
# directory /var/lib/postgresql/data (a volume), pg_isready, port 5432 and a fast shutdown on stop.
ARG BASE_IMAGE=mona-local/debian:bookworm
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="mona-local/postgres" \
      org.opencontainers.image.description="PostgreSQL 15 from Debian bookworm packages (postgres:15 stand-in)"

ENV LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive
# uid/gid 999 as in the official image (a data volume can move between the two); the package reuses the user.
# No default cluster: the entrypoint makes one in $PGDATA on first start.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 postgres \
    && useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql --shell /bin/bash postgres \
    && mkdir -p /etc/postgresql-common/createcluster.d \
    && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/no-main.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /run/postgresql \
    && chmod 0700 /var/lib/postgresql/data

ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
VOLUME /var/lib/postgresql/data
USER 999:999
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
