"""Looks: a cheap appearance cue per detection, for the tracker (pipeline.s5_track).

A detection's look is a colour histogram of its box: the picture is sampled on a GRID x GRID
grid over the middle INNER of the box (the object more than the background around it), each
sample's colour taken as luma and chroma (YUV, the decoder's own planes: no full-frame conversion
and no copy), and counted into LOOK_BINS bins: 8 hues x dark/light for coloured samples, 4 greys
for the rest. Two looks compare by their Bhattacharyya coefficient (1: alike, 0: nothing in
common). The tracker keeps an average look per track and uses it where motion cannot decide: two
tracks wanting one box (crossings), and finding a lost track again.

Written here rather than taken from a re-identification model: those need a network per box (a
second model and its batches); a histogram of 36 samples costs a few microseconds a box and is
what the occlusion scenes need (issue 35). The pictures it reads:
- an `av.VideoFrame` (the CPU path): yuv420p, yuvj420p and nv12 read in place, other formats
  converted once to yuv420p;
- a numpy RGB picture [H, W, 3] uint8 (images given to the HTTP API, tests);
- a DeviceFrame (the GPU path: NV12 in GPU memory), given a DeviceSampler: the prebuilt kernel
  `sample_nv12_boxes` (pipeline/s4_infer/letterbox_nv12.cu) reads the samples on the device and
  only they come to the host ([boxes, 36, 3] bytes: one copy of the boxes in and one of the
  samples out per batch), never the picture;
- anything else -> no look (NaN), and the tracker does without: motion only, as before.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

GRID = 6  # samples per side of a box's grid
INNER = 0.6  # the middle share of the box's width and height sampled
HUES = 8
GREYS = 4
LOOK_BINS = 2 * HUES + GREYS
COLOURED = 12.0  # chroma (distance of U, V from grey, 0-128) from which a sample is coloured

_STEPS = (np.arange(GRID) + 0.5) / GRID * INNER + (1 - INNER) / 2  # where on the box, 0-1


def looks(pictures: Sequence[Any], boxes: np.ndarray, owner: np.ndarray,
          device: DeviceSampler | None = None) -> np.ndarray:
    """The look of each box: boxes [M, 4] (xyxy, source pixels) of pictures[owner[k]] (owner
    ascending) -> [M, LOOK_BINS] float64 histograms summing to 1, NaN rows where the picture
    cannot be read (a DeviceFrame without `device`)."""
    out = np.full((len(boxes), LOOK_BINS), np.nan)
    if not len(boxes):
        return out
    samples, known = _samples(pictures, boxes, owner, device, GRID, INNER)
    if known.any():
        out[known] = _histograms(samples[known])
    return out


def crops(pictures: Sequence[Any], boxes: np.ndarray, owner: np.ndarray, size: int,
          device: DeviceSampler | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each box's picture as a classifier takes it: [M, 3, size, size] float32 RGB in [0, 1], the
    whole box resized to size x size by nearest sample (the same sampling as looks', on the host
    from the decoder's planes or on the device by `device`, made with grid=size and inner=1.0: no
    picture is converted or copied whole), and which rows could be read."""
    samples, known = _samples(pictures, boxes, owner, device, size, 1.0)
    # samples run x-major (k = x * size + y, as the kernel writes them): to [M, 3, y, x]
    yuv = samples.reshape(len(boxes), size, size, 3).transpose(0, 3, 2, 1)
    y, u, v = (yuv[:, 0] - 16) * (255 / 219), (yuv[:, 1] - 128) * (255 / 224), (yuv[:, 2] - 128) * (255 / 224)
    rgb = np.stack([y + 1.402 * v, y - 0.344136 * u - 0.714136 * v, y + 1.772 * u], axis=1)  # BT.601, as swscale's
    return np.clip(rgb / 255, 0, 1).astype(np.float32), known


def _samples(pictures: Sequence[Any], boxes: np.ndarray, owner: np.ndarray, device, grid: int,
             inner: float) -> tuple[np.ndarray, np.ndarray]:
    """[M, grid*grid, 3] YUV samples of each box (float64) and which could be read."""
    samples = np.zeros((len(boxes), grid * grid, 3))
    known = np.zeros(len(boxes), bool)
    starts = np.searchsorted(owner, np.arange(len(pictures) + 1))
    on_device = [i for i, p in enumerate(pictures) if hasattr(p, "luma_ptr") and starts[i] < starts[i + 1]]
    if on_device and device is not None:
        spans = [(starts[i], starts[i + 1]) for i in on_device]
        found = device.sample([pictures[i] for i in on_device], [boxes[a:b] for a, b in spans])
        for (a, b), got in zip(spans, found):
            samples[a:b], known[a:b] = got, True
    for i, picture in enumerate(pictures):
        a, b = starts[i], starts[i + 1]
        if a == b or hasattr(picture, "luma_ptr"):
            continue
        planes = _planes(picture)
        if planes is None:
            continue
        samples[a:b] = _sample(planes, boxes[a:b], grid, inner)
        known[a:b] = True
    return samples, known


class DeviceSampler:
    """The samples of boxes of NV12 pictures in one GPU's memory (DeviceFrames), by the prebuilt
    kernel `sample_nv12_boxes`: per batch the boxes go in with one host->device copy, one launch
    per picture, and the samples come out with one device->host copy. Its buffers grow to the
    most boxes a batch had (at most max_batch x model.max_detections). Used by one thread (the
    lane's finish stage)."""

    def __init__(self, gpu, grid: int = GRID, inner: float = INNER) -> None:
        from pipeline.s4_infer.gpu_preprocess import KERNEL_FATBIN

        self._gpu, self.grid, self.inner = gpu, grid, inner
        self._kernel = gpu.kernel(KERNEL_FATBIN, "sample_nv12_boxes")
        self._stream = gpu.stream()
        self._capacity = 0
        self._boxes = self._out = self._host = None

    def sample(self, pictures: Sequence[Any], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """[n, grid*grid, 3] YUV samples (as s5_looks._sample gives) of boxes[i] of pictures[i]."""
        counts = [len(b) for b in boxes]
        total = sum(counts)
        per = self.grid * self.grid
        with self._gpu.current():
            if total > self._capacity:
                self._grow(max(total, 2 * self._capacity, 256))
            flat = np.ascontiguousarray(np.concatenate(boxes), np.float32)
            self._gpu.copy_h2d(self._boxes.ptr, flat)
            first = 0
            for picture, n in zip(pictures, counts):
                self._kernel(np.uintp(picture.luma_ptr), np.int32(picture.luma_pitch), np.uintp(picture.chroma_ptr),
                             np.int32(picture.chroma_pitch), np.int32(picture.width), np.int32(picture.height),
                             np.uintp(self._boxes.ptr + 16 * first), np.int32(n), np.int32(self.grid),
                             np.float32(self.inner),
                             np.uintp(self._out.ptr + 3 * per * first),
                             block=(128, 1, 1), grid=((n * per + 127) // 128, 1, 1), stream=self._stream.raw)
                first += n
            host = self._host.array[:3 * per * total]
            self._gpu.copy_d2h(host, self._out.ptr, host.nbytes, self._stream)
            self._stream.synchronize()
        samples = host.reshape(total, per, 3).astype(np.float64)
        return np.split(samples, np.cumsum(counts)[:-1])

    def _grow(self, capacity: int) -> None:
        for buffer in (self._boxes, self._out, self._host):
            if buffer is not None:
                buffer.close()
        per = self.grid * self.grid
        self._boxes = self._gpu.alloc(16 * capacity)
        self._out = self._gpu.alloc(3 * per * capacity)
        self._host = self._gpu.pinned((3 * per * capacity,), np.uint8)
        self._capacity = capacity

    def close(self) -> None:
        """Free its buffers and stream (inside the GPU's context)."""
        with self._gpu.current():
            for obj in (self._boxes, self._out, self._host, self._stream):
                if obj is not None:
                    obj.close()
        self._kernel = None


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bhattacharyya coefficient of looks a [..., BINS] and b [..., BINS] (broadcast) -> [...]:
    1 for the same colours in the same shares, 0 for none in common, NaN where either is unknown."""
    return np.sqrt(a * b).sum(axis=-1) if a.size and b.size else np.zeros(np.broadcast_shapes(a.shape, b.shape)[:-1])


def _planes(picture: Any):
    """(kind, arrays) to sample from: ("yuv", (Y, U, V)) with chroma at half resolution, ("nv12",
    (Y, UV)), ("rgb", (RGB,)); None when the picture cannot be read on the host."""
    if isinstance(picture, np.ndarray):
        return ("rgb", (picture,)) if picture.ndim == 3 and picture.shape[2] == 3 else None
    fmt = getattr(getattr(picture, "format", None), "name", None)
    if fmt is None or not hasattr(picture, "planes"):
        return None
    if fmt not in ("yuv420p", "yuvj420p", "nv12"):
        picture, fmt = picture.reformat(format="yuv420p"), "yuv420p"
    w, h = picture.width, picture.height
    planes = []
    for k, plane in enumerate(picture.planes):
        rows = h if k == 0 else (h + 1) // 2
        cols = w if k == 0 else (2 * ((w + 1) // 2) if fmt == "nv12" else (w + 1) // 2)
        planes.append(np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:rows, :cols])
    return ("nv12", tuple(planes[:2])) if fmt == "nv12" else ("yuv", tuple(planes[:3]))


def _sample(planes, boxes: np.ndarray, grid: int = GRID, inner: float = INNER) -> np.ndarray:
    """[n, grid*grid, 3] samples (Y, U, V, 0-255) of each box's grid over its middle `inner`."""
    kind, arrays = planes
    height, width = arrays[0].shape[:2]
    steps = _STEPS if (grid, inner) == (GRID, INNER) else (np.arange(grid) + 0.5) / grid * inner + (1 - inner) / 2
    x = boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * steps  # [n, grid]
    y = boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * steps
    xs = np.clip(np.repeat(x, grid, axis=1), 0, width - 1).astype(np.intp)  # [n, grid*grid]: x-major
    ys = np.clip(np.tile(y, grid), 0, height - 1).astype(np.intp)
    if kind == "rgb":
        rgb = arrays[0][ys, xs].astype(np.float64)
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]  # BT.601, as the decoders' YUV
        return np.stack([0.299 * r + 0.587 * g + 0.114 * b, 128 - 0.168736 * r - 0.331264 * g + 0.5 * b,
                         128 + 0.5 * r - 0.418688 * g - 0.081312 * b], axis=-1)
    luma = arrays[0][ys, xs]
    cy, cx = ys // 2, xs // 2
    if kind == "nv12":
        uv = arrays[1]
        cx = np.minimum(cx, uv.shape[1] // 2 - 1)
        cy = np.minimum(cy, uv.shape[0] - 1)
        u, v = uv[cy, 2 * cx], uv[cy, 2 * cx + 1]
    else:
        cu, cv = arrays[1], arrays[2]
        cy, cx = np.minimum(cy, cu.shape[0] - 1), np.minimum(cx, cu.shape[1] - 1)
        u, v = cu[cy, cx], cv[cy, cx]
    return np.stack([luma, u, v], axis=-1).astype(np.float64)


def _histograms(samples: np.ndarray) -> np.ndarray:
    """[n, S, 3] YUV samples -> [n, LOOK_BINS] histograms summing to 1."""
    luma, u, v = samples[..., 0], samples[..., 1] - 128, samples[..., 2] - 128
    chroma = np.hypot(u, v)
    hue = np.floor((np.arctan2(v, u) / (2 * np.pi) + 0.5) * HUES).astype(np.intp) % HUES
    light = (luma >= 128).astype(np.intp)
    grey = np.minimum((luma * GREYS / 256).astype(np.intp), GREYS - 1)
    bins = np.where(chroma >= COLOURED, hue * 2 + light, 2 * HUES + grey)
    n, s = bins.shape
    counts = np.bincount((bins + np.arange(n)[:, None] * LOOK_BINS).ravel(), minlength=n * LOOK_BINS)
    return counts.reshape(n, LOOK_BINS) / s
