"""The live preview: the latest picture of each camera with its detections drawn, for people.

Nothing is kept or encoded while nobody looks: the finish stage hands pictures over only while a
viewer asked within the last `viewer_ttl_s` seconds (one clock read per batch otherwise), and a
JPEG is made when a viewer asks for it, once per new picture, at most `width` pixels wide.
CPU-path pictures (`av.VideoFrame`) are scaled and converted only then; GPU-path pictures stay in
GPU memory and are not previewed (the page shows their state, fps and latency).
"""
from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core import Frame, FrameResult

_PALETTE = [(255, 56, 56), (72, 249, 10), (0, 194, 255), (255, 157, 151), (255, 178, 29), (207, 210, 49),
            (146, 204, 23), (61, 219, 134), (26, 147, 52), (0, 212, 187), (44, 153, 168), (52, 69, 147)]


@dataclass
class _Latest:
    image: Any  # the decoder's picture, referenced (not copied) until a newer one replaces it
    result: FrameResult
    inferred_at: float  # wall clock when its detections were ready
    jpeg: bytes | None = None


class PreviewHub:
    """Holds each camera's latest picture and detections while someone watches; draws on demand."""

    def __init__(self, viewer_ttl_s: float = 10.0, width: int = 640,
                 clock: Callable[[], float] = time.monotonic, on_encode: Callable[[], None] | None = None) -> None:
        self._ttl = viewer_ttl_s
        self._on_encode = on_encode or (lambda: None)
        self._width = width
        self._clock = clock
        self._viewed_at = float("-inf")
        self._latest: dict[str, _Latest] = {}
        self._lock = threading.Lock()
        self.encoded = 0  # JPEGs made: 0 while nobody looks

    @property
    def watching(self) -> bool:
        """True while a viewer asked within the last `viewer_ttl_s` seconds."""
        return self._clock() - self._viewed_at < self._ttl

    def touch(self) -> None:
        """A viewer is looking: keep pictures from now on."""
        self._viewed_at = self._clock()

    def offer(self, frames: Sequence[Frame], results: Sequence[FrameResult]) -> None:
        """Called by the finish stage with a batch's frames and results (ignored while nobody looks)."""
        if not self.watching:
            if self._latest:
                with self._lock:
                    self._latest.clear()  # release the pictures once viewers leave
            return
        now = time.time()
        with self._lock:
            for frame, result in zip(frames, results):
                # a GPU picture holds a decoder pool buffer: never kept (it is not previewable anyway)
                image = frame.image if _previewable(frame.image) else None
                self._latest[result.meta.camera_id] = _Latest(image, result, now)

    def summary(self) -> dict[str, dict]:
        """Per camera: seq, detections and capture -> inference latency of the latest picture."""
        self.touch()
        with self._lock:
            latest = dict(self._latest)
        return {cam: {"seq": e.result.seq, "detections": len(e.result.detections),
                      "latency_ms": round(1000 * (e.inferred_at - e.result.meta.captured_at), 1),
                      "snapshot": _previewable(e.image)}
                for cam, e in latest.items()}

    def jpeg(self, camera_id: str) -> bytes | None:
        """The latest picture of a camera as an annotated JPEG; None when there is none (yet)."""
        self.touch()
        with self._lock:
            entry = self._latest.get(camera_id)
        if entry is None or not _previewable(entry.image):
            return None
        if entry.jpeg is None:  # once per picture, however many viewers
            entry.jpeg = self._encode(entry)
            self.encoded += 1
            self._on_encode()
        return entry.jpeg

    def forget(self, camera_id: str) -> None:
        """A camera was removed."""
        with self._lock:
            self._latest.pop(camera_id, None)

    def _encode(self, entry: _Latest) -> bytes:
        from PIL import Image, ImageDraw, ImageFont  # only when someone looks

        meta = entry.result.meta
        width = min(self._width, meta.width)
        height = max(2, round(meta.height * width / meta.width) // 2 * 2)
        # one swscale thread: automatic threads would start slice threads kept with the picture
        rgb = entry.image.reformat(format="rgb24", width=width, height=height, threads=1).to_ndarray()
        picture = Image.fromarray(np.ascontiguousarray(rgb))
        draw = ImageDraw.Draw(picture)
        font = ImageFont.load_default(size=max(11, width // 45))
        sx, sy = width / meta.width, height / meta.height
        for det in entry.result.detections:
            color = _PALETTE[det.class_id % len(_PALETTE)]
            x1, y1, x2, y2 = det.bbox
            box = (x1 * sx, y1 * sy, x2 * sx, y2 * sy)
            draw.rectangle(box, outline=color, width=2)
            text = f"{det.label}{'' if det.track_id is None else f' #{det.track_id}'} {det.confidence:.2f}"
            left, top, right, bottom = draw.textbbox((box[0], box[1]), text, font=font)
            lift = bottom - top + 2
            draw.rectangle((left - 1, top - lift - 1, right + 1, bottom - lift + 1), fill=color)
            draw.text((box[0], box[1] - lift), text, fill=(0, 0, 0), font=font)
        out = io.BytesIO()
        picture.save(out, format="JPEG", quality=80)
        return out.getvalue()


def _previewable(image: Any) -> bool:
    return hasattr(image, "to_ndarray")  # av.VideoFrame (CPU path); GPU pictures are not
