#!/usr/bin/env bash
# What the GPU machine offers the GPU path, in one short call (~30 s) before the verdict run, so
# a missing library or a sandbox is known before minutes are spent: everything goes to
# $OUT/preflight.txt (kept whole) and a summary of PROBLEM/OK lines to stdout.
#   bash scripts/gpu/gpu_preflight.sh        # with .whl/ carried there (scripts/gpu/gpu_wheels.sh)
# It reports: the kernel (4.4.0 is gVisor's), the driver and GPUs (nvidia-smi), whether
# /proc/driver/nvidia exists (sandboxed runtimes hide it), libcuda, libnvcuvid and
# libnvidia-encode (PyNvVideoCodec needs the last even to decode), the real CUDA root behind a
# wrapper nvcc and its cuda.h, the GPUs the driver lets this process use (pipeline.gpu.probe),
# Python and the packages it has, then unpacks the bundle and imports PyNvVideoCodec with its
# whole error and decoder capabilities. Exits 0 whatever it finds; it only reports.
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
SITE=${SITE:-/tmp/gpu-site}
WHL=${WHL:-.whl}
OUT=$(realpath -m "${OUT:-.cache/gpu-check}")
mkdir -p "$OUT" "$SITE"
REPORT=$OUT/preflight.txt
: > "$REPORT"
export PYTHONPATH="$SITE:$PWD"

section() { printf '\n==== %s\n' "$1" >> "$REPORT"; }
say() { echo "$1" | tee -a "$REPORT"; }
run() { section "$*"; timeout 30 "$@" >> "$REPORT" 2>&1; echo "(exit $?)" >> "$REPORT"; }

run date -u
run uname -a
[ "$(uname -r)" = "4.4.0" ] && say "NOTE gVisor kernel (uname -r 4.4.0): /proc is synthetic"
run nvidia-smi
run nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv
run ls -la /proc/driver/nvidia /proc/driver/nvidia/gpus
[ -d /proc/driver/nvidia ] && say "OK /proc/driver/nvidia exists" || say "NOTE no /proc/driver/nvidia (sandboxed runtime?): GPUs are counted through libcuda"
section "driver libraries (ldconfig -p)"
ldconfig -p 2>/dev/null | grep -E "libcuda\.so|libnvcuvid|libnvidia-encode|libnvidia-ml" >> "$REPORT"
for lib in libcuda.so.1 libnvcuvid.so.1 libnvidia-encode.so.1; do
  if ldconfig -p 2>/dev/null | grep -q "$lib " || ls /usr/local/nvidia/lib64/"$lib" >/dev/null 2>&1; then
    say "OK $lib found"
  else
    say "PROBLEM $lib not found (NVDEC needs libnvcuvid and libnvidia-encode: the full driver, or NVIDIA_DRIVER_CAPABILITIES with video)"
  fi
done
run ls -la /usr/local/nvidia/lib64
section "nvcc"
{ command -v nvcc; file "$(command -v nvcc)"; head -c 300 "$(command -v nvcc)" | strings | head -5; nvcc --version
  nvcc --dryrun -v -c -x cu /dev/null -o /dev/null 2>&1 | grep -E "^#\\$ TOP="; } >> "$REPORT" 2>&1
top=$(nvcc --dryrun -v -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
root=${top:+$(realpath -m -s "$top")}
if [ -n "$root" ] && [ -f "$root/include/cuda.h" ]; then say "OK CUDA root $root (nvcc on PATH: $(command -v nvcc)), cuda.h present"
else say "PROBLEM no cuda.h under nvcc's root '${root:-?}' (pycuda cannot build)"; fi
run "$PY" -c "import sys; print(sys.version)"
run "$PY" -m pip list
section "GPUs this process may use (pipeline.gpu.probe: cuInit + cuDeviceGetCount)"
"$PY" -c "from pipeline.gpu import probe; f = probe(); print(f.devices, '|', f.why)" 2>&1 | tee -a "$REPORT"
section "unpack $WHL/gpu-site.tar.xz"
t0=$SECONDS
if timeout 60 tar -xJf "$WHL/gpu-site.tar.xz" -C "$SITE" >> "$REPORT" 2>&1; then
  say "OK bundle unpacked in $((SECONDS - t0)) s"; cat "$SITE/MANIFEST.txt" >> "$REPORT" 2>/dev/null
else
  say "PROBLEM $WHL/gpu-site.tar.xz missing or broken"
fi
section "import PyNvVideoCodec, decoder caps (whole output)"
out=$(timeout 60 "$PY" -c "
import json, PyNvVideoCodec as nvc
print('PyNvVideoCodec', nvc.__version__)
for codec in ('H264', 'HEVC'):
    caps = nvc.GetDecoderCaps(gpuid=0, codec=getattr(nvc.cudaVideoCodec, codec), chromaformat=getattr(nvc.cudaVideoChromaFormat, '420'), bitdepth=8)
    print(codec, json.dumps(caps))" 2>&1)
rc=$?
echo "$out" >> "$REPORT"
if [ $rc -eq 0 ]; then say "OK PyNvVideoCodec: $(echo "$out" | grep -E '^H264' | cut -c1-200)"
else say "PROBLEM PyNvVideoCodec (exit $rc): $(echo "$out" | grep -E 'Error|error|FATAL' | head -1 | cut -c1-300)"; fi
run "$PY" -c "import tensorrt; print('TensorRT', tensorrt.__version__)"
say "preflight report: $REPORT"
exit 0
