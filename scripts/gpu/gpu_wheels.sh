#!/usr/bin/env bash
# Where pip can reach the package registry: gather what the GPU checks need on the GPU test
# machine, which has no internet (Python 3.12 x86-64 with numpy, onnxruntime, Pillow, PyYAML,
# aiohttp, prometheus-client, numba and the CUDA toolkit, but no PyAV, pydantic, aiokafka, lap, orjson,
# PyNvVideoCodec or pycuda), into .whl/ for scripts/gpu_check.sh:
#   .whl/gpu-site.tar.xz    the packages, installed for cp312, with MANIFEST.txt (name==version)
#   .whl/pycuda-*.tar.gz    pycuda's sdist: it has no Linux wheels; built there when the wheel
#   .whl/pycuda-*.whl       built here (cp312, against this machine's CUDA headers and a link stub
#                           of libcuda) does not import on that machine's driver
# Versions: PyAV, pydantic and typing-extensions exactly as this checkout's .venv has them (what
# CI resolves from pyproject.toml), the rest what pyproject.toml allows; pydantic-core exactly as
# the pydantic release requires. pytest and pytest-timeout are carried too, so the run's per-test
# timeout exists there. PyNvVideoCodec is slimmed of what is never loaded (FFmpeg's sources,
# samples, the duplicate library names); both its modules stay: _130 for drivers with NVENC API
# 13 (R570+), _121 for 12.1 (R530-R565). Only PyAV is stripped (its debug symbols: 6 of 7 MB;
# PyNvVideoCodec's libraries have none). TensorRT is not fetched: its builder is not on the public
# registry (NVIDIA's index, NGC or JetPack). Prints what the device run will carry, which must
# stay under 60 MiB with the working tree.
#   PY=.venv-gpu312/bin/python bash scripts/gpu/gpu_wheels.sh    # the Python 3.12 that builds pycuda's wheel
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=$(realpath -m "${1:-.whl}")
PY=${PY:-python3}
VENV=${VENV:-.venv/bin/python}
LIMIT_MIB=60
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$DEST"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64)
TARGET=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}")
same_as_ci() { "$VENV" -c "import importlib.metadata as m; print('$1==' + m.version('$1'))"; }

"$PY" -m pip download -q "${TARGET[@]}" -d "$stage/wheels" "$(same_as_ci pydantic)"
core=$(unzip -p "$stage"/wheels/pydantic-2*.whl '*/METADATA' | sed -n 's/^Requires-Dist: pydantic-core *(\{0,1\}==\([0-9.]*\).*/\1/p')
[ -n "$core" ] || { echo "cannot read pydantic's pydantic-core pin" >&2; exit 1; }
"$PY" -m pip install -q "${TARGET[@]}" --target "$stage/site" \
  "$(same_as_ci av)" "$stage"/wheels/pydantic-2*.whl "pydantic-core==$core" "$(same_as_ci typing_extensions)" \
  annotated-types typing-inspection "aiokafka>=0.11,<0.15" async-timeout "cramjam>=2.8" "lap>=0.5.12" "orjson>=3.10" \
  "pynvvideocodec==2.2.4" pytools platformdirs siphash24 mako \
  "$(same_as_ci pytest)" "$(same_as_ci pytest-timeout)" "$(same_as_ci pluggy)" "$(same_as_ci iniconfig)" \
  "$(same_as_ci packaging)"
# slim PyNvVideoCodec: it loads libavformat.so.63 and libavutil.so.61 by soname
rm -rf "$stage"/site/external "$stage"/site/samples "$stage"/site/benchmarks "$stage"/site/bin
rm -f "$stage"/site/PyNvVideoCodec/libavformat.so "$stage"/site/PyNvVideoCodec/libavformat.so.63.1.101 \
  "$stage"/site/PyNvVideoCodec/libavutil.so "$stage"/site/PyNvVideoCodec/libavutil.so.61.1.101
find "$stage/site" -name __pycache__ -prune -exec rm -rf {} +
if command -v strip >/dev/null; then
  find "$stage/site/av" "$stage/site/av.libs" -type f \( -name "*.so" -o -name "*.so.*" \) -exec strip --strip-unneeded {} +
fi
(cd "$stage/site" && ls -d *.dist-info | sed -E 's/^(.*)-([^-]*)\.dist-info$/\1==\2/') > "$stage/site/MANIFEST.txt"
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
# pycuda's wheel for cp312, built by gpu_check.sh's own build step (its rehearsal), kept if it builds
if "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
  rm -f "$DEST"/pycuda-*.whl
  REHEARSE=1 PY="$PY" WHL="$DEST" OUT="$stage/pycuda" STEPS=unpack,pycuda bash scripts/gpu_check.sh >/dev/null 2>&1 || true
  if ls "$stage"/pycuda/pycuda-*.whl >/dev/null 2>&1; then  # stripped of its debug symbols (19 -> 2 MB)
    mkdir -p "$stage/wheel" && (cd "$stage/wheel" && unzip -q "$stage"/pycuda/pycuda-*.whl \
      && strip --strip-unneeded pycuda/*.so && zip -q -r -X "$DEST/$(basename "$stage"/pycuda/pycuda-*.whl)" .)
    echo "pycuda wheel: $(ls "$DEST"/pycuda-*.whl) (needs glibc 2.34 and a driver for CUDA 12.8+: else built there)"
  else
    echo "pycuda wheel not built here (see REHEARSE=1 STEPS=unpack,pycuda bash scripts/gpu_check.sh): built there"
  fi
else
  echo "PY is not Python 3.12: pycuda's wheel is not built here; the GPU machine builds it"
fi
sed 's/^/  /' "$stage/site/MANIFEST.txt" | tr '\n' ' '; echo
tree_kib=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 -r du -k --apparent-size 2>/dev/null | awk '{s+=$1} END {print s}')
bundle_kib=$(du -k --apparent-size "$DEST"/gpu-site.tar.xz "$DEST"/pycuda-* | awk '{s+=$1} END {print s}')
total_mib=$(( (tree_kib + bundle_kib + 1023) / 1024 ))
echo "carried to the GPU machine: tree $((tree_kib / 1024)) MiB + packages $((bundle_kib / 1024)) MiB = ${total_mib} MiB (limit ${LIMIT_MIB})"
[ "$total_mib" -le "$LIMIT_MIB" ] || { echo "over ${LIMIT_MIB} MiB: make the tree leaner" >&2; exit 1; }
