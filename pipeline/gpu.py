"""The GPU plumbing shared by decode, preprocessing and the engine: probing, one CUDA primary
context per GPU, device buffers, kernels, and a count of every host<->device transfer.

NVIDIA's modules (pycuda, PyNvVideoCodec, tensorrt) are imported only when a Gpu is made: they
raise at import time without the driver, and the CPU path must never load them. `probe()` answers
"is there a usable GPU?" without importing any of them.
"""
from __future__ import annotations

import contextlib
import glob
import importlib.util
import threading
import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core import EngineError

GPU_MODULES = ("pycuda", "PyNvVideoCodec", "tensorrt")


@dataclass(frozen=True)
class GpuProbe:
    """What this machine offers the GPU path, found without importing NVIDIA's modules."""

    devices: int  # NVIDIA GPUs the driver exposes
    modules: dict[str, bool] = field(default_factory=dict)  # importable (installed), by name

    @property
    def missing(self) -> list[str]:
        """GPU modules that are not installed."""
        return [name for name in GPU_MODULES if not self.modules.get(name)]

    @property
    def usable(self) -> bool:
        """A GPU is present and every module the GPU path needs is installed."""
        return self.devices > 0 and not self.missing


def probe(driver_root: str = "/proc/driver/nvidia/gpus") -> GpuProbe:
    """Count the GPUs the NVIDIA driver lists and check which GPU modules are installed."""
    devices = len(glob.glob(f"{driver_root}/*"))
    modules = {name: importlib.util.find_spec(name) is not None for name in GPU_MODULES}
    return GpuProbe(devices, modules)


@dataclass(frozen=True)
class PathChoice:
    """Which engine backend and decoder the daemon runs, and why."""

    backend: str  # "onnxruntime", "tensorrt" or "stub"
    decoder: str  # "pyav" or "nvdec"
    why: str

    @property
    def on_gpu(self) -> bool:
        """Whether GPUs are used at all (then cameras are placed on them, one lane per GPU)."""
        return self.backend == "tensorrt" or self.decoder == "nvdec"


def choose_path(backend: str, decoder: str, found: GpuProbe) -> PathChoice:
    """Resolve `model.backend` and `gpu.decoder` (either may be "auto") against this machine.
    Raises EngineError when an explicit choice cannot run here, saying what is missing."""
    has_gpu = found.devices > 0
    missing = found.missing
    nvdec_ready = has_gpu and found.modules.get("PyNvVideoCodec") and found.modules.get("pycuda")
    if backend == "auto":
        backend = "tensorrt" if found.usable else "onnxruntime"
        why = ("GPU and TensorRT, PyNvVideoCodec, pycuda present" if found.usable else
               "no NVIDIA GPU" if not has_gpu else f"GPU present but not installed: {', '.join(missing)}")
    else:
        why = "configured"
    if backend == "tensorrt" and not found.usable:
        raise EngineError(f"model.backend tensorrt needs an NVIDIA GPU and {', '.join(GPU_MODULES)}; "
                          f"this machine has {found.devices} GPU(s) and lacks {', '.join(missing) or 'nothing'} "
                          "(pip install '.[gpu]', TensorRT from NVIDIA); or use backend onnxruntime")
    if decoder == "auto":
        decoder = "nvdec" if backend != "onnxruntime" and nvdec_ready else "pyav"
    elif decoder == "nvdec" and not nvdec_ready:
        raise EngineError("gpu.decoder nvdec needs an NVIDIA GPU, PyNvVideoCodec and pycuda; "
                          f"this machine has {found.devices} GPU(s); or use gpu.decoder pyav")
    if decoder == "nvdec" and backend == "onnxruntime":
        raise EngineError("gpu.decoder nvdec keeps frames on the GPU; ONNX Runtime (CPU) cannot read them")
    return PathChoice(backend, decoder, why)


def place_cameras(camera_gpus: dict[str, int | None], gpus: list[int]) -> dict[str, int]:
    """Camera -> GPU: cameras with `gpu:` set go there; the others are spread evenly, in order,
    each to the GPU with the fewest cameras so far (ties: the lowest index)."""
    if not gpus:
        raise EngineError("no GPU to place cameras on")
    unknown = {cam: g for cam, g in camera_gpus.items() if g is not None and g not in gpus}
    if unknown:
        listed = ", ".join(f"{cam} (gpu {g})" for cam, g in sorted(unknown.items()))
        raise EngineError(f"cameras set to GPUs this machine does not use: {listed}; GPUs in use: {gpus} "
                          "(fix the cameras' gpu: or gpu.devices)")
    load = Counter({g: 0 for g in gpus})
    placed = {cam: g for cam, g in camera_gpus.items() if g is not None}
    load.update(placed.values())
    for cam, g in camera_gpus.items():
        if g is None:
            target = min(gpus, key=lambda i: (load[i], i))
            placed[cam] = target
            load[target] += 1
    return placed


class TransferCounter:
    """Bytes and calls of every copy our code makes between host and device, by direction.

    All copies on the GPU path go through Gpu's copy methods, so this is the proof of zero-copy:
    per frame, only detections (engine outputs) may go device->host and nothing host->device."""

    def __init__(self, on_copy=None) -> None:
        self._lock = threading.Lock()
        self._on_copy = on_copy  # (direction, nbytes) -> None, e.g. a metric
        self.bytes: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    def add(self, direction: str, nbytes: int) -> None:
        """Count one copy ("h2d", "d2h" or "d2d")."""
        with self._lock:
            self.bytes[direction] += nbytes
            self.calls[direction] += 1
        if self._on_copy is not None:
            self._on_copy(direction, nbytes)

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """direction -> (calls, bytes)."""
        with self._lock:
            return {d: (self.calls[d], self.bytes[d]) for d in ("h2d", "d2h", "d2d")}


class Gpu:
    """One GPU: its primary CUDA context (shared with PyNvVideoCodec and TensorRT), allocations,
    streams, compiled kernels and copies. Each thread that uses it enters `current()`."""

    def __init__(self, index: int, transfers: TransferCounter | None = None) -> None:
        import pycuda.driver as cuda

        cuda.init()
        if not 0 <= index < cuda.Device.count():
            raise EngineError(f"GPU {index} does not exist (this machine has {cuda.Device.count()}); "
                              "fix gpu.devices")
        self.index = index
        self._cuda = cuda
        self.device = cuda.Device(index)
        self.name = self.device.name()
        self.compute_capability = self.device.compute_capability()
        self.context = self.device.retain_primary_context()
        self.transfers = transfers or TransferCounter()
        self._modules: dict[Path, object] = {}
        self._lock = threading.Lock()
        weakref.finalize(self, self.context.detach)

    @contextlib.contextmanager
    def current(self):
        """Make this GPU's primary context current on the calling thread for the block."""
        self.context.push()
        try:
            yield self
        finally:
            self._cuda.Context.pop()

    def alloc(self, nbytes: int):
        """Device memory (freed when the returned object is dropped)."""
        with self.current():
            return self._cuda.mem_alloc(max(1, nbytes))

    def pinned(self, shape, dtype):
        """Page-locked host memory, for the only device->host copy per batch (the outputs)."""
        with self.current():
            return self._cuda.pagelocked_empty(shape, dtype)

    def stream(self):
        """A new CUDA stream."""
        with self.current():
            return self._cuda.Stream()

    def event(self):
        """A new CUDA event."""
        with self.current():
            return self._cuda.Event()

    def kernel(self, source: Path, name: str):
        """A kernel from a .cu file, compiled once per process per GPU (NVRTC/nvcc via pycuda)."""
        from pycuda.compiler import SourceModule

        with self._lock, self.current():
            module = self._modules.get(source)
            if module is None:
                module = SourceModule(source.read_text(), no_extern_c=True,
                                      options=["-std=c++17", "--use_fast_math"])
                self._modules[source] = module
            return module.get_function(name)

    def copy_2d_d2d(self, dst: int, dst_pitch: int, src: int, src_pitch: int, width_bytes: int,
                    rows: int, stream) -> None:
        """Device->device copy of a pitched plane (decoder surface -> our frame buffer)."""
        copy = self._cuda.Memcpy2D()
        copy.set_src_device(src)
        copy.set_dst_device(dst)
        copy.src_pitch, copy.dst_pitch = src_pitch, dst_pitch
        copy.width_in_bytes, copy.height = width_bytes, rows
        copy(stream)
        self.transfers.add("d2d", width_bytes * rows)

    def copy_d2h(self, host, src: int, nbytes: int, stream) -> None:
        """Device->host copy into pinned memory (engine outputs only)."""
        self._cuda.memcpy_dtoh_async(host, src, stream)
        self.transfers.add("d2h", nbytes)

    def copy_h2d(self, dst: int, host) -> None:
        """Host->device copy, synchronous (pageable memory: only the CPU-preprocessed input of the
        pyav + tensorrt mix, never on the NVDEC path)."""
        self._cuda.memcpy_htod(dst, host)
        self.transfers.add("h2d", host.nbytes)
