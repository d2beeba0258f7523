#!/usr/bin/env bash
# The environment the CPU benchmark's peers run in (scripts/bench/bench_peers.py): ultralytics with CPU
# torch (as for export and training) plus OpenCV, ONNX Runtime and aiokafka, kept apart from the
# product's own environment so the product's dependencies stay as they are.
set -euo pipefail
venv=${1:-.venv-peers}
here=$(cd "$(dirname "$0")" && pwd)
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import importlib.util as u, cv2, onnxruntime; from aiokafka.codec import has_zstd; assert u.find_spec('ultralytics') and has_zstd()" 2>/dev/null; then
    bash "$here/../../model/make_export_env.sh" "$venv"
    "$venv/bin/pip" install -q aiokafka cramjam  # the product's Kafka client and codecs
fi
echo "peer env ready: $venv"
