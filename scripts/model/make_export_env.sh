#!/usr/bin/env bash
# Build the dev-only venv that scripts/model/export_yolo_onnx.py and scripts/model/train_detector.py run in
# (torch CPU + ultralytics).
# ultralytics is installed without its dependency on torchvision (no CPU build matches the local
# torch); the export script stands in for the one torchvision function ultralytics imports.
set -euo pipefail
venv=${1:-.venv-export}
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch==2.13.0  # the CPU build (see DESIGN.md: a local file on our machines)
"$venv/bin/pip" install -q --no-deps ultralytics ultralytics-thop
"$venv/bin/pip" install -q numpy opencv-python-headless pillow pyyaml requests scipy psutil polars matplotlib onnx onnxslim onnxruntime av
echo "export env ready: $venv/bin/python -m scripts.model.export_yolo_onnx --out engines/yolov8n.onnx"
