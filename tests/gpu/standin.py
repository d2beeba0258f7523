"""A stand-in for an NVIDIA GPU, for machines that have none (CI, developers' laptops): modules
that take the place of `pycuda.driver` and `PyNvVideoCodec`, keep the rules the real ones impose
and check that our code keeps them, with device memory in host RAM so the GPU path's pointer and
pitch arithmetic runs for real.

- Contexts: one primary context per device, current per thread (push/pop). pycuda frees memory
  and destroys streams, events and modules only where their context is current; a release of
  one of ours anywhere else is recorded in `violations` (pycuda would warn and leak it). Making
  or using an object with no context current raises, as CUDA does.
- Memory: `mem_alloc` gives addresses in a sparse address space backed by numpy buffers, with
  gaps between allocations; copies move real bytes and an access outside an allocation raises
  (an illegal address on a GPU). `mem_get_info` reports what is in use.
- Kernels: `module_from_buffer` takes a fatbin (checked for nvcc's magic and the entry names);
  launching the letterbox kernel runs pipeline.s4_infer.gpu_preprocess.letterbox_nv12_reference
  on the planes read through the pointers and pitches given, writing only the pixels the launch
  grid covers: a wrong pointer, pitch, slot or grid gives a wrong input, as on a GPU.
- NVDEC: `Decode` decodes Annex B with FFmpeg's CPU decoder into the decoder's own output
  buffers, reused at every call, tight NV12 (pitch = width, chroma after luma) as PyNvVideoCodec
  2.2.4 writes them. Like its NvDecoder, a sequence larger than the first raises ("Reconfigure
  Not supported when width/height > maxwidth/maxheight") and a smaller one keeps the first
  output size (scaled), as its in-place reconfigure does.

What it cannot check: timing, the GIL, NVDEC's or the driver's own behaviour beyond the above,
and the kernel's own arithmetic (its numpy reference runs instead; tests/gpu compare the real
kernel with that reference on a GPU).
"""
from __future__ import annotations

import bisect
import ctypes
import re
import threading
import traceback
import types
from types import SimpleNamespace

import av
import numpy as np

from pipeline.s4_infer.gpu_preprocess import PAD_VALUE, letterbox_nv12_reference
from pipeline.s5_looks import INNER, _sample

FATBIN_MAGIC = b"\x50\xed\x55\xba"
KERNELS = ("letterbox_nv12_f32", "letterbox_nv12_f16", "sample_nv12_boxes")


class StandInError(Exception):
    """What CUDA would report as an error."""


class _AddressSpace:
    """Device memory: allocations at fake addresses, each a numpy buffer."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._blocks: dict[int, np.ndarray] = {}
        self._next = 0x7F00_0000_0000
        self._lock = threading.Lock()

    def alloc(self, nbytes: int) -> int:
        with self._lock:
            ptr = self._next
            self._next += (nbytes + 511) // 512 * 512 + 4096  # a gap: overruns do not land in a neighbour
            bisect.insort(self._starts, ptr)
            self._blocks[ptr] = np.zeros(nbytes, np.uint8)
            return ptr

    def free(self, ptr: int) -> None:
        with self._lock:
            if ptr not in self._blocks:
                raise StandInError(f"free of {ptr:#x}: not an allocation (double free?)")
            del self._blocks[ptr]
            self._starts.remove(ptr)

    def view(self, ptr: int, nbytes: int) -> np.ndarray:
        """The bytes [ptr, ptr + nbytes), which must lie inside one allocation."""
        with self._lock:
            i = bisect.bisect_right(self._starts, ptr) - 1
            start = self._starts[i] if i >= 0 else None
            block = self._blocks.get(start) if start is not None else None
            if block is None or ptr + nbytes > start + block.size:
                raise StandInError(f"illegal address: {nbytes} bytes at {ptr:#x}")
            return block[ptr - start: ptr - start + nbytes]

    @property
    def used(self) -> int:
        with self._lock:
            return sum(b.size for b in self._blocks.values())


class StandInGpu:
    """One stand-in GPU: `driver` takes pycuda.driver's place, `video_codec` PyNvVideoCodec's."""

    TOTAL = 80 << 30

    def __init__(self, name: str = "Stand-in GPU (no NVIDIA hardware)", driver_version: int = 13000) -> None:
        self.driver_version = driver_version  # what cuDriverGetVersion says: 12060 for a CUDA 12.6 driver
        self.loaded: list[bytes] = []  # every image module_from_buffer took
        self.memory = _AddressSpace()
        self.violations: list[str] = []  # releases of our objects outside their context
        self.launches = 0
        self._tls = threading.local()
        self._lock = threading.Lock()
        self.name = name
        self.primary = None
        self.retains = 0
        self.driver = self._make_driver()
        self.video_codec = self._make_video_codec()

    # ------------------------------------------------------------------ contexts
    def _stack(self) -> list:
        if not hasattr(self._tls, "stack"):
            self._tls.stack = []
        return self._tls.stack

    def current(self):
        """The context current on this thread, or None."""
        stack = self._stack()
        return stack[-1] if stack else None

    def _require_context(self, what: str):
        ctx = self.current()
        if ctx is None or not ctx.valid:
            raise StandInError(f"{what}: no currently active context")
        return ctx

    def _released(self, what: str, ctx) -> None:
        """Check pycuda's rule for a release (free or destroy) of one of our objects."""
        if self.current() is not ctx:
            where = "".join(traceback.format_stack(limit=8)[:-2])
            self.violations.append(f"{what} released on {threading.current_thread().name} without its "
                                   f"context current\n{where}")

    # ------------------------------------------------------------------ pycuda.driver
    def _make_driver(self) -> types.ModuleType:
        gpu = self
        mod = types.ModuleType("pycuda.driver (stand-in)")
        mod.Error = StandInError

        class Context:
            def __init__(self) -> None:
                self.valid, self.handle, self.thread = True, 0x1000, threading.current_thread()

            def push(self) -> None:
                if not self.valid:
                    raise StandInError("cannot push a detached context")
                gpu._stack().append(self)

            @staticmethod
            def pop() -> None:
                if not gpu._stack():
                    raise StandInError("context::pop: cannot pop non-current context")
                gpu._stack().pop()

            def detach(self) -> None:
                gpu.retains -= 1
                if threading.current_thread() is not self.thread:
                    gpu.violations.append("primary context released on another thread than the one "
                                          "that retained it (pycuda skips it there)")
                self.valid = gpu.retains > 0

        class Device:
            def __init__(self, index: int) -> None:
                if index != 0:
                    raise StandInError(f"invalid device ordinal {index}")

            @staticmethod
            def count() -> int:
                return 1

            def name(self) -> str:
                return gpu.name

            def compute_capability(self) -> tuple[int, int]:
                return (9, 0)

            def retain_primary_context(self) -> Context:
                gpu.retains += 1
                gpu.primary = Context()
                return gpu.primary

        class DeviceAllocation:
            def __init__(self, nbytes: int) -> None:
                self._ctx = gpu._require_context("mem_alloc")
                self.ptr, self.nbytes = gpu.memory.alloc(nbytes), nbytes

            def __int__(self) -> int:
                return self.ptr

            def free(self) -> None:
                if self.ptr is None:
                    raise StandInError("device_allocation::free: invalid handle")
                gpu._released("device memory", self._ctx)
                gpu.memory.free(self.ptr)
                self.ptr = None

            def __del__(self) -> None:
                if self.ptr is not None:
                    self.free()

        class HostAllocation(bytearray):
            def __init__(self, nbytes: int) -> None:
                super().__init__(nbytes)
                self._ctx, self.freed = gpu._require_context("pagelocked_empty"), False

            def free(self) -> None:
                gpu._released("pinned memory", self._ctx)
                self.freed = True

            def __del__(self) -> None:
                if not self.freed:
                    self.free()

        class _Destroyed:
            """Streams, events and modules: destroyed when the last reference goes."""

            kind = "object"

            def __init__(self) -> None:
                self._ctx = gpu._require_context(f"create {self.kind}")

            def __del__(self) -> None:
                gpu._released(self.kind, self._ctx)

        class Stream(_Destroyed):
            kind = "stream"
            _next = 0x5000

            def __init__(self, flags: int = 0) -> None:
                super().__init__()
                Stream._next += 16
                self.handle = Stream._next

            def synchronize(self) -> None:
                gpu._require_context("stream synchronize")

            def wait_for_event(self, event) -> None:
                gpu._require_context("stream wait_for_event")
                if not event.recorded:
                    raise StandInError("waiting for an event that was never recorded")

        class Event(_Destroyed):
            kind = "event"

            def __init__(self, flags: int = 0) -> None:
                super().__init__()
                self.recorded = False

            def record(self, stream=None):
                gpu._require_context("event record")
                self.recorded = True
                return self

            def synchronize(self):
                gpu._require_context("event synchronize")
                return self

        class Function:
            def __init__(self, module, name: str) -> None:
                self._module, self._name = module, name

            def __call__(self, *args, block, grid, stream=None, **kwargs) -> None:
                gpu._require_context(f"launch {self._name}")
                if not isinstance(stream, Stream):
                    raise StandInError(f"launch {self._name}: stream must be a pycuda Stream, got {stream!r}")
                gpu.launches += 1
                if self._name == "sample_nv12_boxes":
                    gpu._sample_boxes(args, block, grid)
                else:
                    gpu._letterbox(self._name, args, block, grid)

        class Module(_Destroyed):
            kind = "module"

            def __init__(self, image: bytes) -> None:
                super().__init__()
                if image[:4] != FATBIN_MAGIC:
                    raise StandInError("CUDA_ERROR_INVALID_IMAGE: not a fatbin")
                gpu.loaded.append(image)
                self._names = [n for n in KERNELS if n.encode() in image]

            def get_function(self, name: str) -> Function:
                if name not in self._names:
                    raise StandInError(f"CUDA_ERROR_NOT_FOUND: no kernel {name}")
                return Function(self, name)

        class Memcpy2D:
            def __init__(self) -> None:
                self._src = self._dst = None
                self.src_pitch = self.dst_pitch = self.width_in_bytes = self.height = 0

            def set_src_device(self, ptr: int) -> None:
                self._src = ("device", int(ptr))

            def set_dst_device(self, ptr: int) -> None:
                self._dst = ("device", int(ptr))

            def set_src_host(self, array) -> None:
                self._src = ("host", array)

            def set_dst_host(self, array) -> None:
                self._dst = ("host", array)

            def __call__(self, stream=None, aligned: bool = False) -> None:
                gpu._require_context("memcpy2D")
                for row in range(self.height):
                    data = gpu._read(self._src, row * self.src_pitch, self.width_in_bytes)
                    gpu._write(self._dst, row * self.dst_pitch, data)

        def mem_alloc(nbytes: int) -> DeviceAllocation:
            return DeviceAllocation(int(nbytes))

        def pagelocked_empty(shape, dtype):
            dtype = np.dtype(dtype)
            count = int(np.prod(shape))
            return np.ndarray(shape, dtype, buffer=HostAllocation(max(1, count * dtype.itemsize)))  # .base: it

        def memcpy_dtoh(dest: np.ndarray, src: int) -> None:
            gpu._require_context("memcpy_dtoh")
            flat = dest.reshape(-1).view(np.uint8)
            flat[:] = gpu.memory.view(int(src), flat.size)

        def memcpy_htod(dst: int, src: np.ndarray) -> None:
            gpu._require_context("memcpy_htod")
            data = np.ascontiguousarray(src).reshape(-1).view(np.uint8)
            gpu.memory.view(int(dst), data.size)[:] = data

        mod.init = lambda flags=0: None
        mod.get_driver_version = lambda: gpu.driver_version
        mod.Context, mod.Device, mod.Stream, mod.Event, mod.Memcpy2D = Context, Device, Stream, Event, Memcpy2D
        mod.mem_alloc, mod.pagelocked_empty = mem_alloc, pagelocked_empty
        mod.memcpy_dtoh, mod.memcpy_htod = memcpy_dtoh, memcpy_htod
        mod.memcpy_dtoh_async = lambda dest, src, stream=None: memcpy_dtoh(dest, src)
        def module_from_buffer(buffer, options=(), message_handler=None) -> Module:
            # a driver loads code of a toolkit up to its own major release (minor-version compatibility)
            release = re.search(rb"Cuda compilation tools, release (\d+)\.(\d+)", bytes(buffer))
            if release and gpu.driver_version < int(release.group(1)) * 1000:
                raise StandInError("CUDA_ERROR_UNSUPPORTED_PTX_VERSION: the provided PTX was compiled with "
                                   "an unsupported toolchain")
            return Module(bytes(buffer))

        mod.module_from_buffer = module_from_buffer
        mod.mem_get_info = lambda: (gpu.TOTAL - gpu.memory.used, gpu.TOTAL)
        return mod

    def _read(self, end, offset: int, nbytes: int) -> np.ndarray:
        kind, where = end
        if kind == "device":
            return self.memory.view(where + offset, nbytes).copy()
        return where.reshape(-1).view(np.uint8)[offset:offset + nbytes].copy()

    def _write(self, end, offset: int, data: np.ndarray) -> None:
        kind, where = end
        if kind == "device":
            self.memory.view(where + offset, data.size)[:] = data
        else:
            where.reshape(-1).view(np.uint8)[offset:offset + data.size] = data

    def plane(self, ptr: int, pitch: int, row_bytes: int, rows: int) -> np.ndarray:
        """rows x row_bytes bytes of a pitched plane in device memory."""
        return np.stack([self.memory.view(ptr + r * pitch, row_bytes) for r in range(rows)])

    # ------------------------------------------------------------------ the kernel
    def _letterbox(self, name: str, args, block, grid) -> None:
        (luma, luma_pitch, chroma, chroma_pitch, src_w, src_h, out, slot, dst_w, dst_h, pad_x, pad_y,
         scaled_w, scaled_h, *coeffs, pad) = (a.item() if hasattr(a, "item") else a for a in args)
        cw, ch = (src_w + 1) // 2, (src_h + 1) // 2
        y_plane = self.plane(luma, luma_pitch, src_w, src_h)
        uv_plane = self.plane(chroma, chroma_pitch, 2 * cw, ch).reshape(ch, cw, 2)
        box = SimpleNamespace(scaled_size=(scaled_w, scaled_h), pad_x=pad_x, pad_y=pad_y, src_w=src_w, src_h=src_h)
        color = SimpleNamespace(coefficients=lambda: tuple(coeffs))
        image = np.empty((3, dst_h, dst_w), np.float32)
        letterbox_nv12_reference(y_plane, uv_plane, color, box, image)
        if abs(pad - PAD_VALUE) > 1e-6:  # the reference pads with its own value
            raise StandInError(f"{name}: pad value {pad}, expected {PAD_VALUE}")
        dtype = np.float16 if name.endswith("f16") else np.float32
        plane = dst_w * dst_h
        slot_view = self.memory.view(out + slot * 3 * plane * dtype().itemsize, 3 * plane * dtype().itemsize)
        target = slot_view.view(dtype).reshape(3, dst_h, dst_w)
        covered_w, covered_h = min(dst_w, grid[0] * block[0]), min(dst_h, grid[1] * block[1])
        target[:, :covered_h, :covered_w] = image[:, :covered_h, :covered_w]

    def _sample_boxes(self, args, block, grid) -> None:
        """The looks' kernel: pipeline.s5_looks._sample (its numpy reference) on the NV12 planes and
        float32 boxes read through the pointers and pitches given; samples written only for the
        threads the launch grid covers."""
        (luma, luma_pitch, chroma, chroma_pitch, src_w, src_h, boxes, n, side, inner, out) = (
            a.item() if hasattr(a, "item") else a for a in args)
        if not (1 <= side <= 64 and 0 < inner <= 1):  # the looks' 6 x 0.6, a classifier's crop size x 1.0
            raise StandInError(f"sample_nv12_boxes: grid {side} x {inner} (a grid of 1-64 over 0-1 of the box expected)")
        inner = INNER if abs(inner - INNER) < 1e-6 else inner  # the float32 argument, as the reference's float
        cw, ch = (src_w + 1) // 2, (src_h + 1) // 2
        planes = ("nv12", (self.plane(luma, luma_pitch, src_w, src_h), self.plane(chroma, chroma_pitch, 2 * cw, ch)))
        xyxy = self.memory.view(boxes, 16 * n).view(np.float32).reshape(n, 4).astype(np.float64)
        samples = _sample(planes, xyxy, side, inner).astype(np.uint8).reshape(-1)
        covered = min(n * side * side, grid[0] * block[0])
        self.memory.view(out, samples.size)[:3 * covered] = samples[:3 * covered]

    # ------------------------------------------------------------------ PyNvVideoCodec
    def _make_video_codec(self) -> types.ModuleType:
        gpu = self
        mod = types.ModuleType("PyNvVideoCodec (stand-in)")
        mod.cudaVideoCodec = SimpleNamespace(H264="H264", HEVC="HEVC")
        mod.DisplayDecodeLatencyType = SimpleNamespace(NATIVE=0, LOW=1, ZERO=2)
        mod.VideoPacketFlag = SimpleNamespace(ENDOFPICTURE=1, ENDOFSTREAM=2, TIMESTAMP=4, DISCONTINUITY=8)

        class PacketData:
            def __init__(self) -> None:
                self.bsl_data = self.bsl = self.pts = self.decode_flag = 0

        class DecodedFrame:
            def __init__(self, ptr: int, pts: int) -> None:
                self._ptr, self._pts = ptr, pts

            def GetPtrToPlane(self, index: int) -> int:
                if index != 0:
                    raise StandInError("this stand-in exposes plane 0 only")
                return self._ptr

            def getPTS(self) -> int:
                return self._pts

        class Decoder:
            """NvDecoder's behaviour as read in its source (see the module docstring)."""

            live = 0
            MAX_SIZE = 4096  # H.264 on NVDEC

            def __init__(self, gpuid, codec, cudacontext, cudastream, usedevicememory, latency, **kwargs) -> None:
                if cudacontext != gpu.primary.handle or not cudastream:
                    raise StandInError("cudastream/cudacontext do not match")
                self._codec = av.CodecContext.create({"H264": "h264", "HEVC": "hevc"}[codec], "r")
                self._size = None  # (w, h) of the first sequence: its output size for good
                self._outputs: list[int] = []  # reused at every Decode
                Decoder.live += 1

            def Decode(self, data) -> list:
                gpu._require_context("Decode")
                packet = av.Packet(ctypes.string_at(data.bsl_data, data.bsl))
                packet.pts = data.pts
                try:
                    frames = self._codec.decode(packet)
                except av.error.FFmpegError as exc:
                    raise RuntimeError(f"stand-in NVDEC: {exc}") from None
                out = []
                for i, frame in enumerate(frames):
                    if max(frame.width, frame.height) > self.MAX_SIZE:  # NvDecoder's decode-caps check
                        raise RuntimeError(f"Resolution {frame.width}x{frame.height} not supported on this GPU")
                    if self._size is None:
                        self._size = (frame.width, frame.height)
                    w, h = self._size
                    if frame.width > w or frame.height > h:
                        raise RuntimeError("Reconfigure Not supported when width/height > maxwidth/maxheight")
                    out.append(DecodedFrame(self._output(i, frame.reformat(width=w, height=h, format="nv12")),
                                            frame.pts))
                return out

            def _output(self, index: int, nv12: av.VideoFrame) -> int:
                w, h = nv12.width, nv12.height
                while len(self._outputs) <= index:
                    self._outputs.append(gpu.memory.alloc(w * h * 3 // 2))  # its own, in its own context
                ptr = self._outputs[index]
                y = np.frombuffer(nv12.planes[0], np.uint8).reshape(h, -1)[:, :w]
                uv = np.frombuffer(nv12.planes[1], np.uint8).reshape(h // 2, -1)[:, :w]
                gpu.memory.view(ptr, w * h)[:] = y.reshape(-1)
                gpu.memory.view(ptr + w * h, w * h // 2)[:] = uv.reshape(-1)
                return ptr

            def GetWidth(self) -> int:
                return self._size[0] if self._size else 0

            def GetHeight(self) -> int:
                return self._size[1] if self._size else 0

            def __del__(self) -> None:
                for ptr in self._outputs:
                    gpu.memory.free(ptr)
                Decoder.live -= 1

        mod.PacketData, mod.Decoder = PacketData, Decoder
        mod.CreateDecoder = lambda **kwargs: Decoder(**kwargs)
        mod.__version__ = "stand-in"
        return mod
