"""POST /v1/detect on the cameras' engine: an image goes into a lane's batcher (its own bounded
request queue, pipeline.s3_batch) and is inferred in a batch with the cameras' frames by the
same engine; the finish stage answers it through its DetectReply. No second model is loaded.

On the CPU path the image becomes an RGB `av.VideoFrame` (CPU preprocessing, as a camera's); on
the NVDEC path it is converted to NV12 and uploaded to the lane's GPU (one host->device copy,
counted in gpu_copy_bytes_total{direction="h2d"}) so the letterbox kernel reads it like a camera's.
"""
from __future__ import annotations

import asyncio
import re
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.api.errors import ApiError
from pipeline.config import DetectConfig
from pipeline.core import ColorSpec, Detection, DetectReply, DeviceFrame, Frame, FrameMeta, ModelRef

REQUEST_CAMERA = "@detect"  # FrameMeta.camera_id of a request's image (never a camera's: ids start alnum)


@dataclass
class DetectTarget:
    """What a lane offers /v1/detect."""

    put: Callable[[Frame, float], bool]  # the batcher's put_request
    waiting: Callable[[], int]  # its requests_waiting
    model: ModelRef
    labels: Sequence[str]
    confidence: float  # the model's default threshold
    gpu: Any = None  # pipeline.gpu.Gpu when the lane's frames are NV12 on the GPU
    floor: float | None = None  # NMS in the engine: it keeps no box below this score


class DetectService:
    """Answers /v1/detect requests through the lanes' batchers."""

    def __init__(self, targets: Callable[[], list[DetectTarget]], config: DetectConfig,
                 observe: Callable[[float], None] = lambda seconds: None) -> None:
        self._targets = targets
        self._config = config
        self._observe = observe  # detect latency, for the metrics

    def labels(self) -> Sequence[str]:
        """The model's class names (none before it is loaded)."""
        targets = self._targets()
        return targets[0].labels if targets else ()

    def check_classes(self, classes: str | None) -> None:
        """ApiError 400 when `classes` names no class of the model (before it is loaded: unchecked)."""
        labels = self.labels()
        if labels:
            _classes(classes, labels)

    def waiting(self) -> int:
        """Requests waiting for inference now, over all lanes."""
        return sum(t.waiting() for t in self._targets())

    async def detect(self, rgb: np.ndarray, confidence: float | None, classes: str | None) -> dict:
        """Detections of one RGB image, as the Kafka messages describe a frame's."""
        started = time.monotonic()
        targets = self._targets()
        if not targets:
            raise ApiError(503, "not_ready", "the model is not loaded yet", {"Retry-After": "2"})
        target = min(targets, key=lambda t: t.waiting())
        threshold = target.confidence if confidence is None else confidence
        if target.floor is not None and threshold < target.floor:  # said in the answer's "confidence"
            threshold = target.floor
        wanted = _classes(classes, target.labels)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future = loop.create_future()
        frame = await asyncio.to_thread(_frame, rgb, target.gpu, DetectReply(threshold, wanted, _deliver_to(loop, answer)))
        deadline = time.monotonic() + self._config.timeout_s
        if not target.put(frame, deadline):
            raise ApiError(503, "busy", f"{self._config.queue} images are already waiting for inference "
                           "(api.detect.queue): try again shortly", {"Retry-After": "1"})
        del frame  # the batcher holds it; a GPU image's device memory goes when it is done with
        try:
            result = await asyncio.wait_for(answer, self._config.timeout_s)
        except TimeoutError:
            raise ApiError(504, "timeout", f"not inferred within {self._config.timeout_s:g} s (api.detect.timeout_s): "
                           "the engine is overloaded") from None
        if isinstance(result, Exception):
            raise ApiError(500, "inference_failed", f"inference failed: {type(result).__name__}: {result}")
        seconds = time.monotonic() - started
        self._observe(seconds)
        height, width = rgb.shape[:2]
        return {
            "image": {"width": width, "height": height},
            "detections": [{"class_id": d.class_id, "label": d.label, "confidence": d.confidence,
                            "bbox": _clipped(d.bbox, width, height)} for d in result],
            "model": {"name": target.model.name, "sha256": target.model.sha256, "backend": target.model.backend},
            "confidence": threshold,
            "seconds": round(seconds, 4),
        }


def _clipped(bbox, width: int, height: int) -> list[float]:
    x1, y1, x2, y2 = bbox
    return [min(x1, width), min(y1, height), min(x2, width), min(y2, height)]


def classes_pattern(labels: Sequence[str]) -> str:
    """The `classes` parameter's language, for the OpenAPI document and the check of a request
    alike (so the two cannot disagree): comma-separated labels or class ids, spaces around them."""
    items = "|".join(re.escape(item) for item in sorted([*labels, *map(str, range(len(labels)))], key=len, reverse=True))
    return f"^ *(?:{items})? *(?:, *(?:{items})? *)*$"


def _classes(text: str | None, labels: Sequence[str]) -> frozenset[int] | None:
    """Class ids from "car,person" or "2,0" (the language of classes_pattern: spaces around an item,
    empty items skipped); ApiError 400 naming the first unknown item and the known labels."""
    if text is None or not text.strip(" "):
        return None
    ids = {label: i for i, label in enumerate(labels)} | {str(i): i for i in range(len(labels))}
    items = [part.strip(" ") for part in text.split(",")]
    unknown = [item for item in items if item and item not in ids]
    if unknown:
        raise ApiError(400, "bad_classes", f"unknown class {unknown[0]!r}; this model knows: {', '.join(labels)} "
                       f"(or ids 0-{len(labels) - 1}), comma-separated")
    return frozenset(ids[item] for item in items if item)


def _deliver_to(loop: asyncio.AbstractEventLoop, future: asyncio.Future) -> Callable:
    """A thread-safe, first-call-wins setter of `future` (the finish stage calls it)."""
    def set_once(result) -> None:
        if not future.done():
            future.set_result(result)

    def deliver(result: tuple[Detection, ...] | Exception) -> None:
        try:
            loop.call_soon_threadsafe(set_once, result)
        except RuntimeError:  # the loop has closed: nobody waits any more
            pass
    return deliver


def _frame(rgb: np.ndarray, gpu, reply: DetectReply) -> Frame:
    """The image as a camera frame of the lane: av.VideoFrame, or NV12 uploaded to `gpu` (an odd
    side repeated once: NV12 is 4:2:0; the answer clips boxes to the image)."""
    import av

    if gpu is not None:
        rgb = np.pad(rgb, ((0, rgb.shape[0] % 2), (0, rgb.shape[1] % 2), (0, 0)), mode="edge")
    height, width = rgb.shape[:2]
    meta = FrameMeta(REQUEST_CAMERA, 0.0, time.time(), "receive", width, height)
    picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    image = picture if gpu is None else _upload_nv12(picture, gpu)
    return Frame(meta, image, time.monotonic(), reply)


def _upload_nv12(picture, gpu) -> DeviceFrame:
    """RGB -> NV12 (swscale: BT.601, limited range) -> one device buffer, tight rows."""
    width, height = picture.width, picture.height
    nv12 = picture.reformat(format="nv12")
    luma = np.frombuffer(nv12.planes[0], np.uint8).reshape(height, -1)[:, :width]
    chroma = np.frombuffer(nv12.planes[1], np.uint8).reshape(height // 2, -1)[:, :width]
    host = np.ascontiguousarray(np.concatenate([luma, chroma]))
    buffer = gpu.alloc(host.nbytes)
    with gpu.current():
        gpu.copy_h2d(buffer.ptr, host)
    frame = DeviceFrame(width, height, 0.0, buffer.ptr, width, buffer.ptr + width * height, width,
                        ColorSpec("bt601", False), gpu.index)
    weakref.finalize(frame, buffer.close).atexit = False  # freed (inside the context) once inferred
    return frame
