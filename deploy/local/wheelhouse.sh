#!/usr/bin/env bash
# Fill deploy/wheelhouse/ with a wheel of every dependency of the app image (Linux x86_64, CPython 3.11), built by
# this machine's pip from its own indexes (the CPU torch wheel included), so that the image installs with
# `pip install --no-index --find-links /wheelhouse` where neither PyPI's torch (CUDA, GBs) nor the PyTorch index
# is wanted or reachable. Redone only when pyproject.toml, constraints.txt or this script change. Usage: wheelhouse.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${1:-${PYTHON:-python3}}
out=deploy/wheelhouse
stamp="$out/.built-$(cat pyproject.toml constraints.txt "$0" | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  echo "wheelhouse: up to date ($(ls "$out"/*.whl | wc -l) wheels)"
  exit 0
fi
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"expected Python 3.11, got {sys.version}"'
requirements=$(mktemp)
trap 'rm -f "$requirements"' EXIT
"$python" -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
  > "$requirements"
# Besides the dependencies: the build backend (the image builds the project itself offline), and what the local
# image's Python (Debian's 3.11.2) needs beyond a newer 3.11: redis-py wants async-timeout before 3.11.3.
rm -f "$out"/*.whl "$out"/.built-*
"$python" -m pip wheel --quiet --disable-pip-version-check -c constraints.txt -w "$out" -r "$requirements" \
  "setuptools>=68" wheel "async-timeout>=4.0.3"
touch "$stamp"
echo "wheelhouse: $(ls "$out"/*.whl | wc -l) wheels, $(du -sh "$out" | cut -f1)"
