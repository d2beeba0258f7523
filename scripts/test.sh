#!/usr/bin/env bash
# The test command: set up (idempotent), then run every test. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest --durations=25 "$@"
