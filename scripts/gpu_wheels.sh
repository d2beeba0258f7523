#!/usr/bin/env bash
# Where pip can reach the package registry: fetch what the GPU checks need on a GPU machine with
# no internet (Python 3.12, x86-64, with PyTorch's stack, onnxruntime, pytest, pyyaml and
# prometheus-client already there) into .whl/, to be carried to it and used by scripts/gpu_check.sh.
# PyNvVideoCodec's wheel is slimmed (FFmpeg source, samples and duplicate library names removed:
# not needed to run). Two folders, .whl/av (PyAV, 35 MB) and .whl/gpu (the rest), so that each
# fits one carry to the device machine beside the working tree (64 MiB a call).
# TensorRT is not fetched: its builder is not on the public registry (install it from NVIDIA).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PY=${PY:-python3}
mkdir -p "$DEST/av" "$DEST/gpu"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)
fetch() {
  local into=$1; shift
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$into" "$@"
}
fetch "$DEST/av" "av>=14,<20"
fetch "$DEST/gpu" "pynvvideocodec==2.2.4" "pydantic>=2.6,<3" pydantic-core annotated-types typing-inspection \
  pytools platformdirs siphash24 mako "typing-extensions>=4.12"
# pycuda only as an sdist for Linux: it is built on the GPU machine (needs the CUDA driver there)
"$PY" - "$DEST" <<'PYEOF'
import json, sys, urllib.request
from pathlib import Path
release = json.load(urllib.request.urlopen("https://pypi.org/pypi/pycuda/json", timeout=60))
sdist = next(u for u in release["urls"] if u["packagetype"] == "sdist")
target = Path(sys.argv[1]) / "gpu" / sdist["filename"]
if not target.exists():
    target.write_bytes(urllib.request.urlopen(sdist["url"], timeout=120).read())
print(f"pycuda sdist: {target.name}")
PYEOF
# slim PyNvVideoCodec (the library loads libavformat.so.63 and libavutil.so.61 by soname)
for wheel in "$DEST"/gpu/pynvvideocodec-*.whl; do
  zip -q -d "$wheel" "*/external/ffmpeg/src/*" "samples/*" "benchmarks/*" "PyNvVideoCodec/libavformat.so" \
    "PyNvVideoCodec/libavformat.so.63.1.101" "PyNvVideoCodec/libavutil.so" "PyNvVideoCodec/libavutil.so.61.1.101" \
    >/dev/null 2>&1 || true
done
du -sh "$DEST"/*; ls -1 "$DEST"/*
