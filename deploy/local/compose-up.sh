#!/usr/bin/env bash
# `make compose-up`: build the app image and start postgres, redis, migrate, api and worker, waiting until healthy.
# The API answers on 127.0.0.1:8000 with MONA_API_KEY (required) from the environment.
#
# Base images: the official ones (python:3.11-slim, postgres:15, redis:7) when they are present or can be pulled;
# otherwise local stand-ins built from Debian packages (deploy/local/base-images.sh) and a wheelhouse for pip
# (deploy/local/wheelhouse.sh). MONA_BASE_IMAGES=official|local forces one way (default: auto).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${MONA_API_KEY:?set MONA_API_KEY to a secret key first (e.g. export MONA_API_KEY=\$(openssl rand -hex 32))}"
export DOCKER_BUILDKIT=0 COMPOSE_BAKE=false

official=(python:3.11-slim postgres:15 redis:7)
have_official() {
  for image in "${official[@]}"; do
    docker image inspect "$image" >/dev/null 2>&1 || timeout 120 docker pull --quiet "$image" >/dev/null 2>&1 || return 1
  done
}

mode=${MONA_BASE_IMAGES:-auto}
if [ "$mode" = auto ]; then
  if have_official; then mode=official; else mode=local; fi
  echo "compose-up: base images: $mode"
fi
case "$mode" in
  official) rm -f deploy/local/images.env ;;
  local)
    bash deploy/local/base-images.sh
    bash deploy/local/wheelhouse.sh "${PYTHON:-.venv/bin/python}"
    cat > deploy/local/images.env <<'ENV'
# Written by deploy/local/compose-up.sh: the local stand-ins for the official base images (see deploy/README.md).
MONA_PYTHON_IMAGE=mona-local/python:3.11-slim
MONA_POSTGRES_IMAGE=mona-local/postgres:15
MONA_REDIS_IMAGE=mona-local/redis:7
MONA_PIP_INDEX_ARGS=--no-index
ENV
    ;;
  *) echo "compose-up: expected MONA_BASE_IMAGES=auto|official|local, got $mode" >&2; exit 2 ;;
esac

started=$(date +%s)
log=${TMPDIR:-/tmp}/mona-compose-build.log
echo "compose-up: building the app image (log: $log)"
deploy/local/compose build >"$log" 2>&1 || { tail -n 60 "$log" >&2; echo "compose-up: build failed, see $log" >&2; exit 1; }
built=$(date +%s)
deploy/local/compose up -d --wait --wait-timeout "${MONA_COMPOSE_WAIT_S:-300}"
echo "compose-up: built in $((built - started)) s, healthy $(($(date +%s) - built)) s later; API on http://127.0.0.1:${MONA_API_PORT:-8000}"
