#!/usr/bin/env bash
# The GPU path's checks, on a machine with an NVIDIA GPU (issue 4's verification list):
#   tests/gpu (NVDEC decode, kernel vs CPU reference, zero-copy counts, resolution change,
#   decoder recovery, TensorRT vs ONNX Runtime where TensorRT is installed), the CPU-side GPU tests,
#   and scripts/bench_gpu.py (decode fps vs bare PyNvVideoCodec, stub-engine ceiling on N streams).
#
#   bash scripts/gpu_check.sh install .whl/av     # stage packages (wheels/sdists from gpu_wheels.sh)
#   bash scripts/gpu_check.sh install .whl/gpu    # pycuda is built here from its sdist
#   bash scripts/gpu_check.sh run                 # tests + benchmark; results in $OUT
#   bash scripts/gpu_check.sh                     # both folders, then run
# Packages go to $SITE (default /tmp/gpu-site) so nothing of the machine's Python is changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
SITE=${SITE:-/tmp/gpu-site}
OUT=${OUT:-.cache/gpu-check}
STREAMS=${STREAMS:-8}
SECONDS_EACH=${SECONDS_EACH:-20}
mkdir -p "$SITE" "$OUT"
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1

install() {
  local dir=$1
  shopt -s nullglob
  local wheels=("$dir"/*.whl)
  if ((${#wheels[@]})); then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}"
  fi
  for sdist in "$dir"/pycuda-*.tar.gz; do  # needs nvcc and the CUDA driver: built here, once
    "$PY" -m pip wheel -q --no-index --no-deps --no-build-isolation -w "$OUT" "$sdist"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$OUT"/pycuda-*.whl
  done
}

run() {
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    "$PY" -c "import sys, av, PyNvVideoCodec as nvc, pycuda; print('python', sys.version.split()[0], '| PyAV', av.__version__, '| PyNvVideoCodec', nvc.__version__, '| pycuda', pycuda.VERSION_TEXT)"
    "$PY" -c "import tensorrt as trt; print('TensorRT', trt.__version__)" 2>/dev/null || echo "TensorRT: not installed"
  } | tee "$OUT/versions.txt"
  set +e
  "$PY" -m pytest -q -p no:cacheprovider -rs tests/gpu tests/unit/test_gpu_path_on_cpu.py 2>&1 | tee "$OUT/pytest.txt"
  local tests=${PIPESTATUS[0]}
  "$PY" scripts/bench_gpu.py --streams "$STREAMS" --seconds "$SECONDS_EACH" --out "$OUT/bench.json" 2>&1 | tail -60
  local bench=${PIPESTATUS[0]}
  set -e
  echo "pytest exit $tests, bench exit $bench"
  return $((tests || bench))
}

case "${1:-all}" in
  install) install "${2:?folder of wheels}" ;;
  run) run ;;
  all) for dir in .whl/av .whl/gpu; do [ -d "$dir" ] && install "$dir"; done; run ;;
  *) echo "usage: $0 [install DIR | run | all]" >&2; exit 2 ;;
esac
