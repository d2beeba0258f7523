"""Score tracking against the scenes' ground truth: the daemon's detections/v1 messages (with
track ids) matched to each frame's truth by `frame.pts`, as the accuracy test does, with
motmetrics' CLEAR MOT and identity metrics (MOTA, IDF1, ID switches).

A detection matches a truth box of its class: the track's class (`track_class_id`, voted over its
sightings) where the message has one, else the detector's. So a one-frame class flicker that the
tracker rides out is a hit, as the alerting consumer sees it.

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

from scripts.lab.accuracy import iou
from scripts.lab.scenes import Truth

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
    ids_per_object: float = 0.0  # distinct track ids matched to each object in one pass, on average
    purity: float = 0.0  # of the matches of each track, the share on its main object (weighted)
    fragmentations: int = 0

    def row(self, camera: str) -> str:
        return (f"| {camera} | {self.frames} | {self.objects} | {self.tracks} | {self.mota:.3f} | {self.idf1:.3f} | "
                f"{self.id_switches} | {self.fragmentations} | {self.ids_per_object:.2f} | {self.purity:.3f} | "
                f"{self.precision:.3f} | {self.recall:.3f} |")


HEADER = ("| camera | frames | objects | tracks | MOTA | IDF1 | ID switches | fragmentations | ids per object | "
          "purity | precision | recall |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


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
    return pooled([(messages, truth)])


def pooled(cameras: list[tuple[list[dict], Truth]]) -> TrackScore:
    """motmetrics over several cameras' (messages, truth) as one: identities summed over them (a
    scene with 9 objects moves its own IDF1 by 0.05 per ID switch; a target holds over several)."""
    import motmetrics as mm

    accs, objects, tracks = [], 0, 0
    for messages, truth in cameras:
        acc, seen_objects, seen_tracks = _accumulate(messages, truth)
        accs.append(acc)
        objects, tracks = objects + len(seen_objects), tracks + len(seen_tracks)
    names = [str(i) for i in range(len(accs))]
    summary = mm.metrics.create().compute_many(accs, names=names, generate_overall=True, metrics=[
        "num_frames", "mota", "idf1", "num_switches", "recall", "precision", "num_fragmentations"])
    row = summary.loc["OVERALL"]
    identity = [_identity(acc.mot_events) for acc in accs]
    weights = [acc.mot_events["OId"].dropna().nunique() for acc in accs]
    ids_per_object = sum(w * i for w, (i, _) in zip(weights, identity)) / max(sum(weights), 1)
    purity = sum(w * p for w, (_, p) in zip(weights, identity)) / max(sum(weights), 1)
    return TrackScore(int(row["num_frames"]), objects, tracks, float(row["mota"]), float(row["idf1"]),
                      int(row["num_switches"]), float(row["recall"]), float(row["precision"]), ids_per_object,
                      purity, int(row["num_fragmentations"]))


def _accumulate(messages: list[dict], truth: Truth):
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
                if _class_of(d) == t.class_id and overlap >= MATCH_IOU:
                    dist[i, j] = 1 - overlap
        acc.update(gt_ids, [h if h is not None else -j - 1 for j, h in enumerate(hyp_ids)], dist)
    return acc, objects, tracks


def _identity(events) -> tuple[float, float]:
    """(track ids per object and pass, purity) from motmetrics' matched events."""
    matched = events[events["Type"].isin(["MATCH", "SWITCH", "TRANSFER", "ASCEND", "MIGRATE"])]
    matched = matched[matched["HId"] > 0]  # published ids only (untracked boxes have negative stand-ins)
    if matched.empty:
        return 0.0, 0.0
    per_object = matched.groupby("OId")["HId"].nunique()
    by_track = matched.groupby(["HId", "OId"]).size()
    main = by_track.groupby(level=0).max()
    return float(per_object.mean()), float(main.sum() / by_track.sum())


def _class_of(det: dict) -> int:
    """The class a detection counts as: its track's, voted over its sightings, where it has one."""
    return det.get("track_class_id", det["class_id"])


def _covers_difficult(det: dict, difficult) -> bool:
    return any(t.class_id == _class_of(det) and iou(t.bbox, det["bbox"]) >= MATCH_IOU for t in difficult)


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
