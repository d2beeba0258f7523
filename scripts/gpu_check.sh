#!/usr/bin/env bash
# The GPU path's verdict, in one run on a machine with an NVIDIA GPU: one line per claim,
#   CLAIM PASS|FAIL|SKIP | the claim | its figure
# and exit 1 on any FAIL, and on any SKIP of a claim that needs the GPU (a missing GPU or module
# fails; only TensorRT, which cannot be installed from the registry, may be NOT RUN).
#
#   bash scripts/gpu_wheels.sh                 # where the package registry is reachable: .whl/
#   bash scripts/gpu_check.sh                  # on the GPU machine, with .whl/ carried there
#   REHEARSE=1 PY=/path/to/python3.12 bash scripts/gpu_check.sh
#                                              # anywhere: the same steps on the stand-in GPU
#                                              # (tests/gpu/standin.py); no GPU claim is made
#
# Steps: unpack .whl/gpu-site.tar.xz into $SITE (nothing of the machine's Python is changed),
# build pycuda from its sdist (timed), import PyNvVideoCodec and pycuda, run tests/gpu on the
# real GPU (NVDEC frames, timestamps and pixels against FFmpeg, H.264 and H.265; the kernel
# against its reference and the CPU path; detections against the CPU path on ground-truth
# scenes; the daemon's copies; memory over 50 reconnects; the GIL; new sequences; decoder
# failures), the CPU-side GPU tests, and scripts/bench_gpu.py (the ceiling against bare NVDEC).
# Logs and reports go to $OUT (the device tool brings them back).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
SITE=${SITE:-/tmp/gpu-site}
OUT=${OUT:-.cache/gpu-check}
STREAMS=${STREAMS:-8}
SECONDS_EACH=${SECONDS_EACH:-10}
REHEARSE=${REHEARSE:-0}
mkdir -p "$SITE" "$OUT"
: > "$OUT/claims.txt"
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1
started=$(date +%s)

claim() {  # outcome, claim, figure
  local line="CLAIM $1 | $2 | $3"
  echo "$line"
  echo "$line" >> "$OUT/claims.txt"
}

unpack() {
  local t0=$SECONDS
  tar -xJf .whl/gpu-site.tar.xz -C "$SITE" || return 1
  echo "packages unpacked into $SITE in $((SECONDS - t0)) s"
}

build_pycuda() {  # from its sdist: pycuda has no Linux wheels; it links against the driver's libcuda
  local src=/tmp/pycuda-build t0=$SECONDS sdist cuda_root libdir so
  sdist=$(ls .whl/pycuda-*.tar.gz 2>/dev/null | head -1)
  [ -n "$sdist" ] || { claim FAIL "pycuda builds from its sdist" "no .whl/pycuda-*.tar.gz (run scripts/gpu_wheels.sh)"; return 1; }
  command -v nvcc >/dev/null || { claim FAIL "pycuda builds from its sdist" "no nvcc on PATH"; return 1; }
  cuda_root=$(dirname "$(dirname "$(command -v nvcc)")")
  libdir=""
  for d in "$cuda_root/lib64/stubs" "$cuda_root/targets/x86_64-linux/lib/stubs" /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu; do
    [ -e "$d/libcuda.so" ] && { libdir=$d; break; }
  done
  if [ -z "$libdir" ]; then  # only libcuda.so.1 (the driver's): link against it through a folder of ours
    so=$(ldconfig -p | awk '/libcuda\.so\.1 /{print $NF; exit}')
    [ -n "$so" ] || { claim FAIL "pycuda builds from its sdist" "no libcuda found (NVIDIA driver missing?)"; return 1; }
    libdir=/tmp/pycuda-libcuda
    mkdir -p "$libdir" && ln -sf "$so" "$libdir/libcuda.so"
  fi
  rm -rf "$src" && mkdir -p "$src" && tar -xzf "$sdist" -C "$src" --strip-components=1
  if (cd "$src" && "$PY" configure.py --cuda-root="$cuda_root" --cudadrv-lib-dir="$libdir" --no-cuda-enable-curand \
        && "$PY" -m pip wheel -q --no-index --no-deps --no-build-isolation -w "$OUT/pycuda-wheel" .) > "$OUT/pycuda-build.log" 2>&1 \
     && "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$OUT"/pycuda-wheel/pycuda-*.whl \
        >> "$OUT/pycuda-build.log" 2>&1; then
    claim PASS "pycuda builds from its sdist" "$(basename "$sdist") in $((SECONDS - t0)) s (CUDA at $cuda_root)"
  else
    claim FAIL "pycuda builds from its sdist" "after $((SECONDS - t0)) s: $(tail -3 "$OUT/pycuda-build.log" | tr '\n' ' ' | cut -c1-300)"
    return 1
  fi
}

imports() {
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
    "$PY" -c "import sys, av, numpy; print('python', sys.version.split()[0], '| PyAV', av.__version__, '| numpy', numpy.__version__)" 2>&1
    "$PY" -c "import tensorrt as trt; print('TensorRT', trt.__version__)" 2>/dev/null || echo "TensorRT: not installed"
  } | tee "$OUT/versions.txt"
  local out
  if out=$("$PY" -c "import PyNvVideoCodec as nvc, pycuda, pycuda.driver as cuda; cuda.init(); print('PyNvVideoCodec', nvc.__version__, '| pycuda', pycuda.VERSION_TEXT, '| driver CUDA', cuda.get_driver_version(), '|', cuda.Device.count(), 'GPU(s)')" 2>&1); then
    claim PASS "PyNvVideoCodec and pycuda import" "$(echo "$out" | tail -1)"
  else
    claim FAIL "PyNvVideoCodec and pycuda import" "$(echo "$out" | tail -2 | tr '\n' ' ' | cut -c1-300)"
  fi
}

run_tests() {
  local select=(-k "not standin") required=1
  [ "$REHEARSE" = 1 ] && { select=(-k standin); required=0; }
  GPU_CHECK_REQUIRE=$required "$PY" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning --timeout 300 -rs "${select[@]}" \
    tests/gpu 2>&1 | tee "$OUT/pytest-gpu.txt" | grep -v "^CLAIM "
  grep "^CLAIM " "$OUT/pytest-gpu.txt" >> "$OUT/claims.txt"
  grep "^CLAIM " "$OUT/pytest-gpu.txt"
  local cpu_side
  "$PY" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning --timeout 300 tests/unit/test_gpu_path_on_cpu.py \
    > "$OUT/pytest-cpu-side.txt" 2>&1
  cpu_side=$?
  if [ "$REHEARSE" = 1 ]; then
    grep -qE "passed" "$OUT/pytest-gpu.txt" && ! grep -qE "[0-9]+ (failed|error)" "$OUT/pytest-gpu.txt" || {
      claim FAIL "stand-in GPU tests (rehearsal)" "$(tail -1 "$OUT/pytest-gpu.txt")"; }
  fi
  if [ $cpu_side -eq 0 ]; then
    claim PASS "the GPU path's CPU-side tests (kernel fatbin current, path choice, FP16 conversion)" "$(tail -1 "$OUT/pytest-cpu-side.txt")"
  else
    claim FAIL "the GPU path's CPU-side tests (kernel fatbin current, path choice, FP16 conversion)" "$(tail -1 "$OUT/pytest-cpu-side.txt")"
  fi
}

run_bench() {
  local args=(--streams "$STREAMS" --seconds "$SECONDS_EACH" --out "$OUT/bench.json")
  [ "$REHEARSE" = 1 ] && args=(--cpu --streams 2 --seconds 3 --out "$OUT/bench.json")
  "$PY" scripts/bench_gpu.py "${args[@]}" > "$OUT/bench.txt" 2>&1
  local code=$?
  grep -E "^(PASS|FAIL) \| " "$OUT/bench.txt" | while IFS= read -r line; do
    local outcome=${line%% |*} rest=${line#* | }
    claim "$outcome" "${rest%% | *}" "${rest#* | }"
  done
  if [ $code -ne 0 ] && ! grep -qE "^FAIL \| " "$OUT/bench.txt"; then
    claim FAIL "scripts/bench_gpu.py runs" "exit $code: $(tail -2 "$OUT/bench.txt" | tr '\n' ' ' | cut -c1-300)"
  fi
}

if [ "$REHEARSE" = 1 ]; then
  echo "rehearsal on the stand-in GPU: no claim about NVIDIA hardware is made"
  unpack || claim FAIL "packages unpack" ".whl/gpu-site.tar.xz missing or broken"
  "$PY" -c "import av, pydantic, aiokafka, cramjam; print('PyAV', av.__version__, '| pydantic', pydantic.__version__, '| aiokafka', aiokafka.__version__)" \
    && claim PASS "the carried packages import" "PyAV, pydantic, aiokafka, cramjam" \
    || claim FAIL "the carried packages import" "see above"
else
  unpack || claim FAIL "packages unpack" ".whl/gpu-site.tar.xz missing or broken"
  build_pycuda
  imports
fi
run_tests
run_bench
fails=$(grep -c "^CLAIM FAIL" "$OUT/claims.txt")
skips=$(grep "^CLAIM SKIP" "$OUT/claims.txt" | grep -vc "TensorRT")
echo "---- $(grep -c "^CLAIM PASS" "$OUT/claims.txt") PASS, $fails FAIL, $skips SKIP of a GPU claim (TensorRT, not installable here, is not required), in $(( $(date +%s) - started )) s"
[ "$fails" -eq 0 ] && [ "$skips" -eq 0 ]
