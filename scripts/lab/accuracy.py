"""Accuracy of the pipeline's detections against scene ground truth: precision, recall, mAP50.

On fresh test scenes (seeds 9101+, never used in training), starting everything itself: scenes,
GStreamer's RTSP server, a local broker and the daemon with the given model:
    .venv/bin/python -m scripts.lab.accuracy --run --model engines/shapes-yolov8n.onnx --input-size 320
Live, reading the detections topic of a running pipeline for N seconds:
    .venv/bin/python -m scripts.lab.accuracy --bootstrap 127.0.0.1:9092 --topic detections \\
        --truth cam-a=clips/a.truth.json --truth cam-b=clips/b.truth.json --seconds 30
From a captured topic (JSON lines, one detections/v1 message per line):
    .venv/bin/python -m scripts.lab.accuracy --capture detections.jsonl --truth cam-a=clips/a.truth.json

Each message is matched to the truth frame at its `frame.pts` (scripts/lab/scenes.py explains why
that is right). Matching is per class at IoU >= 0.5, highest confidence first; a detection that
matches a `difficult` object (less than half visible) counts neither way, and missing one is no
miss. Precision and recall are at the pipeline's own confidence threshold; mAP50 is the mean over
classes of all-point-interpolated average precision of the published detections, so it only sees
detections above that threshold (run with a low --confidence for the model's full curve).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scripts.lab.scenes import Truth, TruthBox

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


TEST_CAMERAS = {"acc-720p": (9101, 1280, 720), "acc-1080p": (9102, 1920, 1080), "acc-4x3": (9103, 1024, 768)}
# the first validation scenes of scripts/model/train_detector.py (same seeds and sizes): for choosing the
# operating threshold, never the test scenes
VALIDATION_CAMERAS = {"val-720p": (5000, 1280, 720), "val-1080p": (5001, 1920, 1080), "val-4x3": (5002, 1024, 768)}


def threshold_sweep(messages: list[dict], truths: dict[str, Truth],
                    thresholds=tuple(round(0.05 * i, 2) for i in range(1, 19))) -> list[tuple[float, Score]]:
    """Overall score at each confidence threshold (messages must have been published below them)."""
    sweep = []
    for threshold in thresholds:
        kept = [dict(m, detections=[d for d in m["detections"] if d["confidence"] >= threshold])
                for m in messages]
        sweep.append((threshold, evaluate(kept, truths)["all"]))
    return sweep


def best_f1_threshold(sweep: list[tuple[float, Score]]) -> float:
    """The threshold with the highest F1 (the lowest one on ties)."""
    def f1(score: Score) -> float:
        p, r = score.precision, score.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    return max(sweep, key=lambda item: (round(f1(item[1]), 4), -item[0]))[0]


def scene_clip(folder: Path, seed: int, width: int, height: int, frames: int = 200) -> Path:
    """A scene of scripts/lab/scenes.py and its truth, made once in `folder`."""
    from scripts.lab.scenes import Scene, truth_path

    clip = Path(folder) / f"scene-{seed}-{width}x{height}-{frames}-fixed-gop.mp4"  # fixed GOP since scene-cut was turned off
    if not clip.exists() or not truth_path(clip).exists():
        Scene(seed, width, height, frames=frames).write(clip)
    return clip


def run_on_scenes(model: Path, workdir: Path, broker, per_camera: int, cameras=TEST_CAMERAS,
                  input_size: int = 320, fps: float = 5, frames: int = 200, confidence: float = 0.25,
                  timeout: float = 120, source: dict | None = None) -> tuple[list[dict], dict[str, Truth]]:
    """Serve generated scenes over RTSP, run the daemon on them with `model`, and return the
    detection messages (until every camera has `per_camera`) and each camera's truth."""
    import uuid

    from scripts.lab.broker import consume
    from scripts.lab.cameras import RtspServer
    from scripts.lab.common import free_port
    from scripts.lab.daemons import Daemon, daemon_config
    from scripts.lab.scenes import truth_path

    workdir.mkdir(parents=True, exist_ok=True)
    clips = {cam: scene_clip(workdir, seed, width, height, frames) for cam, (seed, width, height) in cameras.items()}
    truths = {cam: Truth.load(truth_path(clip)) for cam, clip in clips.items()}
    topic = f"acc-{uuid.uuid4().hex[:8]}"
    with RtspServer(clips) as rtsp:
        config = daemon_config(
            workdir / f"{topic}.yaml", {"path": model, "input_size": input_size, "confidence": confidence},
            broker.bootstrap, [(cam, rtsp.url(cam), fps) for cam in cameras], topic=topic,
            status_topic=f"{topic}-status", metrics_port=free_port(), **({"source": source} if source else {}),
        )
        daemon = Daemon(config, workdir / f"{topic}.log")
        daemon.start()
        try:
            def enough(records) -> bool:
                counts: dict[str, int] = defaultdict(int)
                for r in records:
                    counts[r.key] += 1
                return all(counts[cam] >= per_camera for cam in cameras)

            records = consume(broker.bootstrap, [topic], enough, timeout)
        finally:
            code = daemon.stop()
    if code != 0:
        raise RuntimeError(f"daemon exited with {code}; see {daemon.log_path}")
    mislabeled = [r for r in records if r.key != r.value["camera_id"]]
    if mislabeled:
        raise AssertionError(f"{len(mislabeled)} messages whose key is not their camera_id")
    return [r.value for r in records], truths


def report(scores: dict[str, Score]) -> str:
    """A table of precision, recall and mAP50 per camera."""
    lines = ["| camera | frames | TP | FP | FN | precision | recall | mAP50 |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for cam in sorted(scores, key=lambda c: (c == "all", c)):
        s = scores[cam]
        lines.append(f"| {cam} | {s.frames} | {s.tp} | {s.fp} | {s.fn} | {s.precision:.3f} | {s.recall:.3f} | {s.map50():.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="run the daemon on fresh test scenes")
    parser.add_argument("--model", type=Path, default=Path("engines/shapes-yolov8n.onnx"))
    parser.add_argument("--input-size", type=int, default=320)
    parser.add_argument("--per-camera", type=int, default=100, help="--run: messages per camera")
    parser.add_argument("--scenes", choices=("test", "validation"), default="test",
                        help="--run: test scenes, or validation scenes (for choosing a threshold)")
    parser.add_argument("--sweep", action="store_true", help="also score every threshold from 0.05 to 0.9")
    parser.add_argument("--confidence", type=float, default=0.25,
                        help="--run: the daemon's threshold (mAP50 only sees detections above it)")
    parser.add_argument("--truth", action="append", default=[], help="CAMERA_ID=CLIP.truth.json")
    parser.add_argument("--capture", type=Path, help="JSON lines of detections/v1 messages")
    parser.add_argument("--bootstrap", help="read live from this broker")
    parser.add_argument("--topic", default="detections")
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--no-deblock", action="store_true", help="--run: skip H.264 deblocking (source.deblock)")
    args = parser.parse_args()
    truths = {cam: Truth.load(Path(path)) for cam, _, path in (t.partition("=") for t in args.truth)}
    if args.run:
        from scripts.lab.broker import Broker
        from scripts.lab.common import REPO

        with Broker() as broker:
            cameras = TEST_CAMERAS if args.scenes == "test" else VALIDATION_CAMERAS
            messages, truths = run_on_scenes(args.model, REPO / ".cache" / "accuracy", broker,
                                             args.per_camera, cameras, input_size=args.input_size,
                                             confidence=args.confidence, timeout=60 + args.per_camera,
                                             source={"deblock": False} if args.no_deblock else None)
    elif not truths:
        parser.error("give --truth CAMERA=FILE (or --run)")
    elif args.capture:
        messages = [json.loads(line) for line in args.capture.read_text().splitlines() if line.strip()]
    elif args.bootstrap:
        from scripts.lab.broker import consume

        records = consume(args.bootstrap, [args.topic], lambda r: False, args.seconds)
        messages = [r.value for r in records]
    else:
        parser.error("give --capture or --bootstrap")
    print(report(evaluate(messages, truths)))
    if args.sweep:
        sweep = threshold_sweep(messages, truths)
        print("\n| threshold | precision | recall |\n| --- | --- | --- |")
        for threshold, score in sweep:
            print(f"| {threshold:.2f} | {score.precision:.3f} | {score.recall:.3f} |")
        print(f"\nhighest F1 at confidence {best_f1_threshold(sweep):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
