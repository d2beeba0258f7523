#!/usr/bin/env bash
# Where pip can reach the package registry: gather what the GPU checks need on the GPU test
# machine, which has no internet (Python 3.12 x86-64 with numpy, onnxruntime, Pillow, PyYAML,
# aiohttp, prometheus-client, pytest, setuptools and the CUDA toolkit, but no PyAV, pydantic,
# aiokafka, lap, PyNvVideoCodec or pycuda), into .whl/ for scripts/gpu_check.sh:
#   .whl/gpu-site.tar.xz    the packages, installed for cp312, stripped and packed with xz
#   .whl/pycuda-*.tar.gz    pycuda's sdist: it has no Linux wheels, it is built there (needs libcuda)
# Versions: what pyproject.toml allows; pydantic-core exactly as the pydantic release requires
# (pydantic refuses any other). PyNvVideoCodec is slimmed: FFmpeg's sources, samples and
# duplicate library names are not needed to run. TensorRT is not fetched: its builder is not on
# the public registry (NVIDIA's index, NGC or JetPack). Prints what the device run will carry,
# which must stay under 60 MiB with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PY=${PY:-python3}
LIMIT_MIB=60
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$DEST"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)
TARGET=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}")

"$PY" -m pip download -q "${TARGET[@]}" -d "$stage/wheels" "pydantic>=2.6,<3"
core=$(unzip -p "$stage"/wheels/pydantic-2*.whl '*/METADATA' | sed -n 's/^Requires-Dist: pydantic-core *(\{0,1\}==\([0-9.]*\).*/\1/p')
[ -n "$core" ] || { echo "cannot read pydantic's pydantic-core pin" >&2; exit 1; }
"$PY" -m pip install -q "${TARGET[@]}" --target "$stage/site" \
  "av>=14,<20" "$stage"/wheels/pydantic-2*.whl "pydantic-core==$core" annotated-types typing-inspection \
  "aiokafka>=0.11,<0.15" async-timeout "cramjam>=2.8" "lap>=0.5.12" "pynvvideocodec==2.2.4" pytools platformdirs \
  siphash24 mako
# slim PyNvVideoCodec: it loads libavformat.so.63 and libavutil.so.61 by soname
rm -rf "$stage"/site/external "$stage"/site/samples "$stage"/site/benchmarks "$stage"/site/bin
rm -f "$stage"/site/PyNvVideoCodec/libavformat.so "$stage"/site/PyNvVideoCodec/libavformat.so.63.1.101 \
  "$stage"/site/PyNvVideoCodec/libavutil.so "$stage"/site/PyNvVideoCodec/libavutil.so.61.1.101
find "$stage/site" -name __pycache__ -prune -exec rm -rf {} +
# PyAV's Cython modules ship with their debug symbols (6 MB of the 7 MB packed); the code is unchanged
if command -v strip >/dev/null; then
  find "$stage/site" -type f \( -name "*.so" -o -name "*.so.*" \) -exec strip --strip-unneeded {} +
fi
tar -C "$stage/site" -cf - . | xz -9 -T2 > "$DEST/gpu-site.tar.xz"
"$PY" - "$DEST" <<'PYEOF'
import json, sys, urllib.request
from pathlib import Path
release = json.load(urllib.request.urlopen("https://pypi.org/pypi/pycuda/json", timeout=60))
sdist = next(u for u in release["urls"] if u["packagetype"] == "sdist")
target = Path(sys.argv[1]) / sdist["filename"]
if not target.exists():
    for old in target.parent.glob("pycuda-*.tar.gz"):
        old.unlink()
    target.write_bytes(urllib.request.urlopen(sdist["url"], timeout=120).read())
print(f"pycuda sdist: {target.name}")
PYEOF
ls "$stage/site" | sed 's/^/  /' | tr '\n' ' '; echo
tree_kib=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 -r du -k --apparent-size 2>/dev/null | awk '{s+=$1} END {print s}')
bundle_kib=$(du -k --apparent-size "$DEST"/gpu-site.tar.xz "$DEST"/pycuda-*.tar.gz | awk '{s+=$1} END {print s}')
total_mib=$(( (tree_kib + bundle_kib + 1023) / 1024 ))
echo "carried to the GPU machine: tree $((tree_kib / 1024)) MiB + packages $((bundle_kib / 1024)) MiB = ${total_mib} MiB (limit ${LIMIT_MIB})"
[ "$total_mib" -le "$LIMIT_MIB" ] || { echo "over ${LIMIT_MIB} MiB: make the tree leaner" >&2; exit 1; }
