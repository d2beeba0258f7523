"""Build the GPU path's CUDA kernel ahead of time: pipeline/s4_infer/letterbox_nv12.cu -> a fatbin
with machine code (SASS) for the common GPU generations and PTX for the lowest one, which the
driver compiles for newer GPUs. The daemon loads it with pycuda's `module_from_buffer`, so a
deployment needs neither `nvcc` on its PATH nor a writable compiler cache (systemd's
ProtectSystem=strict, Kubernetes' readOnlyRootFilesystem, the image's non-root user).

    python scripts/build_kernels.py            # rebuild the fatbin and its .json (nvcc on PATH)
    python scripts/build_kernels.py --check    # exit 1 if the committed fatbin is stale
    NVCC=/usr/local/cuda-12.6/bin/nvcc python scripts/build_kernels.py   # for an older driver

The .json beside the fatbin records the source's SHA-256, the nvcc release and the flags, so a
stale fatbin is found without nvcc, and with the same nvcc a rebuild must give the same bytes
(nvcc's output does not depend on the source's path or the time: checked).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "pipeline" / "s4_infer" / "letterbox_nv12.cu"
FATBIN = SOURCE.with_suffix(".fatbin")
RECORD = SOURCE.with_suffix(".fatbin.json")
# SASS: Turing, Ampere (A100, A10/A30/A40, Jetson Orin), Ada (L4, L40), Hopper (H100/H200),
# Blackwell (B200, RTX 50); PTX of the lowest, JIT-compiled by the driver for anything newer
SASS = ("75", "80", "86", "87", "89", "90", "100", "120")
PTX = "75"
FLAGS = ("--fatbin", "-std=c++17", "--use_fast_math")


def nvcc_release(nvcc: str) -> str:
    """'13.0' from `nvcc --version`."""
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"release (\d+\.\d+)", out)
    if not match:
        raise RuntimeError(f"cannot read the release from `{nvcc} --version`: {out!r}")
    return match.group(1)


def arch_flags() -> list[str]:
    """nvcc -gencode flags for SASS of every listed generation plus PTX of the lowest."""
    flags = []
    for sm in SASS:
        flags += ["-gencode", f"arch=compute_{sm},code=sm_{sm}"]
    return flags + ["-gencode", f"arch=compute_{PTX},code=compute_{PTX}"]


def build(nvcc: str, out: Path) -> None:
    """Compile SOURCE into the fatbin `out`."""
    cmd = [nvcc, *FLAGS, *arch_flags(), "-o", str(out), str(SOURCE)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"nvcc failed ({result.returncode}):\n{result.stderr}")


def fatbin_images(data: bytes) -> list[tuple[str, int]]:
    """("ptx" or "sass", compute capability x 10) of every image in a fatbin, from its headers
    (a 16-byte file header, then per image: kind, version, header size, payload size, and the
    target architecture at byte 28)."""
    magic, _, header, size = struct.unpack_from("<IHHQ", data, 0)
    if magic != 0xBA55ED50:
        raise ValueError("not a fatbin")
    images, offset = [], header
    while offset < header + size:
        kind, _, image_header, payload = struct.unpack_from("<HHII", data, offset)
        arch = struct.unpack_from("<I", data, offset + 28)[0]
        images.append(({1: "ptx", 2: "sass"}.get(kind, f"kind{kind}"), arch))
        offset += image_header + payload
    return images


def source_sha256() -> str:
    """SHA-256 of the kernel source."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()


def record(nvcc: str) -> dict:
    """What the committed fatbin was built from."""
    return {"source": SOURCE.name, "source_sha256": source_sha256(), "nvcc_release": nvcc_release(nvcc),
            "flags": [*FLAGS, *arch_flags()], "fatbin_sha256": hashlib.sha256(FATBIN.read_bytes()).hexdigest()}


def check(nvcc: str | None) -> list[str]:
    """Problems with the committed fatbin (empty: up to date). Without nvcc only the source
    hash is compared; with the recorded nvcc release the fatbin is rebuilt and compared."""
    if not FATBIN.exists() or not RECORD.exists():
        return [f"{FATBIN.name} or {RECORD.name} is missing: run python scripts/build_kernels.py"]
    saved = json.loads(RECORD.read_text())
    problems = []
    if saved["source_sha256"] != source_sha256():
        problems.append(f"{SOURCE.name} changed since {FATBIN.name} was built: run python scripts/build_kernels.py")
    if saved["fatbin_sha256"] != hashlib.sha256(FATBIN.read_bytes()).hexdigest():
        problems.append(f"{FATBIN.name} does not match {RECORD.name}: rebuild it")
    if saved["flags"] != [*FLAGS, *arch_flags()]:
        problems.append("the build flags changed: run python scripts/build_kernels.py")
    if nvcc is not None and not problems and nvcc_release(nvcc) == saved["nvcc_release"]:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp) / FATBIN.name
            build(nvcc, fresh)
            if fresh.read_bytes() != FATBIN.read_bytes():
                problems.append(f"nvcc {saved['nvcc_release']} builds a different {FATBIN.name}: rebuild it")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the committed fatbin is current")
    args = parser.parse_args()
    nvcc = os.environ.get("NVCC") or "nvcc"
    have_nvcc = subprocess.run(["sh", "-c", f"command -v {nvcc}"], capture_output=True).returncode == 0
    if args.check:
        problems = check(nvcc if have_nvcc else None)
        for problem in problems:
            print(problem, file=sys.stderr)
        if not problems:
            print(f"{FATBIN.name} is current" + ("" if have_nvcc else " (source hash only: no nvcc)"))
        return 1 if problems else 0
    if not have_nvcc:
        print(f"{nvcc} not found: install the CUDA toolkit or set NVCC", file=sys.stderr)
        return 1
    build(nvcc, FATBIN)
    RECORD.write_text(json.dumps(record(nvcc), indent=2) + "\n")
    print(f"wrote {FATBIN.relative_to(REPO)} ({FATBIN.stat().st_size} bytes) with nvcc {nvcc_release(nvcc)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
