#!/usr/bin/env bash
# Local stand-ins for the official base images, built from Debian bookworm's packages, for machines that cannot
# pull from an image registry:
#   mona-local/debian:bookworm     debootstrap --variant=minbase (apt's own mirror), imported with `docker import`
#   mona-local/python:3.11-slim    python:3.11-slim stand-in  (python.Dockerfile)
#   mona-local/postgres:15         postgres:15 stand-in       (postgres.Dockerfile + postgres-entrypoint.sh)
#   mona-local/redis:7             redis:7 stand-in           (redis.Dockerfile)
# Cached: the Debian base is made once per Docker engine; the others are plain builds (layer cache). Needs root.
set -euo pipefail
cd "$(dirname "$0")"
export DOCKER_BUILDKIT=0

BASE=mona-local/debian:bookworm
mirror=${DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
mirror=${mirror:-http://deb.debian.org/debian}

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null 2>&1 || { echo "base-images: expected debootstrap (make docker-host)" >&2; exit 1; }
  root=$(mktemp -d /var/tmp/mona-rootfs.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  echo "base-images: debootstrap bookworm from $mirror (a few minutes, once)"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -n 20 "$root.log" >&2; exit 1; }
  rm -f "$root.log"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import --change 'CMD ["bash"]' - "$BASE" >/dev/null
fi

for image in python:3.11-slim postgres:15 redis:7; do
  name=${image%%:*}
  docker build --quiet --build-arg "BASE_IMAGE=$BASE" -t "mona-local/$image" -f "$name.Dockerfile" . >/dev/null
  echo "base-images: mona-local/$image ($(docker image inspect --format '{{.Size}}' "mona-local/$image" | awk '{printf "%.0f MB", $1/1e6}'))"
done
