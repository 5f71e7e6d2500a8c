#!/usr/bin/env bash
# Set everything up (first time only) and run the built-in demo end to end on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/affinitynet demo "$@"
