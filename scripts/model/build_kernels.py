"""Build the GPU path's CUDA kernel ahead of time: pipeline/s4_infer/letterbox_nv12.cu -> fatbins
with machine code (SASS) for the common GPU generations and PTX for the lowest one, which the
driver compiles for newer GPUs. The daemon loads one with pycuda's `module_from_buffer`, so a
deployment needs neither `nvcc` on its PATH nor a writable compiler cache (systemd's
ProtectSystem=strict, Kubernetes' readOnlyRootFilesystem, the image's non-root user).

Two builds, because a fatbin needs a driver at least as new as its toolkit (CUDA minor-version
compatibility) and GPU fleets run older drivers than our CUDA 13 (pipeline.gpu picks one by the
driver's CUDA version):
- `letterbox_nv12.fatbin`: nvcc 13.0; needs driver R580 (580.65.06) or newer.
- `letterbox_nv12.cuda12.fatbin`: CUDA 12.8 from PyPI's NVIDIA wheels. No CUDA 12 nvcc is on
  PyPI, so it is NVRTC 12.8 (CUDA C++ -> PTX and cubins) and nvFatbin 12.8 (the library form of
  `fatbinary`), called through ctypes, with the same flags (NVRTC 13.0 gives nvcc 13.0's code
  for this kernel, byte for byte but for a banner: checked). Its SASS loads on driver R525 or
  newer (12.x minor-version compatibility); its PTX, for GPUs newer than sm_120, needs R570. Its
  PTX is stored uncompressed (compressed entries have driver floors of their own).

    python -m scripts.model.build_kernels            # rebuild both and their .json (nvcc on PATH; the
                                               # CUDA 12.8 wheels are fetched into .cache/cuda12)
    python -m scripts.model.build_kernels --check    # exit 1 if a committed fatbin is stale
    NVCC=/usr/local/cuda-12.6/bin/nvcc python -m scripts.model.build_kernels --only cuda13

Each .json records the source's SHA-256, the toolchain's full build id and the flags, so a
stale fatbin is found without a toolchain; with the very same build a rebuild must give the same
bytes (the output does not depend on the source's path or the time: checked); with another
build of the same release the bytes are not compared (they may differ), only the source.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "pipeline" / "s4_infer" / "letterbox_nv12.cu"
FATBIN = SOURCE.with_suffix(".fatbin")
RECORD = SOURCE.with_suffix(".fatbin.json")
FATBIN12 = SOURCE.with_suffix(".cuda12.fatbin")
RECORD12 = SOURCE.with_suffix(".cuda12.fatbin.json")
CUDA12_SITE = REPO / ".cache" / "cuda12"
CUDA12_WHEELS = ("nvidia-cuda-nvrtc-cu12==12.8.93", "nvidia-nvfatbin-cu12==12.8.90", "nvidia-cuda-runtime-cu12==12.8.90")
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


def nvcc_build(nvcc: str) -> str:
    """nvcc's full build id ('cuda_13.0.r13.0/compiler.36424714_0, V13.0.88'): two builds of one
    release may emit different bytes."""
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    build = re.search(r"Build (\S+)", out)
    version = re.search(r"\b(V\d+\.\d+\.\d+)", out)
    return ", ".join(m.group(1) for m in (build, version) if m) or out.strip().splitlines()[-1]


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


# ---------------------------------------------------------------------- CUDA 12.8: NVRTC + nvFatbin
def cuda12_libraries(site: Path = CUDA12_SITE) -> tuple[ctypes.CDLL, ctypes.CDLL, Path] | None:
    """NVRTC, nvFatbin and the CUDA headers of the CUDA 12.8 wheels installed in `site` (None if absent)."""
    nv = Path(site) / "nvidia"
    paths = (nv / "cuda_nvrtc/lib/libnvrtc.so.12", nv / "nvfatbin/lib/libnvfatbin.so.12")
    if not all(p.exists() for p in paths):
        return None
    return ctypes.CDLL(str(paths[0])), ctypes.CDLL(str(paths[1])), nv / "cuda_runtime/include"


def install_cuda12(site: Path = CUDA12_SITE) -> None:
    """Fetch the CUDA 12.8 wheels (about 90 MB; a build-time tool, never a dependency)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), *CUDA12_WHEELS],
                   check=True)


def cuda12_build_id(libraries) -> str:
    """'nvrtc 12.8 (nvidia-cuda-nvrtc-cu12==12.8.93), nvFatbin 12.8 (...)': the exact wheels used."""
    nvrtc, fatbin, _ = libraries
    major, minor, fmajor, fminor = ctypes.c_int(), ctypes.c_int(), ctypes.c_uint(), ctypes.c_uint()
    nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    fatbin.nvFatbinVersion(ctypes.byref(fmajor), ctypes.byref(fminor))
    return (f"nvrtc {major.value}.{minor.value} ({CUDA12_WHEELS[0]}), nvFatbin {fmajor.value}.{fminor.value} "
            f"({CUDA12_WHEELS[1]}), headers {CUDA12_WHEELS[2]}")


def build_cuda12(libraries, out: Path) -> None:
    """SOURCE -> a fatbin of the same images as `build` (PTX first, then SASS), with NVRTC and nvFatbin."""
    nvrtc, fatbin, include = libraries
    nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
    source = SOURCE.read_bytes()
    handle = ctypes.c_void_p()
    options = [b"-64", b"-host=linux", b"-cuda", b"-compress=false"]
    if fatbin.nvFatbinCreate(ctypes.byref(handle), (ctypes.c_char_p * len(options))(*options), len(options)):
        raise RuntimeError("nvFatbinCreate failed")
    try:
        ptx = _nvrtc_compile(nvrtc, source, f"compute_{PTX}", include, ptx=True)
        _check(fatbin.nvFatbinAddPTX(handle, ptx, ctypes.c_size_t(len(ptx)), PTX.encode(),
                                     f"{SOURCE.stem}.1.sm_{PTX}".encode(), b""), "nvFatbinAddPTX")
        for i, sm in enumerate(SASS, 1):
            cubin = _nvrtc_compile(nvrtc, source, f"sm_{sm}", include, ptx=False)
            _check(fatbin.nvFatbinAddCubin(handle, cubin, ctypes.c_size_t(len(cubin)), sm.encode(),
                                           f"{SOURCE.stem}.{i}.sm_{sm}".encode()), f"nvFatbinAddCubin sm_{sm}")
        size = ctypes.c_size_t()
        _check(fatbin.nvFatbinSize(handle, ctypes.byref(size)), "nvFatbinSize")
        data = ctypes.create_string_buffer(size.value)
        _check(fatbin.nvFatbinGet(handle, data), "nvFatbinGet")
    finally:
        fatbin.nvFatbinDestroy(ctypes.byref(handle))
    out.write_bytes(data.raw)


def _nvrtc_compile(nvrtc, source: bytes, arch: str, include: Path, ptx: bool) -> bytes:
    program = ctypes.c_void_p()
    _check(nvrtc.nvrtcCreateProgram(ctypes.byref(program), source, SOURCE.name.encode(), 0, None, None),
           "nvrtcCreateProgram")
    try:
        options = [f"--gpu-architecture={arch}".encode(), b"--std=c++17", b"--use_fast_math", f"-I{include}".encode()]
        if nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options)):
            size = ctypes.c_size_t()
            nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            nvrtc.nvrtcGetProgramLog(program, log)
            raise RuntimeError(f"NVRTC failed for {arch}:\n{log.value.decode(errors='replace')}")
        size = ctypes.c_size_t()
        get_size, get = (nvrtc.nvrtcGetPTXSize, nvrtc.nvrtcGetPTX) if ptx else (nvrtc.nvrtcGetCUBINSize, nvrtc.nvrtcGetCUBIN)
        _check(get_size(program, ctypes.byref(size)), "size")
        data = ctypes.create_string_buffer(size.value)
        _check(get(program, data), "get")
        return data.raw
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))


def _check(code: int, what: str) -> None:
    if code:
        raise RuntimeError(f"{what} failed ({code})")


# ---------------------------------------------------------------------- records and the staleness check
def record(fatbin: Path, toolchain: str, build_id: str) -> dict:
    """What a committed fatbin was built from."""
    return {"source": SOURCE.name, "source_sha256": source_sha256(), "toolchain": toolchain, "build": build_id,
            "flags": [*FLAGS, *arch_flags()], "fatbin_sha256": hashlib.sha256(fatbin.read_bytes()).hexdigest()}


def check(nvcc: str | None, cuda12=None) -> list[str]:
    """Problems with the committed fatbins (empty: up to date). Without a toolchain only the
    source hash is compared; with the recorded build (the full id) a fatbin is rebuilt and its
    bytes compared; with another build of the toolchain the bytes are not compared."""
    problems = []
    for fatbin, saved_at, build_id, rebuild in (
            (FATBIN, RECORD, nvcc_build(nvcc) if nvcc else None, lambda out: build(nvcc, out)),
            (FATBIN12, RECORD12, cuda12_build_id(cuda12) if cuda12 else None, lambda out: build_cuda12(cuda12, out))):
        if not fatbin.exists() or not saved_at.exists():
            problems.append(f"{fatbin.name} or {saved_at.name} is missing: run python -m scripts.model.build_kernels")
            continue
        saved = json.loads(saved_at.read_text())
        if saved["source_sha256"] != source_sha256():
            problems.append(f"{SOURCE.name} changed since {fatbin.name} was built: run python -m scripts.model.build_kernels")
        if saved["fatbin_sha256"] != hashlib.sha256(fatbin.read_bytes()).hexdigest():
            problems.append(f"{fatbin.name} does not match {saved_at.name}: rebuild it")
        if saved["flags"] != [*FLAGS, *arch_flags()]:
            problems.append(f"the build flags changed since {fatbin.name}: run python -m scripts.model.build_kernels")
        if build_id is not None and build_id == saved["build"] and not problems:
            with tempfile.TemporaryDirectory() as tmp:
                fresh = Path(tmp) / fatbin.name
                rebuild(fresh)
                if fresh.read_bytes() != fatbin.read_bytes():
                    problems.append(f"{saved['build']} builds a different {fatbin.name}: rebuild it")
    return problems


def compared(nvcc: str | None, cuda12=None) -> list[str]:
    """The fatbins whose bytes `check` compares with this machine's toolchains."""
    out = []
    for fatbin, saved_at, build_id in ((FATBIN, RECORD, nvcc_build(nvcc) if nvcc else None),
                                       (FATBIN12, RECORD12, cuda12_build_id(cuda12) if cuda12 else None)):
        if saved_at.exists() and build_id == json.loads(saved_at.read_text()).get("build"):
            out.append(fatbin.name)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the committed fatbins are current")
    parser.add_argument("--only", choices=("cuda13", "cuda12"), help="build one of the two")
    args = parser.parse_args()
    nvcc = os.environ.get("NVCC") or "nvcc"
    have_nvcc = subprocess.run(["sh", "-c", f"command -v {nvcc}"], capture_output=True).returncode == 0
    if args.check:
        nvcc_here, cuda12 = nvcc if have_nvcc else None, cuda12_libraries()
        problems = check(nvcc_here, cuda12)
        for problem in problems:
            print(problem, file=sys.stderr)
        if not problems:
            compared_here = compared(nvcc_here, cuda12)
            print(f"{FATBIN.name} and {FATBIN12.name} are current (bytes compared: "
                  f"{', '.join(compared_here) or 'none, the source hash only: not the recorded toolchain builds'})")
        return 1 if problems else 0
    if args.only != "cuda12":
        if not have_nvcc:
            print(f"{nvcc} not found: install the CUDA toolkit or set NVCC", file=sys.stderr)
            return 1
        build(nvcc, FATBIN)
        RECORD.write_text(json.dumps(record(FATBIN, f"nvcc {nvcc_release(nvcc)}", nvcc_build(nvcc)), indent=2) + "\n")
        print(f"wrote {FATBIN.relative_to(REPO)} ({FATBIN.stat().st_size} bytes) with nvcc {nvcc_build(nvcc)}")
    if args.only != "cuda13":
        if cuda12_libraries() is None:
            install_cuda12()
        libraries = cuda12_libraries()
        build_cuda12(libraries, FATBIN12)
        RECORD12.write_text(json.dumps(record(FATBIN12, "CUDA 12.8 NVRTC + nvFatbin", cuda12_build_id(libraries)),
                                       indent=2) + "\n")
        print(f"wrote {FATBIN12.relative_to(REPO)} ({FATBIN12.stat().st_size} bytes) with {cuda12_build_id(libraries)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
