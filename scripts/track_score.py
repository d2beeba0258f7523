"""Score tracking against the scenes' ground truth: the daemon's detections/v1 messages (with
track ids) matched to each frame's truth by `frame.pts`, as the accuracy test does, with
motmetrics' CLEAR MOT and identity metrics (MOTA, IDF1, ID switches).

Identity in the truth is the scene's object and the clip's loop: the test server restarts a
clip's timestamps at 0 when it loops, which restarts its objects, so a camera's loop count goes
up each time its pts goes backwards (in `seq` order). Objects less than half visible are
`difficult`: neither a required match nor, when a hypothesis covers one, a false positive.

Line crossings: `truth_crossings` counts what a perfect tracker would see at the frames the
daemon inferred (the truth's visible objects at exactly those pts), with the alerting
consumer's own geometry, to compare with the consumer's counts.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from scripts.accuracy import iou
from scripts.scenes import Truth

MATCH_IOU = 0.5


@dataclass
class TrackScore:
    """One camera's tracking figures."""

    frames: int
    objects: int  # distinct truth identities (object, loop)
    tracks: int  # distinct track ids published
    mota: float
    idf1: float
    id_switches: int
    recall: float
    precision: float

    def row(self, camera: str) -> str:
        return (f"| {camera} | {self.frames} | {self.objects} | {self.tracks} | {self.mota:.3f} | {self.idf1:.3f} | "
                f"{self.id_switches} | {self.precision:.3f} | {self.recall:.3f} |")


HEADER = ("| camera | frames | objects | tracks | MOTA | IDF1 | ID switches | precision | recall |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def by_camera(messages: list[dict]) -> dict[str, list[dict]]:
    """Messages per camera, in seq order, one run only (the last run_id seen)."""
    out: dict[str, list[dict]] = defaultdict(list)
    for m in messages:
        out[m["camera_id"]].append(m)
    return {cam: sorted(ms, key=lambda m: m["frame"]["seq"]) for cam, ms in out.items()}


def frames_with_truth(messages: list[dict], truth: Truth):
    """(message, loop, visible truths, difficult truths) per message of one camera, in order."""
    loop, last_pts = 0, None
    for m in messages:
        pts = m["frame"]["pts"]
        if last_pts is not None and pts < last_pts:
            loop += 1
        last_pts = pts
        boxes = truth.at_pts(pts)
        yield m, loop, [t for t in boxes if not t.difficult], [t for t in boxes if t.difficult]


def score(messages: list[dict], truth: Truth) -> TrackScore:
    """motmetrics over one camera's messages."""
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    objects, tracks = set(), set()
    for m, loop, visible, difficult in frames_with_truth(messages, truth):
        dets = [d for d in m["detections"] if not _covers_difficult(d, difficult)]
        gt_ids = [t.object_id + 10_000 * loop for t in visible]
        hyp_ids = [d["track_id"] for d in dets]
        objects.update(gt_ids)
        tracks.update(h for h in hyp_ids if h is not None)
        dist = np.full((len(visible), len(dets)), np.nan)
        for i, t in enumerate(visible):
            for j, d in enumerate(dets):
                overlap = iou(t.bbox, d["bbox"])
                if d["class_id"] == t.class_id and overlap >= MATCH_IOU:
                    dist[i, j] = 1 - overlap
        acc.update(gt_ids, [h if h is not None else -j - 1 for j, h in enumerate(hyp_ids)], dist)
    summary = mm.metrics.create().compute(acc, metrics=["num_frames", "mota", "idf1", "num_switches", "recall",
                                                        "precision"], name="cam")
    row = summary.loc["cam"]
    return TrackScore(int(row["num_frames"]), len(objects), len(tracks), float(row["mota"]), float(row["idf1"]),
                      int(row["num_switches"]), float(row["recall"]), float(row["precision"]))


def _covers_difficult(det: dict, difficult) -> bool:
    return any(t.class_id == det["class_id"] and iou(t.bbox, det["bbox"]) >= MATCH_IOU for t in difficult)


def truth_crossings(messages: list[dict], truth: Truth, line, classes=None) -> dict[str, int]:
    """Crossings of `line` (pipeline.alerting.rules.Line) by the truth's visible objects at the
    frames of `messages` (one camera), counted as the alerting consumer counts a track's."""
    from pipeline.alerting.rules import LineCounter

    counter = LineCounter(line)
    for m, loop, visible, _ in frames_with_truth(messages, truth):
        for t in visible:
            if classes is None or t.label in classes:
                counter.observe((t.object_id, loop), t.bbox, 0.0)
    return counter.counts
