#!/usr/bin/env bash
# Create ./.venv if missing and install affinitynet (with the CRF and COCO extras and the test tools)
# through the pinned constraints. Safe to run again: it only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.affinitynet-installed
want=$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  start=$(date +%s)
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
      -c requirements/constraints.txt -e ".[all,test]"
  echo "$want" > "$stamp"
  echo "installed affinitynet and its dependencies in $(( $(date +%s) - start )) s"
fi
