"""Core types that flow between stages, and the typed errors they raise.

Stages import from here and never from each other; the Runtime (pipeline.app) wires them.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np


class PipelineError(Exception):
    """Base of every error this package raises on purpose."""


class SourceError(PipelineError):
    """A camera could not be opened or read; carries the camera id."""

    def __init__(self, camera_id: str, message: str, kind: str = "no_video") -> None:
        super().__init__(f"camera {camera_id}: {message}")
        self.camera_id = camera_id
        self.reason = message
        self.kind = kind  # the source_errors label


class EngineError(PipelineError):
    """A model could not be loaded or run."""


class CameraState(enum.Enum):
    """Where one camera's worker is in its connection life cycle."""

    CONNECTING = "connecting"
    STREAMING = "streaming"
    STALLED = "stalled"
    BACKING_OFF = "backing_off"
    FINISHED = "finished"  # a file:// camera read to its end (not reconnected)
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class FrameMeta:
    """What is known about a decoded frame apart from its pixels."""

    camera_id: str
    pts: float  # media time in seconds, from the stream's timestamps
    captured_at: float  # UTC seconds since the epoch
    clock: str  # "rtcp" (camera's sender reports), "receive" (our receive time), "file" or "config" (a recording's start)
    width: int  # source pixels
    height: int
    epoch: int = 0  # the camera's connection number: a new one ends its tracks


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded picture on its way to inference.

    `image` is the decoder's native picture: an `av.VideoFrame` on the CPU path (converted to RGB
    only when it is batched, so frames that get superseded never pay for conversion), a
    `DeviceFrame` (NV12 in GPU memory) on the NVDEC path.
    """

    meta: FrameMeta
    image: Any
    ready_at: float  # time.monotonic() when it was handed over; frame age is measured from it
    reply: DetectReply | None = None  # set on an image of POST /v1/detect: its answer goes there


@dataclass(frozen=True, slots=True)
class DetectReply:
    """Where the detections of a /v1/detect image go, and that request's own filters."""

    confidence: float  # the request's threshold (not below the lane's postprocessing threshold)
    classes: frozenset[int] | None  # class ids to keep; None: all
    deliver: Callable[[tuple[Detection, ...] | Exception], None]  # called once, from the finish stage


# Kr, Kb of each matrix (ITU-R BT.601 / BT.709 / BT.2020 non-constant luminance)
_MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722), "bt2020": (0.2627, 0.0593)}
# FFmpeg's AVColorSpace codes -> our matrix names (unknown codes fall back like FFmpeg: BT.601)
_AV_COLORSPACE = {1: "bt709", 5: "bt601", 6: "bt601", 9: "bt2020", 10: "bt2020"}
_AV_RANGE_FULL = 2  # AVCOL_RANGE_JPEG; 0 (unspecified) and 1 (MPEG) are limited range


@dataclass(frozen=True, slots=True)
class ColorSpec:
    """How a stream's YUV maps to RGB: the matrix and whether Y spans 0-255 or 16-235."""

    matrix: str = "bt601"
    full_range: bool = False

    @classmethod
    def from_av(cls, colorspace: int | None, color_range: int | None) -> ColorSpec:
        """From FFmpeg's codes as PyAV reports them; unspecified means BT.601 limited, as FFmpeg
        (and so the CPU path) assumes."""
        return cls(_AV_COLORSPACE.get(int(colorspace or 2), "bt601"), int(color_range or 0) == _AV_RANGE_FULL)

    def coefficients(self) -> tuple[float, ...]:
        """(y_offset, y_scale, c_scale, r_v, g_u, g_v, b_u) as the kernel takes them."""
        kr, kb = _MATRICES[self.matrix]
        kg = 1 - kr - kb
        if self.full_range:
            y_offset, y_scale, c_scale = 0.0, 1.0, 1.0
        else:
            y_offset, y_scale, c_scale = 16.0, 255 / 219, 255 / 224
        return (y_offset, y_scale, c_scale, 2 * (1 - kr), 2 * kb * (1 - kb) / kg, 2 * kr * (1 - kr) / kg,
                2 * (1 - kb))


@dataclass(eq=False)
class DeviceFrame:
    """A decoded NV12 picture in GPU memory (the GPU path's `Frame.image`)."""

    width: int
    height: int
    time: float | None  # media time in seconds (None: the packet had no timestamp)
    luma_ptr: int
    luma_pitch: int
    chroma_ptr: int
    chroma_pitch: int
    color: ColorSpec
    gpu: int
    lease: Any = field(default=None, repr=False)  # the pool buffer, held until this frame is dropped


@dataclass(frozen=True, slots=True)
class Batch:
    """Frames from one or more cameras that are inferred together."""

    frames: tuple[Frame, ...]


@dataclass(frozen=True, slots=True)
class Letterbox:
    """How a source picture sits inside the model input: scaled by `scale`, then offset."""

    scale: float
    pad_x: int
    pad_y: int
    src_w: int
    src_h: int

    @property
    def scaled_size(self) -> tuple[int, int]:
        """Size (w, h) of the scaled picture before padding."""
        return (max(1, round(self.src_w * self.scale)), max(1, round(self.src_h * self.scale)))

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Map [K, 4] xyxy boxes from model-input pixels to source pixels, clipped to the frame."""
        wide = np.asarray(boxes, np.float64)  # a huge finite float32 box would overflow the division
        out = np.empty(wide.shape, dtype=np.float32)
        out[:, 0::2] = np.clip((wide[:, 0::2] - self.pad_x) / self.scale, 0, self.src_w)
        out[:, 1::2] = np.clip((wide[:, 1::2] - self.pad_y) / self.scale, 0, self.src_h)
        return out


@dataclass(frozen=True, slots=True)
class InputSpec:
    """The shapes a model accepts: fixed or dynamic batch, fixed or dynamic height/width."""

    batch: int | None  # None: any batch size
    height: int | None  # None: dynamic (then `size` is the long side and `stride` the multiple)
    width: int | None
    size: int = 640
    stride: int = 32

    @property
    def dynamic_hw(self) -> bool:
        """True when the model takes any stride-multiple height and width."""
        return self.height is None or self.width is None

    def rect_for(self, src_w: int, src_h: int) -> tuple[int, int]:
        """Smallest allowed input (w, h) that holds the source scaled to fit `size`, with at least
        half a stride of grey across a side shorter than `size`.

        Models trained on square letterboxes see grey beyond the short side's edges; cut to the
        bare stride multiple (1080p at 320: 180 rows in 192) ours found shapes in the bottom edge
        that are not there (precision 0.953 against 0.978 with 224 rows, for 6% more inference;
        docs/BENCHMARKS.md, issue 6). Ultralytics' rectangular validation pads by half a stride too.
        """
        if not self.dynamic_hw:
            return (int(self.width), int(self.height))  # type: ignore[arg-type]
        scale = self.size / max(src_w, src_h)
        w, h = round(src_w * scale), round(src_h * scale)
        return (self._padded(w), self._padded(h))

    def _padded(self, side: int) -> int:
        if side >= self.size:
            return _ceil_to(side, self.stride)
        return _ceil_to(side + self.stride // 2, self.stride)

    def letterbox(self, src_w: int, src_h: int, dst_w: int, dst_h: int) -> Letterbox:
        """Centre the source, scaled to fit `size` and the destination, in a dst_w x dst_h input."""
        scale = min(dst_w / src_w, dst_h / src_h)
        if self.dynamic_hw:
            scale = min(scale, self.size / max(src_w, src_h))
        w, h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
        return Letterbox(scale, (dst_w - w) // 2, (dst_h - h) // 2, src_w, src_h)


def _ceil_to(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


class Detection(NamedTuple):
    """One detected object, with its box in source pixels. Immutable; a NamedTuple rather than a
    frozen dataclass, as it is made once per object and frame on the hot path: 0.4 us against
    1.4 us each (a frozen dataclass sets every field through object.__setattr__)."""

    class_id: int
    label: str
    confidence: float
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2
    track_id: int | None = None  # the object's id within its camera and run (pipeline.s5_track)
    track_class_id: int | None = None  # the track's class, by vote over its sightings (the detector may flicker)
    track_label: str | None = None
    attributes: dict | None = None  # classifiers' labels (pipeline.s5_classify): name -> {label, confidence, track_label}


@dataclass(frozen=True, slots=True)
class FrameResult:
    """The detections for one inferred frame, numbered per camera."""

    meta: FrameMeta
    seq: int
    detections: tuple[Detection, ...]
    tracks: TrackEvents | None = None  # None: the camera is not tracked


@dataclass(frozen=True, slots=True)
class EndedTrack:
    """A track that ended, announced in its camera's next message."""

    track_id: int
    label: str
    first_seen: float  # capture time (UTC seconds) of its first detection
    last_seen: float  # ... and of its last
    detections: int  # frames it was seen in
    reason: str  # "unseen", "reconnect", "time_jump"


@dataclass(frozen=True, slots=True)
class TrackEvents:
    """The tracks that started (their first detection is in this frame) and ended at a frame."""

    started: tuple[int, ...] = ()
    ended: tuple[EndedTrack, ...] = ()
    refound: tuple[int, ...] = ()  # lost tracks (unseen longer than max_age_s) seen again under their ids


@dataclass(frozen=True, slots=True)
class ModelRef:
    """Which model produced a result, as stated in every message."""

    name: str
    sha256: str
    backend: str
