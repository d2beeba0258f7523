"""A classifier on a detector's detections (a cascade): `models.NAME.kind: classify`, `on: {model,
classes}`. Run in the detector's lane's finish stage, after tracking, once a batch: the boxes of
the chosen classes in every frame of the batch are cut from the decoded pictures
(pipeline.s5_looks.crops: the decoder's planes sampled on the host, or on the GPU by the sampling
kernel: only the crops come to the host, never a picture), classified in batches, and each
detection gets `attributes.NAME = {label, confidence, track_label}`: `track_label` is the vote of
the track's sightings so far (their probabilities summed), so a track's attribute is stable and
alert rules can use it.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.core import EngineError, Frame, FrameResult
from pipeline.logs import log_event
from pipeline.s5_looks import crops

log = logging.getLogger(__name__)


@dataclass
class Classifier:
    """One loaded classifier and what it runs on."""

    name: str  # its name under `models`: the attribute's name in messages
    engine: object  # pipeline.s4_infer.Engine
    class_ids: frozenset[int] | None  # the detector's classes it classifies (None: all)
    sampler: object = None  # a DeviceSampler (grid = input size, inner 1.0) on the GPU path


class Cascade:
    """The classifiers of one detector's lane; used by its finish thread only."""

    def __init__(self, classifiers: list[Classifier], observe: Callable[[float], None] = lambda s: None,
                 max_batch: int = 64) -> None:
        self._classifiers = classifiers
        self._observe, self._max_batch = observe, max_batch
        self._votes: dict[str, dict[str, dict[int, np.ndarray]]] = {c.name: {} for c in classifiers}
        self._failures = 0
        for c in classifiers:
            spec = c.engine.info.input_spec
            if spec.height is None or spec.width is None or spec.height != spec.width:
                raise EngineError(f"classifier {c.name}: its input must be a fixed square [N, 3, S, S]; "
                                  f"{c.engine.info.name} takes {spec.height} x {spec.width}")

    def __call__(self, frames: Sequence[Frame], results: list[FrameResult]) -> list[FrameResult]:
        """The results with each chosen detection's attributes added (frames[k] gave results[k])."""
        start = time.monotonic()
        for c in self._classifiers:
            try:
                results = self._one(c, frames, results)
            except Exception as exc:  # the detections are published without this classifier's attribute
                self._failures += 1
                if self._failures in (1, 10, 100) or self._failures % 1000 == 0:
                    log_event(log, logging.ERROR, "classifier failed; detections published without its label",
                              model=c.name, failures=self._failures, error=repr(exc))
        self._observe(time.monotonic() - start)
        return results

    def forget(self, camera_id: str) -> None:
        """A camera left the lane: its tracks' votes go."""
        for votes in self._votes.values():
            votes.pop(camera_id, None)

    def close(self) -> None:
        """Free the classifiers' engines and samplers."""
        for c in self._classifiers:
            c.engine.close()
            if c.sampler is not None:
                c.sampler.close()

    def _one(self, c: Classifier, frames: Sequence[Frame], results: list[FrameResult]) -> list[FrameResult]:
        picks = [(k, j) for k, result in enumerate(results) for j, d in enumerate(result.detections)
                 if c.class_ids is None or _class_of(d) in c.class_ids]
        votes = self._votes[c.name]
        for result in results:  # ended tracks' votes go, whether or not this frame has a pick
            if result.tracks is not None and result.tracks.ended:
                camera = votes.get(result.meta.camera_id)
                for ended in result.tracks.ended:
                    if camera is not None:
                        camera.pop(ended.track_id, None)
        if not picks:
            return results
        boxes = np.array([results[k].detections[j].bbox for k, j in picks], np.float64)
        owner = np.array([k for k, _ in picks], np.int64)
        size = c.engine.info.input_spec.height
        images, known = crops([f.image for f in frames], boxes, owner, size, c.sampler)
        probs = np.full((len(picks), len(c.engine.info.labels)), np.nan, np.float32)
        rows = np.flatnonzero(known)
        for first in range(0, len(rows), self._max_batch):
            chunk = rows[first:first + self._max_batch]
            probs[chunk] = _probabilities(np.asarray(c.engine.infer(np.ascontiguousarray(images[chunk]))))
        labels = c.engine.info.labels
        changed: dict[int, list] = {}
        for (k, j), p in zip(picks, probs):
            if np.isnan(p).any():
                continue  # a picture the host cannot read (a DeviceFrame without a sampler): no attribute
            d = results[k].detections[j]
            best = int(p.argmax())
            voted = None
            if d.track_id is not None:
                tally = votes.setdefault(results[k].meta.camera_id, {})
                total = tally[d.track_id] = tally.get(d.track_id, 0) + p
                voted = labels[int(total.argmax())]
            attributes = dict(d.attributes or {})
            attributes[c.name] = {"label": labels[best], "confidence": round(float(p[best]), 4), "track_label": voted}
            changed.setdefault(k, list(results[k].detections))[j] = d._replace(attributes=attributes)
        return [r if k not in changed else FrameResult(r.meta, r.seq, tuple(changed[k]), r.tracks)
                for k, r in enumerate(results)]


def _class_of(detection) -> int:
    """The class a detection is taken as: its track's (voted) where tracked, else the detector's."""
    return detection.track_class_id if detection.track_class_id is not None else detection.class_id


def _probabilities(out: np.ndarray) -> np.ndarray:
    """[N, C] probabilities from a classifier's output: as they are where rows already are (in
    [0, 1], summing to 1), else the softmax of the logits."""
    out = out.reshape(len(out), -1).astype(np.float32)
    if out.min() >= 0 and np.allclose(out.sum(axis=1), 1, atol=1e-3):
        return out
    shifted = np.exp(out - out.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
