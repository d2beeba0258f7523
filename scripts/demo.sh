#!/usr/bin/env bash
# The main command: set up (idempotent), then run the daemon on three local demo cameras with a
# local broker and print the detections arriving from Kafka. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m scripts.demo "$@"
