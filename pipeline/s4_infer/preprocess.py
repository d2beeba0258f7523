"""CPU preprocessing: letterbox decoded pictures straight into a reusable float32 batch buffer.

YUV pictures are scaled and converted to RGB in one FFmpeg (swscale) call at the letterboxed
size, so full-resolution RGB is never made, then written into the batch slot and normalised.
"""
from __future__ import annotations

import numpy as np

from pipeline.core import Batch, InputSpec, Letterbox

PAD_VALUE = 114  # grey, as YOLO models are trained with


class CpuPreprocessor:
    """Turns a Batch of `av.VideoFrame`s into a [B, 3, H, W] float32 input and their letterboxes."""

    def __init__(self, spec: InputSpec, interpolation: str = "AREA") -> None:
        self._spec = spec
        self._interpolation = interpolation
        self._staging: np.ndarray | None = None  # uint8 [B, H, W, 3], grown on demand
        self._input: np.ndarray | None = None  # float32 [B, 3, H, W]

    def batch_shape(self, batch: Batch) -> tuple[int, int]:
        """(w, h) of the smallest allowed input that holds every frame of the batch."""
        rects = [self._spec.rect_for(f.meta.width, f.meta.height) for f in batch.frames]
        return max(r[0] for r in rects), max(r[1] for r in rects)

    def __call__(self, batch: Batch) -> tuple[np.ndarray, list[Letterbox]]:
        """Letterbox every frame into the batch buffer; return the input view and letterboxes."""
        w, h = self.batch_shape(batch)
        n = self._spec.batch or len(batch.frames)
        staging, inp = self._buffers(n, h, w)
        staging.fill(PAD_VALUE)
        boxes = []
        for i, frame in enumerate(batch.frames):
            lb = self._spec.letterbox(frame.meta.width, frame.meta.height, w, h)
            sw, sh = lb.scaled_size
            rgb = frame.image.to_ndarray(
                format="rgb24", width=sw, height=sh, interpolation=self._interpolation
            )
            staging[i, lb.pad_y : lb.pad_y + sh, lb.pad_x : lb.pad_x + sw] = rgb
            boxes.append(lb)
        np.multiply(staging.transpose(0, 3, 1, 2), np.float32(1 / 255), out=inp)
        return inp, boxes

    def _buffers(self, n: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        staging = self._staging
        if staging is None or staging.shape[0] < n or staging.shape[1:3] != (h, w):
            rows = max(n, self._spec.batch or 0, 0 if staging is None else staging.shape[0])
            self._staging = np.empty((rows, h, w, 3), np.uint8)
            self._input = np.empty((rows, 3, h, w), np.float32)
        return self._staging[:n], self._input[:n]  # type: ignore[index]
