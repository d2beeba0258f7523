#!/usr/bin/env bash
# The GPU path's verdict, in one run of at most 8 minutes on a machine with an NVIDIA GPU: one line
# per claim, written as each is decided,
#   CLAIM PASS|FAIL|SKIP|NOT-RUN | the claim | its figure [| test: NODE ID]
#   FIGURE | what was measured | the figure            (benchmark figures: recorded, not judged)
# and exit 1 on any FAIL or SKIP (a claim not checked), or when no claim was made at all.
# NOT-RUN is only what a test says may lawfully be absent (TensorRT, which is not on PyPI).
#
#   bash scripts/gpu/gpu_wheels.sh                 # where the package registry is reachable: .whl/
#   bash scripts/gpu/gpu_preflight.sh              # on the GPU machine first: ~30 s, what it has
#   bash scripts/gpu_check.sh                  # then the verdict, with .whl/ carried there
#   REHEARSE=1 PY=python3.12 bash scripts/gpu_check.sh
#                                              # anywhere: every step that needs no GPU (pycuda
#                                              # built against a link stub), the tests on the
#                                              # stand-in GPU; no claim about NVIDIA hardware
#
# Steps, each under `timeout`, in this order (a failed step that makes the rest pointless stops
# the run at once): unpack .whl/gpu-site.tar.xz into $SITE; import PyNvVideoCodec (its whole
# error kept in the log); pycuda (the carried wheel if it imports, else built from its sdist
# against the real CUDA root behind a wrapper nvcc, the built wheel kept in $OUT to carry next
# time); the GPU tests (expected ids listed first; one claim line per test as it ends; every
# expected test without a line fails, as does a pytest exit that is not a result: a segfault,
# an abort, a collection error, a timeout); scripts/bench/bench_gpu.py (zero-copy claims, figures);
# scripts/bench/bench_host.py (the host path at a GPU's rate on this machine's cores: figures).
# The CPU-side GPU tests are not run here: CI runs them.
#
# $OUT (default .cache/gpu-check, relative paths work) gets at most 5 files: claims.txt, log.txt,
# bench.json, the pycuda wheel, and nothing else (the device tool brings back 8).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
case "$PY" in */*) PY=$(realpath -m -s "$PY") ;; esac  # steps change folder; a venv's link is kept
SITE=${SITE:-/tmp/gpu-site}
WHL=${WHL:-.whl}
OUT=$(realpath -m "${OUT:-.cache/gpu-check}")
GPU_TESTS=${GPU_TESTS:-tests/gpu}
STREAMS=${STREAMS:-8}
SECONDS_EACH=${SECONDS_EACH:-6}
REHEARSE=${REHEARSE:-0}
STEPS=${STEPS:-unpack,nvdec,pycuda,tests,bench,host}  # or some of them; cuda-root only prints that
TEST_TIMEOUT=${TEST_TIMEOUT:-90}  # per test: pytest-timeout's thread method ends the whole run
BUDGET_S=${BUDGET_S:-470}
mkdir -p "$SITE" "$OUT"
CLAIMS=$OUT/claims.txt
LOG=$OUT/log.txt
: > "$CLAIMS"
: > "$LOG"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1 GPU_CHECK_CLAIMS="$CLAIMS"
started=$SECONDS

claim() {  # outcome, claim, figure
  local line="CLAIM $1 | $2 | $3"
  echo "$line"
  echo "$line" >> "$CLAIMS"
}

log_step() { printf '\n==== %s (%s s into the run)\n' "$1" "$((SECONDS - started))" >> "$LOG"; }

limit() {  # a step's time: its own cap, within what is left of the run's budget
  local left=$((BUDGET_S - (SECONDS - started) - 10))
  [ "$left" -lt "$1" ] && echo $((left > 5 ? left : 5)) || echo "$1"
}

finish() {  # the verdict from the claims file; never green without claims
  echo "---- $((SECONDS - started)) s" | tee -a "$LOG"
  "$PY" -m scripts.gpu.gpu_verdict tally "$CLAIMS" | tee -a "$LOG"
  exit "${PIPESTATUS[0]}"
}

stop_here() { echo "stopping: $1" | tee -a "$LOG"; finish; }

want() { [[ ",$STEPS," == *",$1,"* ]]; }

cuda_root() {  # the real CUDA root, also behind a wrapper nvcc (`exec /usr/local/cuda-13.0/bin/nvcc "$@"`)
  local top root
  top=$(nvcc --dryrun -v -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
  for root in "${top:+$(realpath -m -s "$top")}" "${CUDA_HOME:-}" /usr/local/cuda; do
    [ -n "$root" ] || continue
    if [ -f "$root/include/cuda.h" ] || [ -f "$root/targets/x86_64-linux/include/cuda.h" ]; then
      echo "$root"
      return 0
    fi
  done
  return 1
}

libcuda_dir() {  # a folder with libcuda.so to link pycuda against: the driver's, or (rehearsal) a stub
  local so dir=$WORK/libcuda
  so=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF; exit}')
  mkdir -p "$dir"
  if [ -n "$so" ]; then
    ln -sf "$so" "$dir/libcuda.so"
  elif [ "$REHEARSE" = 1 ]; then  # no driver here: every cu* name of cuda.h as an empty function
    grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$1/include/cuda.h" | sort -u | sed 's/.*/void &(void) {}/' > "$dir/stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$dir/libcuda.so" "$dir/stub.c" || return 1
  else
    return 1
  fi
  echo "$dir"
}

step_unpack() {
  log_step unpack
  if timeout "$(limit 60)" tar -xJf "$WHL/gpu-site.tar.xz" -C "$SITE" >> "$LOG" 2>&1; then
    echo "packages unpacked into $SITE" | tee -a "$LOG"
    cat "$SITE/MANIFEST.txt" >> "$LOG" 2>/dev/null
  else
    claim FAIL "the carried packages unpack" "$WHL/gpu-site.tar.xz missing or broken (run scripts/gpu/gpu_wheels.sh)"
    stop_here "nothing to test with"
  fi
}

step_nvdec() {  # PyNvVideoCodec imports (it needs libnvidia-encode.so.1 even to decode) and sees NVDEC
  log_step "PyNvVideoCodec import"
  local out rc cause
  out=$(timeout "$(limit 60)" "$PY" -c "
import json, PyNvVideoCodec as nvc
print('PyNvVideoCodec', nvc.__version__)
caps = nvc.GetDecoderCaps(gpuid=0, codec=nvc.cudaVideoCodec.H264, chromaformat=getattr(nvc.cudaVideoChromaFormat, '420'), bitdepth=8)
print(json.dumps(caps))" 2>&1)
  rc=$?
  echo "$out" >> "$LOG"
  cause=$(echo "$out" | grep -E "Error|error|FATAL" | head -1 | cut -c1-300)
  if [ "$REHEARSE" = 1 ]; then
    echo "rehearsal: PyNvVideoCodec import exit $rc (no driver here): ${cause:-$(echo "$out" | tail -1)}" | tee -a "$LOG"
  elif [ $rc -eq 0 ]; then
    claim PASS "PyNvVideoCodec imports and reports NVDEC's H.264 capabilities" "$(echo "$out" | tail -1 | cut -c1-300)"
  else
    claim FAIL "PyNvVideoCodec imports and reports NVDEC's H.264 capabilities" "exit $rc: ${cause:-$(echo "$out" | tail -1)} (whole error in log.txt)"
    stop_here "without PyNvVideoCodec no GPU test can pass"
  fi
}

step_pycuda() {  # the carried wheel if it imports here; else built from its sdist
  log_step pycuda
  local wheel sdist root libdir t0=$SECONDS
  wheel=$(ls "$WHL"/pycuda-*.whl 2>/dev/null | head -1)
  if [ -n "$wheel" ] && [ "$REHEARSE" != 1 ] && "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$wheel" >> "$LOG" 2>&1 \
     && timeout 60 "$PY" -c "import pycuda.driver as cuda; cuda.init(); print('pycuda', cuda.get_version(), 'driver', cuda.get_driver_version())" >> "$LOG" 2>&1; then
    claim PASS "pycuda imports and initialises CUDA" "the carried $(basename "$wheel")"
    return 0
  fi
  sdist=$(ls "$WHL"/pycuda-*.tar.gz 2>/dev/null | head -1)
  [ -n "$sdist" ] || { claim FAIL "pycuda builds from its sdist" "no $WHL/pycuda-*.tar.gz (run scripts/gpu/gpu_wheels.sh)"; stop_here "no pycuda"; }
  root=$(cuda_root) || { claim FAIL "pycuda builds from its sdist" "no CUDA toolkit with include/cuda.h (nvcc's TOP, \$CUDA_HOME, /usr/local/cuda)"; stop_here "no pycuda"; }
  libdir=$(libcuda_dir "$root") || { claim FAIL "pycuda builds from its sdist" "no libcuda.so.1 (NVIDIA driver missing?)"; stop_here "no pycuda"; }
  echo "CUDA root $root (nvcc on PATH: $(command -v nvcc)); libcuda from $libdir" >> "$LOG"
  mkdir -p "$WORK/pycuda" && tar -xzf "$sdist" -C "$WORK/pycuda" --strip-components=1
  rm -f "$OUT"/pycuda-*.whl
  if (cd "$WORK/pycuda" && "$PY" configure.py --cuda-root="$root" --cudadrv-lib-dir="$libdir" --no-cuda-enable-curand \
        && timeout "$(limit 170)" "$PY" -m pip wheel -q --no-index --no-deps --no-build-isolation -w "$OUT" .) >> "$LOG" 2>&1 \
     && "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$OUT"/pycuda-*.whl >> "$LOG" 2>&1; then
    [ "$REHEARSE" = 1 ] && { echo "rehearsal: pycuda built against $root and a link stub in $((SECONDS - t0)) s" | tee -a "$LOG"; return 0; }
    if timeout 60 "$PY" -c "import pycuda.driver as cuda; cuda.init(); print('pycuda', cuda.get_version(), 'driver', cuda.get_driver_version())" >> "$LOG" 2>&1; then
      claim PASS "pycuda builds from its sdist and initialises CUDA" "$(basename "$sdist") in $((SECONDS - t0)) s (CUDA at $root); wheel kept in \$OUT"
    else
      claim FAIL "pycuda builds from its sdist and initialises CUDA" "built, but: $(tail -1 "$LOG" | cut -c1-300)"
      stop_here "no pycuda"
    fi
  else
    claim FAIL "pycuda builds from its sdist and initialises CUDA" "after $((SECONDS - t0)) s: $(grep -E "error|Error" "$LOG" | tail -1 | cut -c1-300)"
    stop_here "no pycuda"
  fi
}

step_tests() {  # one claim per test, written as it ends; no line for an expected test: FAIL
  log_step "GPU tests"
  local select=(-k "not standin") required=1 rc
  [ "$REHEARSE" = 1 ] && { select=(-k standin); required=0; }
  timeout "$(limit 40)" "$PY" -m pytest -q -p no:cacheprovider --collect-only "${select[@]}" "$GPU_TESTS" \
    > "$WORK/expected.txt" 2>> "$LOG"
  cat "$WORK/expected.txt" >> "$LOG"
  # the tracker's compiled round (numba), built once into the tree's cache before any test's clock runs
  timeout "$(limit 120)" "$PY" -c "import time; t = time.time(); from pipeline.s5_match import warm; warm(); \
print(f'tracker round compiled in {time.time() - t:.1f} s')" >> "$LOG" 2>&1
  GPU_CHECK_REQUIRE=$required timeout --kill-after=10 "$(limit 200)" "$PY" -m pytest -q -p no:cacheprovider \
    -W ignore::DeprecationWarning --timeout "$TEST_TIMEOUT" --timeout-method=thread -rs "${select[@]}" "$GPU_TESTS" >> "$LOG" 2>&1
  rc=$?
  grep "^CLAIM " "$CLAIMS" | grep "| test: "
  "$PY" -m scripts.gpu.gpu_verdict missing --expected "$WORK/expected.txt" --claims "$CLAIMS" --rc "$rc" --step "the GPU tests"
}

step_bench() {  # zero-copy as claims; decode and ceiling ratios as figures (decided beforehand)
  log_step bench
  local args=(--streams "$STREAMS" --seconds "$SECONDS_EACH" --out "$OUT/bench.json") rc
  [ "$REHEARSE" = 1 ] && args=(--cpu --streams 2 --seconds 3 --out "$OUT/bench.json")
  timeout --kill-after=5 "$(limit 90)" "$PY" -m scripts.bench.bench_gpu "${args[@]}" > "$WORK/bench.txt" 2>&1
  rc=$?
  cat "$WORK/bench.txt" >> "$LOG"
  grep -E "^FIGURE \| " "$WORK/bench.txt" | tee -a "$CLAIMS"
  grep -E "^(PASS|FAIL) \| " "$WORK/bench.txt" | while IFS= read -r line; do
    local outcome=${line%% |*} rest=${line#* | }
    claim "$outcome" "${rest%% | *}" "${rest#* | }"
  done
  if [ $rc -ne 0 ] && ! grep -qE "^FAIL \| " "$WORK/bench.txt"; then
    claim FAIL "scripts/bench/bench_gpu.py runs to its end" "exit $rc: $(tail -2 "$WORK/bench.txt" | tr '\n' ' ' | cut -c1-300)"
  fi
}

step_host() {  # the host path at a GPU's rate on this machine's cores: figures (issue 34)
  log_step "host path"
  local args=(--cameras 150 --fps 30 --objects 20 --seconds 15 --warmup 4 --sink null) rc
  [ "$REHEARSE" = 1 ] && args=(--cameras 20 --fps 10 --objects 5 --seconds 2 --warmup 2 --sink null)
  timeout --kill-after=5 "$(limit 45)" "$PY" -m scripts.bench.bench_host "${args[@]}" > "$WORK/host.txt" 2>> "$LOG"
  rc=$?
  tail -1 "$WORK/host.txt" >> "$LOG"
  if [ $rc -eq 0 ] && "$PY" -m scripts.gpu.gpu_verdict host-figures < "$WORK/host.txt" > "$WORK/host_figures.txt" 2>> "$LOG"; then
    tee -a "$CLAIMS" < "$WORK/host_figures.txt"
  else
    claim FAIL "scripts/bench/bench_host.py runs to its end" "exit $rc: $(tail -2 "$WORK/host.txt" | tr '\n' ' ' | cut -c1-300)"
  fi
}

if [ "$STEPS" = cuda-root ]; then cuda_root || echo "no CUDA root with include/cuda.h"; exit 0; fi
[ "$REHEARSE" = 1 ] && echo "rehearsal: the stand-in GPU, no claim about NVIDIA hardware" | tee -a "$LOG"
for step in unpack nvdec pycuda tests bench host; do
  want "$step" && "step_$step"
done
finish
