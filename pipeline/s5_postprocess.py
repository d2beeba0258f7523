"""Postprocess: pure functions that turn YOLO outputs into detections in source pixels.

Layouts (detected by `detect_layout`, or named in config):
- "yolov8": [B, 4+nc, N], rows cx, cy, w, h, then one score per class (YOLOv8, YOLO11)
- "yolov5": [B, N, 5+nc], columns cx, cy, w, h, objectness, then class scores
- "end2end": [B, N, 6], columns x1, y1, x2, y2, score, class (YOLOv10, YOLO26; NMS-free)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.core import Detection, EngineError, Letterbox

LAYOUTS = ("yolov8", "yolov5", "end2end")
_MAX_WH = 7680.0  # class offset for class-aware NMS; larger than any input side


class LayoutError(EngineError, ValueError):
    """The model's output does not match a known YOLO layout."""


def detect_layout(shape: Sequence, num_classes: int | None, metadata: dict[str, str]) -> str:
    """Guess the output layout from its shape ([B, a, b], dims may be symbolic) and metadata."""
    if len(shape) != 3:
        raise LayoutError(f"expected a 3-D output [batch, ., .], got {list(shape)}")
    a = shape[1] if isinstance(shape[1], int) else None
    b = shape[2] if isinstance(shape[2], int) else None
    if b == 6 and metadata.get("end2end", "").lower() == "true":
        return "end2end"
    if num_classes and a == 4 + num_classes:
        return "yolov8"
    if num_classes and b == 5 + num_classes:
        return "yolov5"
    if b == 6:
        return "end2end"
    if a is not None and (b is None or a < b):
        return "yolov8"
    if b is not None and (a is None or b < a):
        return "yolov5"
    raise LayoutError(f"cannot tell the YOLO layout of output {list(shape)}; set model.layout")


def candidates(output: np.ndarray, layout: str, confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's raw output -> (boxes xyxy [K,4], scores [K], classes [K]) above `confidence`.
    Rows with a non-finite box, score or class are dropped (a broken model must not publish NaN)."""
    _check_shape(output, layout)
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN rows are dropped just below
        boxes, scores, classes = _raw_candidates(output, layout, confidence)
        finite = (np.isfinite(boxes).all(axis=1) & np.isfinite(scores) & np.isfinite(classes)
                  & (classes >= 0) & (classes < 2**31))
    return boxes[finite], scores[finite], classes[finite].astype(np.int64)


def _check_shape(output: np.ndarray, layout: str) -> None:
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if output.ndim != 2:
        raise LayoutError(f"one image's output must be 2-D, got shape {list(output.shape)}; check model.layout")
    needed = {"yolov8": (0, 5, "4 box rows and a row per class"), "yolov5": (1, 5, "4 box columns and objectness"),
              "end2end": (1, 6, "x1, y1, x2, y2, score, class columns")}[layout]
    axis, least, what = needed
    if output.shape[axis] < least:
        raise LayoutError(f"{layout} output needs {what}, got shape {list(output.shape)}; check model.layout")


def _raw_candidates(output: np.ndarray, layout: str, confidence: float):
    if layout == "yolov8":
        scores_all = output[4:]
        classes = scores_all.argmax(axis=0)
        scores = scores_all[classes, np.arange(scores_all.shape[1])]
        keep = scores >= confidence
        return _xywh_to_xyxy(output[:4, keep].T), scores[keep], classes[keep]
    if layout == "yolov5":
        obj = output[:, 4]
        keep = obj >= confidence
        rows = output[keep]
        cls_scores = rows[:, 5:]
        classes = cls_scores.argmax(axis=1) if cls_scores.shape[1] else np.zeros(len(rows), np.int64)
        scores = rows[:, 4] * (cls_scores[np.arange(len(rows)), classes] if cls_scores.shape[1] else 1)
        keep = scores >= confidence
        return _xywh_to_xyxy(rows[keep, :4]), scores[keep], classes[keep]
    keep = output[:, 4] >= confidence  # end2end
    rows = output[keep]
    return rows[:, :4].astype(np.float32), rows[:, 4], rows[:, 5]


def _xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    out = np.empty_like(xywh, dtype=np.float32)
    half_w, half_h = xywh[:, 2] / 2, xywh[:, 3] / 2
    out[:, 0] = xywh[:, 0] - half_w
    out[:, 1] = xywh[:, 1] - half_h
    out[:, 2] = xywh[:, 0] + half_w
    out[:, 3] = xywh[:, 1] + half_h
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices of kept boxes, best score first."""
    order = np.argsort(-scores, kind="stable")
    # float64: a broken model's huge (finite) float32 coordinates overflow areas in float32 (fuzz test)
    boxes = boxes.astype(np.float64, copy=False)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(0, x2 - x1) * np.maximum(0, y2 - y1)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        union = areas[i] + areas[rest] - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def class_aware_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    """NMS that only suppresses boxes of the same class (boxes shifted apart per class)."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    # in float64, as the batch's NMS: float32 sums at 15,360 px and more (class 2 on) round to 0.002 px,
    # enough to move an IoU at the threshold to the other side (the batch kept a box this dropped)
    shifted = boxes.astype(np.float64) + (classes.astype(np.float64) * _MAX_WH)[:, None]
    return nms(shifted, scores, iou)


def detections_for_image(
    output: np.ndarray,
    layout: str,
    letterbox: Letterbox,
    labels: Sequence[str],
    confidence: float,
    iou: float,
    max_detections: int,
) -> tuple[Detection, ...]:
    """Detections of one image, in source pixels, best first."""
    boxes, scores, classes = candidates(output, layout, confidence)
    if layout != "end2end":
        order = class_aware_nms(boxes, scores, classes, iou)
    else:
        order = np.argsort(-scores, kind="stable")
    order = order[:max_detections]
    if order.size == 0:
        return ()
    mapped = letterbox.to_source(boxes[order])
    result = []
    for box, score, cls in zip(mapped, scores[order], classes[order]):
        x1, y1, x2, y2 = (round(float(v), 1) for v in box)
        if x2 <= x1 or y2 <= y1:
            continue  # nothing of the box is inside the frame
        cls = int(cls)
        label = labels[cls] if 0 <= cls < len(labels) else f"class_{cls}"
        result.append(Detection(cls, label, round(float(score), 4), (x1, y1, x2, y2)))
    return tuple(result)


# ---------------------------------------------------------------------- a whole batch at once
@dataclass(frozen=True, slots=True)
class BatchDetections:
    """A batch's detections as arrays, in source pixels, each image's best first: the rows of image
    i are `image == i`. What postprocessing hands on: per batch, not per object."""

    image: np.ndarray  # [M] int64: the image of the batch each row belongs to
    boxes: np.ndarray  # [M, 4] float64 xyxy, rounded to 0.1 px
    scores: np.ndarray  # [M] float64, rounded to 4 places
    classes: np.ndarray  # [M] int64
    labels: tuple[str, ...]

    def for_image(self, index: int) -> tuple[Detection, ...]:
        """One image's detections as Detection objects (for what still takes them)."""
        rows = np.flatnonzero(self.image == index)
        labels, n = self.labels, len(self.labels)
        return tuple(Detection(int(c), labels[c] if 0 <= c < n else f"class_{c}", float(s), tuple(b))
                     for b, s, c in zip(self.boxes[rows].tolist(), self.scores[rows].tolist(),
                                        self.classes[rows].tolist()))


def detections_for_batch(outputs: np.ndarray, layout: str, letterboxes: Sequence[Letterbox], labels: Sequence[str],
                         confidence: float, iou: float, max_detections: int) -> BatchDetections:
    """The detections of every image of a batch ([B, ...] output), in source pixels, best first:
    the same as detections_for_image on each image, with one set of array operations for the
    whole batch (the class is looked for only where the best class score passes; NMS for every
    image at once, as Cluster-NMS: Zheng et al. 2021, the same result as greedy NMS)."""
    if outputs.ndim != 3 or len(outputs) != len(letterboxes):
        raise LayoutError(f"a batch's output must be [batch, ., .] for {len(letterboxes)} images, "
                          f"got {list(outputs.shape)}")
    if len(outputs):
        _check_shape(outputs[0], layout)
    with np.errstate(invalid="ignore", over="ignore"):
        image, boxes, scores, classes = _batch_candidates(outputs, layout, confidence)
        finite = (np.isfinite(boxes).all(axis=1) & np.isfinite(scores) & np.isfinite(classes)
                  & (classes >= 0) & (classes < 2**31))
    image, boxes, scores, classes = image[finite], boxes[finite], scores[finite], classes[finite].astype(np.int64)
    order = np.lexsort((-scores, image))  # by image, best first (stable: ties keep the anchors' order)
    image, boxes, scores, classes = image[order], boxes[order], scores[order], classes[order]
    if layout != "end2end" and len(image):
        keep = _cluster_nms(image, boxes + (classes.astype(np.float64) * _MAX_WH)[:, None], iou, len(outputs))
        image, boxes, scores, classes = image[keep], boxes[keep], scores[keep], classes[keep]
    rank = np.arange(len(image)) - np.searchsorted(image, image)  # place within its image
    first = rank < max_detections
    image, boxes, scores, classes = image[first], boxes[first], scores[first], classes[first]
    mapped = np.round(_to_source(boxes, image, letterboxes), 1)
    visible = (mapped[:, 2] > mapped[:, 0]) & (mapped[:, 3] > mapped[:, 1])  # some of the box is in the frame
    return BatchDetections(image[visible], mapped[visible], np.round(scores[visible].astype(np.float64), 4),
                           classes[visible], tuple(labels))


def _batch_candidates(outputs: np.ndarray, layout: str, confidence: float):
    """(image [K], boxes xyxy [K, 4] float64, scores [K], classes [K]) above `confidence`."""
    if layout == "yolov8":  # [B, 4+nc, N]: the best score first, the class only where it passes
        scores_all = outputs[:, 4:, :]
        best = scores_all.max(axis=1)
        image, anchor = np.nonzero(best >= confidence)
        classes = scores_all[image, :, anchor].argmax(axis=1)
        return image, _xywh_to_xyxy(outputs[image, :4, anchor]).astype(np.float64), best[image, anchor], classes
    if layout == "yolov5":  # [B, N, 5+nc]
        image, row = np.nonzero(outputs[:, :, 4] >= confidence)
        rows = outputs[image, row]
        cls_scores = rows[:, 5:]
        classes = cls_scores.argmax(axis=1) if cls_scores.shape[1] else np.zeros(len(rows), np.int64)
        scores = rows[:, 4] * (cls_scores[np.arange(len(rows)), classes] if cls_scores.shape[1] else 1)
        keep = scores >= confidence
        return image[keep], _xywh_to_xyxy(rows[keep, :4]).astype(np.float64), scores[keep], classes[keep]
    image, row = np.nonzero(outputs[:, :, 4] >= confidence)  # end2end [B, N, 6]
    rows = outputs[image, row]
    return image, rows[:, :4].astype(np.float64), rows[:, 4], rows[:, 5]


def _cluster_nms(image: np.ndarray, boxes: np.ndarray, iou: float, batch: int) -> np.ndarray:
    """Indices kept by greedy NMS in each image, for rows sorted by image then score: IoU of each
    image's boxes with each other, then keep a box when no kept box before it overlaps it by more
    than `iou`, repeated until nothing changes (each round fixes at least the next box in order)."""
    counts = np.bincount(image, minlength=batch)
    most = int(counts.max())
    rank = np.arange(len(image)) - np.searchsorted(image, image)
    padded = np.zeros((batch, most, 4))
    padded[image, rank] = boxes
    valid = np.zeros((batch, most), bool)
    valid[image, rank] = True
    x1, y1, x2, y2 = (padded[..., k] for k in range(4))
    areas = np.maximum(0, x2 - x1) * np.maximum(0, y2 - y1)
    w = np.maximum(0, np.minimum(x2[:, :, None], x2[:, None, :]) - np.maximum(x1[:, :, None], x1[:, None, :]))
    h = np.maximum(0, np.minimum(y2[:, :, None], y2[:, None, :]) - np.maximum(y1[:, :, None], y1[:, None, :]))
    inter = w * h
    union = areas[:, :, None] + areas[:, None, :] - inter
    overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    before = np.triu(np.ones((most, most), bool), 1)  # [i, j]: i comes before j in its image
    suppresses = (overlap > iou) & before[None] & valid[:, :, None] & valid[:, None, :]
    keep = valid.copy()
    for _ in range(most):
        again = valid & ~(suppresses & keep[:, :, None]).any(axis=1)
        if np.array_equal(again, keep):
            break
        keep = again
    return np.flatnonzero(keep[image, rank])


def _to_source(boxes: np.ndarray, image: np.ndarray, letterboxes: Sequence[Letterbox]) -> np.ndarray:
    """Letterbox.to_source for rows of many images at once."""
    geometry = np.array([(lb.scale, lb.pad_x, lb.pad_y, lb.src_w, lb.src_h) for lb in letterboxes],
                        np.float64).reshape(-1, 5)[image]
    scale, pad_x, pad_y, src_w, src_h = (geometry[:, k] for k in range(5))
    out = np.empty(boxes.shape, np.float64)
    out[:, 0::2] = np.clip((boxes[:, 0::2] - pad_x[:, None]) / scale[:, None], 0, src_w[:, None])
    out[:, 1::2] = np.clip((boxes[:, 1::2] - pad_y[:, None]) / scale[:, None], 0, src_h[:, None])
    return out.astype(np.float32).astype(np.float64)  # as Letterbox.to_source: float32 source pixels
