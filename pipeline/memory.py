"""What the models and frame pools take of each GPU's memory (or of the CPU's), against a budget.

A node runs several models; each GPU's share is measured, not estimated:
- a model: the device memory that went from free to used while its engine and its lane's buffers
  were made (TensorRT's weights and execution context, our input, output and pinned buffers),
  read with cuMemGetInfo before and after; lanes are built one at a time, so the difference is
  that model's (another process allocating on the same GPU at that moment would be counted too).
  On the CPU path: what the process held before and after the ONNX Runtime session was made and
  ran once at the lane's largest batch, by two counts, the larger kept: the bytes malloc has
  handed out and not taken back (glibc's mallinfo2: memory freed earlier and reused by the load
  counts, where resident memory would not grow) and the resident memory (RSS: what was mapped
  outside malloc). Not counted: the activations of runs beyond the first when a lane runs
  several in parallel;
- the frame pools: each camera's pool at its full depth (what it can take), reserved when the
  camera's first picture gives its size and freed when its decoder closes;
- the CUDA context, and the rest of what the process holds on the GPU (NVDEC's decoders): from
  NVML's figure for this process, where NVML sees it (not inside a container that has its own PID
  namespace: then no `decoder` series is exported).

`gpu.memory_budget_mb` bounds models + frame pools on each GPU (on the CPU path: the models). A start
whose models alone pass it is refused with one line that names each model's share; a camera whose
frame pool would pass it does not stream, and says so in its status, while the others go on.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from pipeline.core import EngineError, SourceError
from pipeline.logs import log_event
from pipeline.metrics import Metrics

log = logging.getLogger(__name__)
MiB = 1 << 20
CPU = "cpu"  # the `gpu` label of the CPU path's series
T = TypeVar("T")


def rss_bytes() -> int:
    """This process's resident memory (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mallinfo2() -> Callable[[], int] | None:
    """Bytes malloc has handed out and not had back (in its arenas and mmapped), from glibc's
    mallinfo2 (2.33+; every arena); None elsewhere (musl, older glibc)."""
    try:
        call = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    call.restype = _MallInfo2

    def held() -> int:
        info = call()
        return info.uordblks + info.hblkhd
    return held


malloc_bytes = _mallinfo2()


def mib(nbytes: float) -> str:
    """Bytes as MiB for a message: "1,234 MiB", "0.5 MiB"."""
    return f"{nbytes / MiB:,.{0 if nbytes >= 10 * MiB else 1}f} MiB"


class MemoryBudget:
    """Per GPU (its index, or "cpu"): each model's measured bytes, the frame pools' reserved bytes,
    the budget over both, and the metrics. Thread-safe (camera threads reserve frame pools)."""

    def __init__(self, metrics: Metrics, budget_mb: float | None,
                 process_bytes: Callable[[int], int | None] = lambda index: None) -> None:
        """`process_bytes(gpu)`: what NVML says this process holds on that GPU, or None."""
        self._metrics, self._process_bytes = metrics, process_bytes
        self.budget = None if budget_mb is None else int(budget_mb * MiB)
        self._models: dict[str, dict[str, int]] = {}  # where -> model -> bytes
        self._frames: dict[str, int] = {}  # where -> bytes reserved by frame pools
        self._context: dict[str, int] = {}  # where -> the process's bytes before any model (NVML)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ models, at start
    def measure(self, gpu, model: str, load: Callable[[], T]) -> T:
        """Run `load` (making a model's engine and buffers) and keep what it took on `gpu` (None: the CPU)."""
        where = _where(gpu)
        if gpu is not None and where not in self._context:
            self._watch_gpu(gpu)
        before = _used(gpu)
        result = load()
        taken = max(0, *(after - first for first, after in zip(before, _used(gpu))))
        with self._lock:
            self._models.setdefault(where, {})[model] = taken
        self._metrics.gpu_memory.labels(where, f"model:{model}").set(taken)
        log_event(log, logging.INFO, "model memory measured", gpu=where, model=model, mib=round(taken / MiB, 1),
                  how="RSS and malloc" if gpu is None else "cuMemGetInfo")
        return result

    def check(self, limits: dict[str, float | None]) -> None:
        """Refuse the start (EngineError, one line) when a GPU's models pass the budget, or a model
        its own `memory_mb` (`limits`: model -> MiB or None)."""
        for where, models in sorted(self._models.items()):
            used = sum(models.values())
            over = [name for name, taken in models.items() if limits.get(name) is not None
                    and taken > limits[name] * MiB]
            if self.budget is None and not over:
                continue
            shares = ", ".join(f"{name} {mib(taken)}" + (f" (over its memory_mb {limits[name]:g})" if name in over
                                                          else "") for name, taken in models.items())
            if over:
                raise EngineError(f"{_name(where)}: models take {shares}: over their own limit; trim those models "
                                  "(a smaller or INT8/FP16 export, a smaller input_size or batching.max_batch) or "
                                  "raise their memory_mb")
            if used > self.budget:
                raise EngineError(
                    f"{_name(where)}: models take {mib(used)}, over gpu.memory_budget_mb {self.budget / MiB:g}: "
                    f"{shares}; trim: fewer models on its cameras, a smaller or INT8/FP16 export, a smaller "
                    "input_size or batching.max_batch, or raise gpu.memory_budget_mb")
        for where in self._models:
            if self.budget is not None:
                self._metrics.gpu_memory_budget.labels(where).set(self.budget)

    # ------------------------------------------------------------------ frame pools, as cameras stream
    def reserve_frames(self, gpu, camera: str, nbytes: int) -> None:
        """Count a camera's frame pool on `gpu`; raise SourceError (kind gpu_memory: naming the pool
        and the budget) when models + pools would pass the budget: that camera does not stream."""
        where = _where(gpu)
        with self._lock:
            models = sum(self._models.get(where, {}).values())
            frames = self._frames.get(where, 0)
            if self.budget is not None and models + frames + nbytes > self.budget:
                raise SourceError(camera, (
                    f"its frame pool ({mib(nbytes)}) would take {_name(where)} to "
                    f"{mib(models + frames + nbytes)}, over gpu.memory_budget_mb {self.budget / MiB:g} (models "
                    f"{mib(models)}, other cameras' pools {mib(frames)}); raise the budget, move cameras to "
                    "another GPU or node, or lower their resolution"), "gpu_memory")
            self._frames[where] = frames + nbytes
            self._metrics.gpu_memory.labels(where, "frames").set(self._frames[where])

    def release_frames(self, gpu, nbytes: int) -> None:
        """A camera's frame pool was freed."""
        where = _where(gpu)
        with self._lock:
            self._frames[where] = max(0, self._frames.get(where, 0) - nbytes)
            self._metrics.gpu_memory.labels(where, "frames").set(self._frames[where])

    def used(self, where: str) -> int:
        """Bytes counted against the budget on `where` (models + frame pools)."""
        with self._lock:
            return sum(self._models.get(where, {}).values()) + self._frames.get(where, 0)

    # ------------------------------------------------------------------ the rest, from NVML
    def _watch_gpu(self, gpu) -> None:
        """Before the first model on a GPU: what the process holds there (its CUDA context) and,
        at each scrape, the rest beyond models and pools (NVDEC's decoders): where NVML sees us."""
        where, index = _where(gpu), gpu.index
        context = self._process_bytes(index)
        self._context[where] = context or 0
        if context is None:
            return
        self._metrics.gpu_memory.labels(where, "context").set(context)

        def rest() -> float:
            now = self._process_bytes(index)
            return float("nan") if now is None else max(0, now - self._context[where] - self.used(where))
        self._metrics.gpu_memory.labels(where, "decoder").set_function(rest)


def _where(gpu) -> str:
    return CPU if gpu is None else str(gpu.index)


def _name(where: str) -> str:
    return "the CPU" if where == CPU else f"GPU {where}"


def _used(gpu) -> tuple[int, ...]:
    """Bytes in use: on a GPU, the device's (cuMemGetInfo); on the CPU, this process's RSS and,
    where glibc tells, what malloc holds."""
    if gpu is None:
        return (rss_bytes(),) if malloc_bytes is None else (rss_bytes(), malloc_bytes())
    free, total = gpu.memory_info()
    return (total - free,)
