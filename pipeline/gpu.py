"""The GPU plumbing shared by decode, preprocessing and the engine: probing, one CUDA primary
context per GPU, device buffers, kernels, and a count of every host<->device transfer.

NVIDIA's modules (pycuda, PyNvVideoCodec, tensorrt) are imported only when a Gpu is made: they
raise at import time without the driver, and the CPU path must never load them. `probe()` answers
"is there a usable GPU?" without importing any of them: it asks the driver library (libcuda)
how many GPUs this process may use, which honours CUDA_VISIBLE_DEVICES and works where
/proc/driver/nvidia is hidden (sandboxed container runtimes). `nvdec_problem()` checks once at
start that NVDEC can work here (the driver's video libraries are often missing: compute-only
driver packages, containers without the `video` capability).
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import subprocess
import sys
import threading
import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core import EngineError

GPU_MODULES = ("pycuda", "PyNvVideoCodec", "tensorrt")
# The prebuilt kernel's builds (scripts/model/build_kernels.py), newest toolkit first: (the least CUDA
# version the driver must support, the file's suffix, the driver that is). A fatbin loads on a
# driver at least as new as the toolkit's major release (CUDA minor-version compatibility).
KERNEL_BUILDS = ((13000, ".fatbin", "R580 (580.65.06) or newer"), (12000, ".cuda12.fatbin", "R525 or newer"))


@dataclass(frozen=True)
class GpuProbe:
    """What this machine offers the GPU path, found without importing NVIDIA's modules."""

    devices: int  # NVIDIA GPUs the driver lets this process use
    modules: dict[str, bool] = field(default_factory=dict)  # importable (installed), by name
    why: str = ""  # what the driver said (why no GPU, when there is none)

    @property
    def missing(self) -> list[str]:
        """GPU modules that are not installed."""
        return [name for name in GPU_MODULES if not self.modules.get(name)]

    @property
    def usable(self) -> bool:
        """A GPU is present and every module the GPU path needs is installed."""
        return self.devices > 0 and not self.missing


def probe(count=None) -> GpuProbe:
    """Count the GPUs this process may use and check which GPU modules are installed."""
    devices, why = (count or cuda_device_count)()
    modules = {name: importlib.util.find_spec(name) is not None for name in GPU_MODULES}
    return GpuProbe(devices, modules, why)


def cuda_device_count(library: str = "libcuda.so.1") -> tuple[int, str]:
    """(GPUs, what the driver said) from the driver library itself: cuInit, cuDeviceGetCount.
    It counts what CUDA_VISIBLE_DEVICES leaves visible; no driver or no GPU is (0, why)."""
    try:
        cuda = ctypes.CDLL(library)
    except OSError as exc:
        return 0, f"no NVIDIA driver library ({exc})"
    code = cuda.cuInit(0)
    if code != 0:
        return 0, f"the NVIDIA driver found no usable GPU (cuInit: CUresult {code}{_CU_ERRORS.get(code, '')})"
    count = ctypes.c_int(0)
    code = cuda.cuDeviceGetCount(ctypes.byref(count))
    if code != 0:
        return 0, f"cuDeviceGetCount failed (CUresult {code})"
    return count.value, f"{count.value} GPU(s) visible to this process"


_CU_ERRORS = {100: ": no CUDA-capable device (or CUDA_VISIBLE_DEVICES hides them all)",
              999: ": unknown error (device nodes missing? a container without the GPU mounted?)",
              3: ": not initialized", 35: ": the driver is older than this CUDA"}
NVDEC_LIBRARIES = ("libnvcuvid.so.1", "libnvidia-encode.so.1")  # PyNvVideoCodec needs both, even to decode
NVDEC_FIX = ("they come with the full NVIDIA driver (not compute-only packages); in a container, set "
             "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video")
_NVDEC_PROBE = """
import json, PyNvVideoCodec as nvc
caps = nvc.GetDecoderCaps(gpuid=0, codec=nvc.cudaVideoCodec.H264,
                          chromaformat=getattr(nvc.cudaVideoChromaFormat, "420"), bitdepth=8)
print(json.dumps(caps))
"""


def nvdec_problem(libraries: tuple[str, ...] = NVDEC_LIBRARIES, timeout: float = 60) -> str | None:
    """None when NVDEC can decode here; else one line naming what is missing and what to do.
    The driver's video libraries are looked for first; then PyNvVideoCodec is imported and asked
    for the GPU's H.264 decode capabilities in a child process (on some CUDA errors PyNvVideoCodec
    ends the process instead of raising)."""
    missing = []
    for name in libraries:
        try:
            ctypes.CDLL(name)
        except OSError:
            missing.append(name)
    if missing:
        return f"NVDEC cannot work here: {', '.join(missing)} not found; {NVDEC_FIX}"
    try:
        result = subprocess.run([sys.executable, "-c", _NVDEC_PROBE], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"NVDEC cannot work here: PyNvVideoCodec did not answer within {timeout:g} s"
    if result.returncode != 0:
        said = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        cause = next((line for line in reversed(said) if "Error" in line or "error" in line), said[-1] if said else "")
        return f"NVDEC cannot work here: PyNvVideoCodec failed ({cause[:300]}); {NVDEC_FIX}"
    try:
        caps = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return f"NVDEC cannot work here: PyNvVideoCodec gave no decoder capabilities ({result.stdout[-200:]!r})"
    if not caps.get("supported"):
        return "NVDEC cannot work here: the GPU's decoder does not take 8-bit 4:2:0 H.264; use gpu.decoder pyav"
    return None


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
               f"no NVIDIA GPU ({found.why})" if not has_gpu else f"GPU present but not installed: {', '.join(missing)}")
    else:
        why = "configured"
    if backend == "tensorrt" and not found.usable:
        raise EngineError(f"model.backend tensorrt needs an NVIDIA GPU and {', '.join(GPU_MODULES)}; "
                          f"this machine has {found.devices} GPU(s){_said(found)} and lacks {', '.join(missing) or 'nothing'} "
                          "(pip install '.[gpu]', TensorRT from NVIDIA); or use backend onnxruntime")
    if decoder == "auto":
        decoder = "nvdec" if backend != "onnxruntime" and nvdec_ready else "pyav"
    elif decoder == "nvdec" and not nvdec_ready:
        raise EngineError("gpu.decoder nvdec needs an NVIDIA GPU, PyNvVideoCodec and pycuda; "
                          f"this machine has {found.devices} GPU(s){_said(found)}; or use gpu.decoder pyav")
    if decoder == "nvdec" and backend == "onnxruntime":
        raise EngineError("gpu.decoder nvdec keeps frames on the GPU; ONNX Runtime (CPU) cannot read them")
    return PathChoice(backend, decoder, why)


def _said(found: GpuProbe) -> str:
    return f" ({found.why})" if found.devices == 0 and found.why else ""


def kernel_build(fatbin: Path, driver_version: int) -> tuple[Path, str]:
    """The build of the kernel `fatbin` (its CUDA 13 file) that a driver supporting CUDA
    `driver_version` (cuDriverGetVersion: 12060 for 12.6) loads, and the driver that build needs."""
    for least, suffix, needs in KERNEL_BUILDS:
        if driver_version >= least:
            return fatbin.with_suffix(suffix), needs
    raise EngineError(f"the NVIDIA driver supports CUDA {_cuda_version(driver_version)}; the GPU path needs a driver "
                      f"for CUDA 12 or newer ({KERNEL_BUILDS[-1][2]}): update the driver, or use gpu.decoder pyav "
                      "and model.backend onnxruntime")


def _cuda_version(driver_version: int) -> str:
    return f"{driver_version // 1000}.{driver_version % 1000 // 10}"


def assign_gpus(camera_gpus: dict[str, int | None], gpus: list[int]) -> dict[str, int]:
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


class GpuObject:
    """A CUDA object of ours (device memory, pinned host memory, a stream, an event, a module),
    released inside its GPU's context whichever thread lets it go: by `close()`, or when the
    last reference is dropped (a safety net, not the plan).

    pycuda frees memory and destroys streams/events only where the owning context is current in
    the calling thread; elsewhere it warns "... in out-of-thread context could not be cleaned up"
    and leaks (src/cpp/cuda.hpp, CUDAPP_CATCH_CLEANUP_ON_DEAD_CONTEXT). So no pycuda object of
    ours is ever released by plain garbage collection on a camera or finish thread."""

    __slots__ = ("raw_holder", "nbytes", "_release", "__weakref__")

    def __init__(self, gpu: Gpu, raw, nbytes: int = 0) -> None:
        self.raw_holder = [raw]  # the only long-lived reference to the pycuda object
        self.nbytes = nbytes
        self._release = weakref.finalize(self, gpu._release, self.raw_holder, nbytes)
        self._release.atexit = False  # at interpreter exit the driver cleans up; pycuda may be gone

    @property
    def raw(self):
        """The pycuda object, for a call that needs it (do not keep it)."""
        if not self.raw_holder:
            raise EngineError("GPU object used after close()")
        return self.raw_holder[0]

    @property
    def closed(self) -> bool:
        """True once released."""
        return not self._release.alive

    def close(self) -> None:
        """Release it now, inside its GPU's context (idempotent)."""
        self._release()


class DeviceMemory(GpuObject):
    """Device memory: `ptr` is its address."""

    __slots__ = ("ptr",)

    def __init__(self, gpu: Gpu, raw, nbytes: int) -> None:
        super().__init__(gpu, raw, nbytes)
        self.ptr = int(raw)

    def __int__(self) -> int:
        return self.ptr


class PinnedMemory(GpuObject):
    """Page-locked host memory; `array` is a numpy view of it (valid until close())."""

    __slots__ = ()

    @property
    def array(self):
        """The numpy array over this memory."""
        return self.raw


class Stream(GpuObject):
    """A CUDA stream."""

    __slots__ = ()

    @property
    def handle(self) -> int:
        """CUstream as an int (for PyNvVideoCodec and TensorRT)."""
        return self.raw.handle

    def synchronize(self) -> None:
        """Wait for everything queued on it (releases the GIL)."""
        self.raw.synchronize()

    def wait_for_event(self, event: Event) -> None:
        """Make later work on this stream wait (on the GPU) for `event`."""
        self.raw.wait_for_event(event.raw)


class Event(GpuObject):
    """A CUDA event."""

    __slots__ = ()

    def record(self, stream: Stream) -> None:
        """Record it on `stream`."""
        self.raw.record(stream.raw)

    def synchronize(self) -> None:
        """Wait until the work before it is done."""
        self.raw.synchronize()


def _destroy(raw) -> None:
    """Free a pycuda object now (its context is current). Memory has an explicit free(); a
    stream, event or module is destroyed when this frame drops the last reference to it."""
    base = getattr(raw, "base", None)  # pinned memory: a numpy array over a HostAllocation
    free = getattr(base if base is not None and hasattr(base, "free") else raw, "free", None)
    if free is not None:
        free()


class Gpu:
    """One GPU: its primary CUDA context (shared with PyNvVideoCodec and TensorRT), the objects
    we make on it, the prebuilt kernels, and every copy. Each thread that uses it enters
    `current()`. One owner makes it and calls `close()`, on the same thread (pycuda releases a
    context only there), after the objects' own owners have closed them."""

    def __init__(self, index: int, transfers: TransferCounter | None = None, *, driver=None,
                 video_codec=None) -> None:
        """`driver` and `video_codec` default to pycuda.driver and PyNvVideoCodec (imported here,
        lazily); tests on machines without a GPU hand in tests/gpu/standin.py's."""
        cuda = driver or importlib.import_module("pycuda.driver")
        cuda.init()
        if not 0 <= index < cuda.Device.count():
            raise EngineError(f"GPU {index} does not exist (this machine has {cuda.Device.count()}); "
                              "fix gpu.devices")
        self.index = index
        self._cuda = cuda
        self._video_codec = video_codec
        self.device = cuda.Device(index)
        self.name = self.device.name()
        self.compute_capability = self.device.compute_capability()
        self.context = self.device.retain_primary_context()
        self.transfers = transfers or TransferCounter()
        self._modules: dict[Path, GpuObject] = {}
        self._owned: weakref.WeakSet[GpuObject] = weakref.WeakSet()
        self._lock = threading.RLock()  # re-entrant: a finalizer may run while this thread holds it
        self._live_bytes = 0
        self._closed = False

    def video_codec(self):
        """PyNvVideoCodec (imported on first use: it raises without the NVIDIA driver)."""
        if self._video_codec is None:
            self._video_codec = importlib.import_module("PyNvVideoCodec")
        return self._video_codec

    @contextlib.contextmanager
    def current(self):
        """Make this GPU's primary context current on the calling thread for the block."""
        self.context.push()
        try:
            yield self
        finally:
            self._cuda.Context.pop()

    def _own(self, obj: GpuObject) -> GpuObject:
        with self._lock:
            if self._closed:
                obj.close()
                raise EngineError(f"GPU {self.index} is closed")
            self._owned.add(obj)
            self._live_bytes += obj.nbytes
        return obj

    def _release(self, holder: list, nbytes: int) -> None:
        """The one place our pycuda objects are freed: inside this GPU's context."""
        with self._lock:
            self._live_bytes -= nbytes
        if holder:
            with self.current():
                _destroy(holder.pop())  # the last reference goes here, with the context current

    def memory_info(self) -> tuple[int, int]:
        """(free, total) bytes of this GPU's memory, all processes (cuMemGetInfo)."""
        with self.current():
            free, total = self._cuda.mem_get_info()
        return int(free), int(total)

    def owned(self) -> tuple[int, int]:
        """(objects, bytes of device and pinned memory) we hold on this GPU now."""
        with self._lock:
            return sum(1 for obj in self._owned if not obj.closed), self._live_bytes

    def alloc(self, nbytes: int) -> DeviceMemory:
        """Device memory; close() it (or drop it) when done: either frees it inside the context."""
        with self.current():
            raw = self._cuda.mem_alloc(max(1, nbytes))
        return self._own(DeviceMemory(self, raw, max(1, nbytes)))

    def pinned(self, shape, dtype) -> PinnedMemory:
        """Page-locked host memory, for the only device->host copy per batch (the outputs)."""
        with self.current():
            raw = self._cuda.pagelocked_empty(shape, dtype)
        return self._own(PinnedMemory(self, raw, raw.nbytes))

    def stream(self) -> Stream:
        """A new CUDA stream."""
        with self.current():
            return self._own(Stream(self, self._cuda.Stream()))

    def event(self) -> Event:
        """A new CUDA event."""
        with self.current():
            return self._own(Event(self, self._cuda.Event()))

    def kernel(self, fatbin: Path, name: str):
        """A kernel from a fatbin built ahead by scripts/model/build_kernels.py (SASS for common GPUs
        plus PTX the driver compiles for newer ones), loaded once per GPU: the CUDA 13 build on a
        driver for CUDA 13, else the CUDA 12.8 one (`fatbin` names the CUDA 13 file). Nothing is
        compiled here: a service has neither nvcc on its PATH nor a writable compiler cache."""
        with self._lock:
            module = self._modules.get(fatbin)
        if module is None:
            driver = self._cuda.get_driver_version()
            image, needs = kernel_build(fatbin, driver)
            with self.current():
                try:
                    raw = self._cuda.module_from_buffer(image.read_bytes())
                except self._cuda.Error as exc:
                    raise EngineError(f"cannot load the prebuilt kernel {image.name} on {self.name} (the driver "
                                      f"supports CUDA {_cuda_version(driver)}; this build needs {needs}): {exc}; "
                                      "update the NVIDIA driver") from None
            module = self._own(GpuObject(self, raw))
            with self._lock:
                module = self._modules.setdefault(fatbin, module)
        return module.raw.get_function(name)

    def copy_2d_d2d(self, dst: int, dst_pitch: int, src: int, src_pitch: int, width_bytes: int,
                    rows: int, stream: Stream) -> None:
        """Device->device copy of a pitched plane (decoder surface -> our frame buffer)."""
        copy = self._cuda.Memcpy2D()
        copy.set_src_device(src)
        copy.set_dst_device(dst)
        copy.src_pitch, copy.dst_pitch = src_pitch, dst_pitch
        copy.width_in_bytes, copy.height = width_bytes, rows
        copy(stream.raw)
        self.transfers.add("d2d", width_bytes * rows)

    def copy_d2h(self, host, src: int, nbytes: int, stream: Stream) -> None:
        """Device->host copy into pinned memory (engine outputs only)."""
        self._cuda.memcpy_dtoh_async(host, src, stream.raw)
        self.transfers.add("d2h", nbytes)

    def copy_h2d(self, dst: int, host) -> None:
        """Host->device copy, synchronous (pageable memory: the CPU-preprocessed input of the
        pyav + tensorrt mix and /v1/detect images, never a camera frame on the NVDEC path)."""
        self._cuda.memcpy_htod(dst, host)
        self.transfers.add("h2d", host.nbytes)

    def close(self) -> None:
        """Free whatever of ours is left on this GPU (inside the context), then release the
        primary context. Call it on the thread that made this Gpu."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            left = [obj for obj in self._owned if not obj.closed]
            self._modules.clear()
        for obj in left:
            obj.close()
        # pycuda's detach of a primary context (not current here) pushes it, releases it and does
        # not pop it (cuDevicePrimaryCtxRelease never pops): this thread, the loop's at shutdown,
        # keeps a released context current. Harmless there; popping it needs the raw driver API.
        self.context.detach()
