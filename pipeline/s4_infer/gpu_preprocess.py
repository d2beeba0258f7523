"""GPU preprocessing: decoded NV12 surfaces letterboxed straight into the engine's device input.

The CUDA kernel (letterbox_nv12.cu, built ahead into letterbox_nv12.fatbin by
scripts/model/build_kernels.py and loaded once per GPU) reads a frame's NV12 planes where the decoder
left them and writes slot i of the [B, 3, H, W] input buffer that the
engine runs on, in the engine's input type (FP32 or FP16). No picture crosses to the host.

`letterbox_nv12_reference` is the same arithmetic in numpy: the CPU tests check it against known
colours and FFmpeg's own conversion, and the GPU tests check the kernel against it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core import Batch, ColorSpec, InputSpec, Letterbox

if TYPE_CHECKING:
    from pipeline.gpu import Gpu

KERNEL_SOURCE = Path(__file__).with_name("letterbox_nv12.cu")
KERNEL_FATBIN = KERNEL_SOURCE.with_suffix(".fatbin")  # scripts/model/build_kernels.py
PAD_VALUE = 114 / 255  # grey, as YOLO models are trained with; same as the CPU path
BLOCK = (32, 8, 1)

def letterbox_nv12_reference(luma: np.ndarray, chroma: np.ndarray, color: ColorSpec, lb: Letterbox,
                             out: np.ndarray) -> None:
    """The kernel in numpy: luma [h, w] and chroma [ceil(h/2), ceil(w/2), 2] uint8 into `out`
    [3, H, W] (the batch slot), float in [0, 1]."""
    sw, sh = lb.scaled_size
    out[...] = PAD_VALUE
    xs = (np.arange(sw, dtype=np.float32) + 0.5) * np.float32(lb.src_w / sw) - 0.5
    ys = (np.arange(sh, dtype=np.float32) + 0.5) * np.float32(lb.src_h / sh) - 0.5
    y_offset, y_scale, c_scale, r_v, g_u, g_v, b_u = (np.float32(c) for c in color.coefficients())
    yv = (_bilinear(luma.astype(np.float32), xs, ys) - y_offset) * y_scale
    cxs, cys = (xs + 0.5) * 0.5 - 0.5, (ys + 0.5) * 0.5 - 0.5
    u = (_bilinear(chroma[..., 0].astype(np.float32), cxs, cys) - 128) * c_scale
    v = (_bilinear(chroma[..., 1].astype(np.float32), cxs, cys) - 128) * c_scale
    region = out[:, lb.pad_y:lb.pad_y + sh, lb.pad_x:lb.pad_x + sw]
    inv = np.float32(1 / 255)
    region[0] = np.clip((yv + r_v * v) * inv, 0, 1)
    region[1] = np.clip((yv - g_u * u - g_v * v) * inv, 0, 1)
    region[2] = np.clip((yv + b_u * u) * inv, 0, 1)


def _bilinear(plane: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Sample `plane` at every (ys[i], xs[j]), clamped to the edges, as the kernel does."""
    h, w = plane.shape
    xs, ys = np.clip(xs, 0, w - 1), np.clip(ys, 0, h - 1)
    x0, y0 = xs.astype(np.int64), ys.astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (xs - x0)[None, :], (ys - y0)[:, None]
    top = plane[y0][:, x0] * (1 - fx) + plane[y0][:, x1] * fx
    bottom = plane[y1][:, x0] * (1 - fx) + plane[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


@dataclass
class DeviceInput:
    """A prepared batch in device memory: where it is, its shape, and the event that marks it ready."""

    ptr: int
    shape: tuple[int, int, int, int]
    ready: object  # pipeline.gpu.Event recorded on the preprocessing stream after the last kernel


class GpuPreprocessor:
    """Owns one device input buffer and fills it from a Batch of DeviceFrames with the kernel.

    The Runtime makes K + 1 of these per engine, so batch n + 1 is letterboxed while batch n runs
    (the input is double-buffered). Kernels run on a preprocessing stream; the engine's stream
    waits for `DeviceInput.ready` instead of the host waiting.
    """

    def __init__(self, spec: InputSpec, gpu: Gpu, max_batch: int, max_hw: tuple[int, int],
                 fp16: bool) -> None:
        self._spec, self._gpu, self._fp16 = spec, gpu, fp16
        h, w = max_hw
        self._itemsize = 2 if fp16 else 4
        self._buffer = gpu.alloc(max_batch * 3 * h * w * self._itemsize)
        self._capacity = (max_batch, h, w)
        self._kernel = gpu.kernel(KERNEL_FATBIN, "letterbox_nv12_f16" if fp16 else "letterbox_nv12_f32")
        self._stream = gpu.stream()
        self._ready = gpu.event()

    def batch_shape(self, batch: Batch) -> tuple[int, int]:
        """(w, h) of the smallest allowed input that holds every frame of the batch."""
        rects = [self._spec.rect_for(f.meta.width, f.meta.height) for f in batch.frames]
        return max(r[0] for r in rects), max(r[1] for r in rects)

    def __call__(self, batch: Batch) -> tuple[DeviceInput, list[Letterbox]]:
        """Letterbox every frame into this buffer; return it (ready when its event is) and the boxes."""
        w, h = self.batch_shape(batch)
        n = len(batch.frames)
        if n > self._capacity[0] or h * w > self._capacity[1] * self._capacity[2]:
            raise ValueError(f"batch {n}x{h}x{w} exceeds the input buffer {self._capacity}")
        boxes = []
        with self._gpu.current():
            for slot, frame in enumerate(batch.frames):
                lb = self._spec.letterbox(frame.meta.width, frame.meta.height, w, h)
                self._launch(frame.image, slot, w, h, lb)
                boxes.append(lb)
            self._ready.record(self._stream)
        return DeviceInput(self._buffer.ptr, (n, 3, h, w), self._ready), boxes

    def _launch(self, picture, slot: int, w: int, h: int, lb: Letterbox) -> None:
        sw, sh = lb.scaled_size
        grid = ((w + BLOCK[0] - 1) // BLOCK[0], (h + BLOCK[1] - 1) // BLOCK[1], 1)
        i32, f32 = np.int32, np.float32
        self._kernel(
            np.uintp(picture.luma_ptr), i32(picture.luma_pitch), np.uintp(picture.chroma_ptr),
            i32(picture.chroma_pitch), i32(picture.width), i32(picture.height), np.uintp(self._buffer.ptr),
            i32(slot), i32(w), i32(h), i32(lb.pad_x), i32(lb.pad_y), i32(sw), i32(sh),
            *(f32(c) for c in picture.color.coefficients()), f32(PAD_VALUE),
            block=BLOCK, grid=grid, stream=self._stream.raw,
        )

    def close(self) -> None:
        """Free the input buffer, stream and event (inside the GPU's context)."""
        self._kernel = None
        for obj in (self._buffer, self._stream, self._ready):
            obj.close()

