"""Accuracy of the pipeline's detections against scene ground truth: precision, recall, mAP50.

Live, reading the detections topic of a running pipeline for N seconds:
    .venv/bin/python scripts/accuracy.py --bootstrap 127.0.0.1:9092 --topic detections \\
        --truth cam-a=clips/a.truth.json --truth cam-b=clips/b.truth.json --seconds 30
From a captured topic (JSON lines, one detections/v1 message per line):
    .venv/bin/python scripts/accuracy.py --capture detections.jsonl --truth cam-a=clips/a.truth.json

Each message is matched to the truth frame at its `frame.pts` (scripts/scenes.py explains why
that is right). Matching is per class at IoU >= 0.5, highest confidence first; a detection that
matches a `difficult` object (less than half visible) counts neither way, and missing one is no
miss. Precision and recall are at the pipeline's own confidence threshold; mAP50 is the mean over
classes of all-point-interpolated average precision.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts.scenes import Truth, TruthBox  # noqa: E402

IOU = 0.5


def iou(a, b) -> float:
    """Intersection over union of two xyxy boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class FrameMatch:
    """Outcome for one frame: (confidence, class, is_true_positive) per counted detection."""

    scored: list[tuple[float, int, bool]] = field(default_factory=list)
    missed: int = 0
    truths: dict[int, int] = field(default_factory=dict)  # class -> countable objects
    ious: list[float] = field(default_factory=list)  # IoU of each true positive


def match_frame(detections: list[dict], truth: list[TruthBox], threshold: float = IOU) -> FrameMatch:
    """Greedy per-class matching of one frame's detections to its truth."""
    result = FrameMatch()
    taken = [False] * len(truth)
    for t in truth:
        if not t.difficult:
            result.truths[t.class_id] = result.truths.get(t.class_id, 0) + 1
    for det in sorted(detections, key=lambda d: -d["confidence"]):
        best, best_iou = -1, threshold
        for i, t in enumerate(truth):
            if taken[i] or t.class_id != det["class_id"]:
                continue
            overlap = iou(det["bbox"], t.bbox)
            if overlap >= best_iou:
                best, best_iou = i, overlap
        if best >= 0:
            taken[best] = True
            if truth[best].difficult:
                continue  # neither a hit nor a false positive
            result.scored.append((det["confidence"], det["class_id"], True))
            result.ious.append(best_iou)
        else:
            result.scored.append((det["confidence"], det["class_id"], False))
    result.missed = sum(1 for i, t in enumerate(truth) if not taken[i] and not t.difficult)
    return result


@dataclass
class Score:
    """Accumulated accuracy of one camera (or of all)."""

    frames: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    scored: list[tuple[float, int, bool]] = field(default_factory=list)
    truths: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    ious: list[float] = field(default_factory=list)

    def add(self, match: FrameMatch) -> None:
        self.frames += 1
        self.tp += sum(1 for _, _, ok in match.scored if ok)
        self.fp += sum(1 for _, _, ok in match.scored if not ok)
        self.fn += match.missed
        self.scored += match.scored
        self.ious += match.ious
        for cls, n in match.truths.items():
            self.truths[cls] += n

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    def map50(self) -> float:
        """Mean over classes with objects of all-point-interpolated AP at IoU 0.5."""
        aps = []
        for cls, total in self.truths.items():
            if total == 0:
                continue
            hits = sorted(((c, ok) for c, k, ok in self.scored if k == cls), key=lambda x: -x[0])
            tp = np.cumsum([ok for _, ok in hits]) if hits else np.zeros(0)
            fp = np.cumsum([not ok for _, ok in hits]) if hits else np.zeros(0)
            recall = np.concatenate([[0.0], tp / total, [tp[-1] / total if len(tp) else 0.0]])
            precision = np.concatenate([[1.0], tp / np.maximum(tp + fp, 1), [0.0]])
            precision = np.maximum.accumulate(precision[::-1])[::-1]
            aps.append(float(np.sum(np.diff(recall) * precision[1:])))
        return float(np.mean(aps)) if aps else 0.0


def evaluate(messages: list[dict], truths: dict[str, Truth], offset: int = 0) -> dict[str, Score]:
    """Score every message of a camera with truth against the truth frame at its pts."""
    scores: dict[str, Score] = defaultdict(Score)
    for msg in messages:
        truth = truths.get(msg["camera_id"])
        if truth is None:
            continue
        match = match_frame(msg["detections"], truth.at_pts(msg["frame"]["pts"], offset))
        scores[msg["camera_id"]].add(match)
        scores["all"].add(match)
    return dict(scores)


def best_offset(messages: list[dict], truth: Truth, span: int = 10) -> int:
    """The frame offset in [-span, span] whose truth the detections match best (0 when pts maps
    to the right frame): the most true positives, then the highest mean IoU."""
    own = [dict(m, camera_id="cam") for m in messages]

    def quality(offset: int) -> tuple[int, float]:
        score = evaluate(own, {"cam": truth}, offset).get("cam", Score())
        return score.tp, float(np.mean(score.ious)) if score.ious else 0.0

    return max(range(-span, span + 1), key=quality)


def report(scores: dict[str, Score]) -> str:
    """A table of precision, recall and mAP50 per camera."""
    lines = ["| camera | frames | TP | FP | FN | precision | recall | mAP50 |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for cam in sorted(scores, key=lambda c: (c == "all", c)):
        s = scores[cam]
        lines.append(f"| {cam} | {s.frames} | {s.tp} | {s.fp} | {s.fn} | {s.precision:.3f} | {s.recall:.3f} | {s.map50():.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--truth", action="append", required=True, help="CAMERA_ID=CLIP.truth.json")
    parser.add_argument("--capture", type=Path, help="JSON lines of detections/v1 messages")
    parser.add_argument("--bootstrap", help="read live from this broker")
    parser.add_argument("--topic", default="detections")
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    truths = {cam: Truth.load(Path(path)) for cam, _, path in (t.partition("=") for t in args.truth)}
    if args.capture:
        messages = [json.loads(line) for line in args.capture.read_text().splitlines() if line.strip()]
    elif args.bootstrap:
        from scripts.testbed import consume

        records = consume(args.bootstrap, [args.topic], lambda r: False, args.seconds)
        messages = [r.value for r in records]
    else:
        parser.error("give --capture or --bootstrap")
    print(report(evaluate(messages, truths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
