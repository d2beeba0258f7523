"""Track: stable ids for the objects of each camera, after postprocessing and before publishing.

A ByteTrack-style tracker (Zhang et al., 2022) per camera: a constant-velocity Kalman filter per
track, associated with the new detections by IoU in two passes: tracks against confident
detections first, then the tracks still unmatched against low-confidence ones (which keeps a
track alive through a partial occlusion without publishing the weak box), then steady tracks
still unmatched and then tentative tracks against what is left, with boxes grown by half (C-BIoU);
a confident detection that matches nothing starts a track. An unseen track keeps its size.

Identity over what detectors and scenes do to it:
- **Class flicker**: association is across classes, a different class costing `CLASS_MISMATCH`
  (so it needs that much more overlap, and a same-class box wins); each track keeps a class by
  vote over its sightings (confidence-weighted), published beside what the detector said.
- **Stops and short misses**: an unseen track's speed decays (`DECAY_S`), so the prediction of
  an object that stopped stays where it stopped, unless a detection covered it (`OCCLUDED`: it is
  behind another object and goes on); a lost track is also looked for where it was last seen,
  box grown by half, for as long as `max_age_s`.
- **Crossings of look-alikes**: a box behind a moving track (from where it was last seen, against
  its velocity) costs up to `DIRECTION_WEIGHT` more than one ahead (OC-SORT's momentum, Cao et
  al. 2023), so two alike objects passing each other do not swap.
- **Duplicates**: a second box on an object already matched this frame (the detector's other
  class for it) starts nothing and is not published; a new box over a live track starts a track
  that is published only when it is seen again (until then its box goes out without an id).

Tuned on the breaker scenes (scripts/lab/breaker_scenes.py, seeds 31-33) and held-out ones, with the
tracking scenes as a guard (scripts/bench/bench_tracking.py score; docs/accuracy.md).

Time, not frame count: cameras are sampled, frames are superseded under load, cameras
reconnect. Prediction steps by the media time (`pts`, the camera's own capture clock) between
inferred frames; a track unseen for `max_age_s` ends; every track of a camera ends when it
reconnects (the source's `epoch` changes) and when its media time runs backwards or jumps ahead
(`jump_s`): a looping clip, a camera restart, a clock set. Tracks per camera are capped
(`max_tracks`): a detection that would start one more gets no id and is counted.

Written here rather than taken from Roboflow's `trackers` (it requires opencv-python's GUI build,
supervision, rich and requests: too heavy for an edge daemon); the assignment is `lap.lapjv`,
the linear-assignment solver ByteTrack itself and Ultralytics use, called only for a camera
where a track or a detection has two candidates under the limit (elsewhere the pairs under it are
the matching; a call costs 20-30 us even for a 3 x 3 problem).

The state of a lane's cameras is one TrackTable: every track a row of float64 columns. The finish
stage hands it a whole batch at once (`Trackers.track_batch`, the postprocessed batch's arrays):
prediction, the cost of every track-detection pair of each camera (padded to [frames, tracks,
detections]), the Kalman corrections and the class votes are array operations over the batch's
cameras, not per object, and make the same decisions as the per-camera tracker they replaced
(the messages on the tracking and breaker scenes at 25, 10 and 5 fps are byte-identical).
CameraTracker is a table of one camera, for tests and tools.
"""
from __future__ import annotations

import threading
from itertools import chain
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import lap
import numpy as np

from pipeline.core import Detection, EndedTrack, FrameMeta, TrackEvents
from pipeline.metrics import Metrics
from pipeline.s5_looks import LOOK_BINS, similarity
from pipeline.s5_looks import looks as box_looks
from pipeline.s5_postprocess import BatchDetections

# Kalman noise, relative to the box's size, per 1/25 s (ByteTrack's weights, made time-based)
_STD_POSITION = 1 / 20
_STD_VELOCITY = 1 / 160
_STEP_S = 1 / 25
BUFFER = 0.5  # boxes grown by this much of their size on each side, for the passes that need slack
STEADY_HITS = 3  # sightings that make a track trusted to be looked for with grown boxes
CLASS_MISMATCH = 0.3  # association cost of a detection of another class than the track's (IoU units)
DECAY_S = 0.4  # an unseen track's speed falls by e every this long: a stopped object's prediction stops
OCCLUDED = 0.3  # an unseen track this much covered by a detection is behind it, not stopped
DIRECTION_WEIGHT = 0.2  # association cost of a box straight behind a moving track (OC-SORT's momentum)
MOVING = 0.5  # a track is moving at this many of its sizes per second or faster
NEAR = 0.5  # a box this many of the track's sizes from where it was last seen, or more, counts fully
DUPLICATE_IOU = 0.5  # a new box this much over a box matched this frame is the same object again
OVERLAP_IOU = 0.3  # a new box this much over a live track is published only once seen again
MAX_CLASSES = 1024  # distinct class ids a lane's tracker votes over (COCO has 80, Open Images 601)
TENTATIVE_MISSES = 1  # a tentative track survives this many frames in a row unseen (confirmed by a second hit)
LOOK_WEIGHT = 0.5  # where two tracks want one box: the cost of looks with nothing in common (IoU units)
LOOK_KEEP = 0.7  # a track's look: this much its old average, the rest the new sighting's
REFIND_LOOK = 0.7  # least similarity of looks to find a lost track again (Bhattacharyya coefficient)
REACH = 1.0  # a lost track is looked for this many of its sizes per second away (besides its speed)


# ---------------------------------------------------------------------- association (pure)
def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` [N, 4] with every box of `b` [M, 4] (xyxy) -> [N, M]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    return _iou(np.asarray(a, np.float64), np.asarray(b, np.float64))


def _intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection areas of every box of `a` [..., N, 4] with every box of `b` [..., M, 4] (xyxy,
    float64) -> [..., N, M]."""
    a, b = a[..., :, None, :], b[..., None, :, :]
    w = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    h = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    return np.maximum(w, 0.0, out=w) * np.maximum(h, 0.0, out=h)


def assign(cost: np.ndarray, limit: float) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Minimum-cost one-to-one matching of rows to columns, pairs costing more than `limit`
    excluded -> (matches, unmatched rows, unmatched columns)."""
    rows, cols = cost.shape
    if rows == 0 or cols == 0:
        return [], list(range(rows)), list(range(cols))
    _, row_to_col, col_to_row = lap.lapjv(np.ascontiguousarray(cost, np.float64), extend_cost=True,
                                          cost_limit=limit)
    matches = [(r, int(c)) for r, c in enumerate(row_to_col) if c >= 0]
    return (matches, [r for r, c in enumerate(row_to_col) if c < 0],
            [c for c, r in enumerate(col_to_row) if r < 0])


# ---------------------------------------------------------------------- settings and results
@dataclass(frozen=True)
class TrackSettings:
    """How a camera's objects are tracked (config: `tracking`, per camera `cameras[].tracking`)."""

    high_confidence: float  # detections this confident are published, matched first, and start tracks
    enabled: bool = True
    low_confidence: float = 0.1  # weaker ones only keep existing tracks alive (second pass)
    match_iou: float = 0.2  # least IoU with a track's predicted box for a confident detection
    low_match_iou: float = 0.5  # ... for a low-confidence one
    max_age_s: float = 2.0  # a track unseen this long is lost: no longer matched by motion
    lost_s: float = 5.0  # ... and ends when unseen this long (found again by its look until then; at least max_age_s)
    appearance: bool = True  # use the looks (pipeline.s5_looks) where motion cannot decide
    jump_s: float = 10.0  # media time moving on by more than this (or backwards) ends every track
    max_tracks: int = 256  # live tracks per camera at most


@dataclass
class TrackedFrame:
    """One frame's detections with their track ids, and the tracks that started or ended."""

    detections: tuple[Detection, ...]
    started: list[int] = field(default_factory=list)
    ended: list[EndedTrack] = field(default_factory=list)
    untracked: int = 0  # detections left without an id (max_tracks reached)
    refound: list[int] = field(default_factory=list)  # lost tracks (unseen over max_age_s) seen again


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """What the tracker needs of a frame besides its detections."""

    camera: str
    settings: TrackSettings  # the camera's: taken from its first frame
    pts: float  # media time (seconds)
    captured_at: float  # UTC seconds
    epoch: int = 0  # the source's connection number


# ---------------------------------------------------------------------- the state, in arrays
# One row per track of every camera of a lane, float64 columns (counts and ids are exact in them).
# The motion is a constant-velocity Kalman filter of the box as (cx, cy, w, h), each with its rate
# per second; with diagonal noise the four coordinates are independent filters of (value, rate),
# so each keeps its 2x2 covariance as three numbers.
_X, _V = slice(0, 4), slice(4, 8)  # cx, cy, w, h and their rates
_P00, _P01, _P11 = slice(8, 12), slice(12, 16), slice(16, 20)
_T = 20  # media time of the motion state
_LAST = slice(21, 25)  # where it was last seen (xyxy)
_SEEN_PTS, _FIRST, _LAST_SEEN, _HITS = 25, 26, 27, 28  # media time and capture times of its sightings; how many
_CONFIRMED, _PUBLISHED, _OCCLUDED, _CLASS, _ID = 29, 30, 31, 32, 33
_MISSED = 34  # frames in a row unseen
_COLUMNS = 35


class _Camera:
    """A camera's share of the table: its rows in the order its tracks started."""

    __slots__ = ("settings", "rows", "next_id", "pts", "epoch")

    def __init__(self, settings: TrackSettings) -> None:
        self.settings = settings
        self.rows: list[int] = []
        self.next_id = 1
        self.pts: float | None = None
        self.epoch: int | None = None


class TrackTable:
    """The tracks of many cameras in arrays. A batch's frames are tracked with one set of array
    operations for all their cameras (prediction, the cost of every track-detection pair of a
    camera, the Kalman corrections, the votes), plus one small linear assignment per camera and
    pass. Per-object Python is left where tracks start or end and where the message's Detection
    objects are made. Not thread-safe: one finish stage feeds it, each camera's frames in order."""

    def __init__(self) -> None:
        self._state = np.zeros((64, _COLUMNS))
        self._votes = np.zeros((64, 0))  # confidence seen as each class of `_classes`
        self._looks = np.full((64, LOOK_BINS), np.nan)  # each track's average look (NaN: none yet)
        self._classes = np.zeros(0, np.int64)  # the class ids seen so far, sorted: the votes' columns
        self._labels: dict[int, str] = {}
        self._free = list(range(63, -1, -1))  # free rows, the lowest last
        self._cameras: dict[str, _Camera] = {}

    # ------------------------------------------------------------------ public
    def update(self, frames: Sequence[FrameInfo], boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
               owner: np.ndarray, label_of: Callable[[int], str], looks: np.ndarray | None = None) -> list[TrackedFrame]:
        """Track the detections of `frames`: row k of boxes [M, 4] (xyxy), scores [M], classes
        [M] and looks [M, LOOK_BINS] (pipeline.s5_looks; NaN or None: unknown) is of
        frames[owner[k]], `owner` ascending; bad boxes and boxes below the camera's low
        confidence are left out here -> one TrackedFrame per frame, in order. Frames of one
        camera are tracked one after the other, in the order given."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores, classes = np.asarray(scores, np.float64), np.asarray(classes, np.int64)
        owner = np.asarray(owner, np.int64)
        looks = np.full((len(boxes), LOOK_BINS), np.nan) if looks is None else np.asarray(looks, np.float64)
        self._learn(classes, label_of)
        turn: dict[str, int] = {}
        rounds = []
        for f in frames:
            turn[f.camera] = turn.get(f.camera, -1) + 1
            rounds.append(turn[f.camera])
        if not rounds or max(rounds) == 0:  # each camera once (the usual case): one round
            return self._round(list(frames), boxes, scores, classes, owner, looks)
        out: list[TrackedFrame] = [TrackedFrame(())] * len(frames)
        for r in range(max(rounds) + 1):
            picked = [i for i, k in enumerate(rounds) if k == r]
            remap = np.full(len(frames), -1)
            remap[picked] = np.arange(len(picked))
            rows = remap[owner] >= 0
            found = self._round([frames[i] for i in picked], boxes[rows], scores[rows], classes[rows],
                                remap[owner[rows]], looks[rows])
            for i, result in zip(picked, found):
                out[i] = result
        return out

    def count(self, camera: str) -> int:
        """Live tracks of a camera."""
        cam = self._cameras.get(camera)
        return len(cam.rows) if cam else 0

    def track_ids(self, camera: str) -> list[int]:
        """The ids of a camera's live tracks, oldest first."""
        cam = self._cameras.get(camera)
        return [int(self._state[r, _ID]) for r in cam.rows] if cam else []

    def stop(self, camera: str) -> list[EndedTrack]:
        """End every track of a camera (the camera was removed or the daemon stops)."""
        cam = self._cameras.get(camera)
        return self._end(cam, list(range(len(cam.rows))), "stopped") if cam else []

    def forget(self, camera: str) -> None:
        """Drop a camera and its tracks, unannounced."""
        cam = self._cameras.pop(camera, None)
        if cam is not None:
            self._free.extend(cam.rows)

    # ------------------------------------------------------------------ one round: each camera once
    def _round(self, frames: list[FrameInfo], boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
               owner: np.ndarray, looks: np.ndarray) -> list[TrackedFrame]:
        n = len(frames)
        ended: list[list[EndedTrack]] = [[] for _ in frames]
        cams, before = [], np.full(n, np.nan)  # media time of each camera's frame before this one
        for b, f in enumerate(frames):
            cam = self._cameras.get(f.camera)
            if cam is None:
                cam = self._cameras[f.camera] = _Camera(f.settings)
            cams.append(cam)
            if cam.pts is not None:
                if f.epoch != cam.epoch:
                    ended[b] = self._end(cam, list(range(len(cam.rows))), "reconnect")
                elif f.pts < cam.pts or f.pts - cam.pts > cam.settings.jump_s:
                    ended[b] = self._end(cam, list(range(len(cam.rows))), "time_jump")
                before[b] = cam.pts
            cam.pts, cam.epoch = f.pts, f.epoch
        s = [c.settings for c in cams]
        pts = np.array([f.pts for f in frames], np.float64)
        counts = [len(c.rows) for c in cams]
        rows = np.array(list(chain.from_iterable(c.rows for c in cams)), np.int64)
        state = self._state[rows]  # these cameras' tracks, camera by camera
        track_cam = np.repeat(np.arange(n), counts)
        at = pts[track_cam]
        max_age = np.array([x.max_age_s for x in s])[track_cam]
        unseen_for = at - state[:, _SEEN_PTS]
        _predict(state, at)
        with np.errstate(invalid="ignore"):  # boxes that are not finite and positive are never tracked
            x1, y1, x2, y2 = boxes.T
            valid = (np.isfinite(x1 + y1 + x2 + y2) & (x2 > x1) & (x1 >= 0) & (y2 > y1) & (y1 >= 0)
                     & (scores >= np.array([x.low_confidence for x in s])[owner]))
        high = valid & (scores >= np.array([x.high_confidence for x in s])[owner])
        appearance = np.array([x.appearance for x in s])
        track_looks = np.where(appearance[track_cam][:, None], self._looks[rows], np.nan)
        det_looks = np.where(appearance[owner][:, None], looks, np.nan)
        pairs = _Pairs(state, track_cam, counts, np.where(valid[:, None], boxes, 0.0), classes, owner, n, high,
                       valid & ~high, valid, before, unseen_for <= max_age, track_looks, det_looks, unseen_for)
        confirmed = state[:, _CONFIRMED] > 0
        order: list[np.ndarray] = []  # the matched tracks, pass by pass, each camera's in row order
        refound: list[np.ndarray] = []
        if pairs.any:
            match_iou = np.array([x.match_iou for x in s])
            # only tracks seen within max_age_s are matched by where they are or were (1-4); a lost
            # track (unseen longer) is only found again by its look (5)
            recent = pairs.confirmed & pairs.recent
            # 1: confirmed tracks (seen lately or not) against the confident detections
            plain = pairs.cost()
            order += pairs.match(plain, recent, True, 1 - match_iou)
            # 2: the confirmed tracks still unmatched against the weak detections: a partly hidden
            # object is often seen only weakly (ByteTrack's second pass; lost tracks too, which
            # finds an object again as it comes out from behind another sooner)
            order += pairs.match(plain, recent, False, 1 - np.array([x.low_match_iou for x in s]))
            # a confident box left over an object matched so far is that object again (the
            # detector's other class for it): the passes with grown boxes below must not give it
            # to a neighbour
            pairs.drop_duplicates()
            # 3: steady tracks still unmatched against the confident detections left, with boxes
            # grown by half their size (C-BIoU, Yang et al. 2023): an object hidden behind another
            # is seen shrinking before it goes, so its prediction lags or turns back, and it comes
            # out ahead of it (tracking scenes: IDF1 0.92 -> 0.96 on average over 25/10/7/5 fps,
            # line-crossing errors 22 -> 10 of 376); only tracks seen 3+ times, a young one's speed
            # is noise. A lost track (unseen in the frame before this one too) is also looked for
            # where it was last seen (it stopped, or was missed for a few frames while its
            # prediction went on): whichever of the two places fits a box better
            wanted = recent & (pairs.steady | pairs.lost)
            if pairs.wants(wanted):
                order += pairs.match(pairs.cost(BUFFER, seen_where=True), wanted, True, 1 - match_iou)
            # 4: tentative tracks against the confident detections left, with boxes grown by half
            # their size: a new track has no speed yet, and a small fast object sampled at a few
            # fps moves further than its own size between frames (C-BIoU)
            if pairs.wants(~pairs.confirmed):
                order += pairs.match(pairs.cost(BUFFER), ~pairs.confirmed, True, 1 - match_iou)
            pairs.drop_duplicates()
            # 5: confirmed tracks unseen in the frame before too and still unmatched, against the
            # confident detections left, by their looks, within the reach of their motion: an
            # object that came out from behind a larger one far from where it went in, or stood
            # hidden longer than max_age_s (issue 35)
            wanted = pairs.confirmed & pairs.lost & pairs.has_look
            if pairs.wants(wanted):
                refound = pairs.match(pairs.refind_cost(), wanted, True, np.full(n, 1 - REFIND_LOOK), looks=False)
                order += refound
            pairs.drop_duplicates()
        hidden = self._sighted(state, rows, pairs.matched, boxes, scores, classes, pts[owner],
                               np.array([f.captured_at for f in frames])[owner], high, det_looks)
        # a tentative track survives TENTATIVE_MISSES frames unseen; a track unseen for max_age_s
        # is lost, and ends at lost_s if it has a look to be found again by (else at max_age_s)
        unmatched = pairs.unmatched_tracks()
        state[:, _MISSED] = np.where(unmatched, state[:, _MISSED] + 1, 0)
        gone = ~confirmed & unmatched & (state[:, _MISSED] > TENTATIVE_MISSES)
        keep_for = np.where(~np.isnan(track_looks[:, 0]), np.array([max(x.lost_s, x.max_age_s) for x in s])[track_cam],
                            max_age)
        expired = ~gone & (at - state[:, _SEEN_PTS] > keep_for)
        live = ~gone & ~expired
        # an unseen track that a detection covers is behind it (its prediction goes on), not stopped
        unseen = live & (state[:, _SEEN_PTS] < at)
        if unseen.any():
            state[unseen, _OCCLUDED] = pairs.covered()[unseen] >= OCCLUDED
        fresh = pairs.fresh()
        # (a lost track is no object in view: a box over it is not over a live one)
        over_live = pairs.over_live(state, live & ((unseen_for <= max_age) | ~unmatched), fresh)
        self._state[rows] = state
        # what each camera saw: ends, starts, and the message's detections
        newly = [[] for _ in frames]  # hidden tracks seen again: their start is announced now
        if hidden.any():
            for t in np.concatenate(order).tolist():
                if hidden[t]:
                    newly[track_cam[t]].append(int(state[t, _ID]))
        back = [[] for _ in frames]  # lost tracks (unseen over max_age_s) found again
        if refound:
            for t in np.concatenate(refound).tolist():
                if unseen_for[t] > max_age[t] and not hidden[t]:
                    back[track_cam[t]].append(int(state[t, _ID]))
        shown = np.flatnonzero(high & ~pairs.dropped)  # in the message: confident, not a duplicate
        lists = _Lists(list(map(tuple, boxes.tolist())), scores.tolist(), classes.tolist(), pairs.matched.tolist(),
                       state[:, _ID].astype(np.int64).tolist(), state[:, _CLASS].astype(np.int64).tolist(),
                       fresh.tolist(), over_live.tolist(), boxes, det_looks)
        results, start = [], 0
        cut = np.searchsorted(shown, np.searchsorted(owner, np.arange(n + 1))).tolist()
        shown = shown.tolist()
        dying = gone | expired
        losing = set(track_cam[dying].tolist()) if dying.any() else ()  # the cameras that lose tracks
        for b, (f, cam) in enumerate(zip(frames, cams)):
            end = start + counts[b]
            if b in losing:
                drop_gone, drop_expired = np.flatnonzero(gone[start:end]).tolist(), np.flatnonzero(expired[start:end]).tolist()
                ended[b] += self._end(cam, drop_gone, "unseen", keep=True) + self._end(cam, drop_expired, "unseen",
                                                                                      keep=True)
                dead = set(drop_gone + drop_expired)
                self._free.extend(cam.rows[i] for i in dead)
                cam.rows = [r for i, r in enumerate(cam.rows) if i not in dead]
            frame = self._publish(f, cam, shown[cut[b]:cut[b + 1]], lists, newly[b], ended[b])
            frame.refound = back[b]
            results.append(frame)
            start = end
        return results

    def _sighted(self, state: np.ndarray, rows: np.ndarray, matched: np.ndarray, boxes: np.ndarray,
                 scores: np.ndarray, classes: np.ndarray, det_pts: np.ndarray, det_captured: np.ndarray,
                 high: np.ndarray, looks: np.ndarray) -> np.ndarray:
        """Update the matched tracks with their detections: the Kalman correction, when and where
        they were seen, their class by vote (confidence-weighted, the track's own class winning a
        tie), their look (an average over confident sightings) -> which tracks (of `state`) were
        hidden until now (their ids go out from now on)."""
        hidden = np.zeros(len(state), bool)
        dets = np.flatnonzero(matched >= 0)
        if not len(dets):
            return hidden
        tracks = matched[dets]
        _correct(state, tracks, boxes[dets])
        state[tracks, _SEEN_PTS] = det_pts[dets]
        state[tracks, _LAST_SEEN] = det_captured[dets]
        state[tracks, _HITS] += 1
        state[tracks, _CONFIRMED] = 1.0
        state[tracks, _LAST] = boxes[dets]
        votes = self._votes
        table_rows = rows[tracks]
        votes[table_rows, np.searchsorted(self._classes, classes[dets])] += scores[dets]
        mine = votes[table_rows, np.searchsorted(self._classes, state[tracks, _CLASS].astype(np.int64))]
        tally = votes[table_rows]
        state[tracks, _CLASS] = np.where(mine >= tally.max(axis=1), state[tracks, _CLASS],
                                         self._classes[tally.argmax(axis=1)])
        hidden[tracks] = state[tracks, _PUBLISHED] == 0
        state[tracks, _PUBLISHED] = 1.0
        seen = high[dets] & ~np.isnan(looks[dets, 0])  # a weak box is often a partly hidden object
        if seen.any():
            table_rows, new = table_rows[seen], looks[dets[seen]]
            old = self._looks[table_rows]
            self._looks[table_rows] = np.where(np.isnan(old[:, :1]), new, LOOK_KEEP * old + (1 - LOOK_KEEP) * new)
        return hidden

    def _publish(self, f: FrameInfo, cam: _Camera, dets: list[int], x: _Lists, started: list[int],
                 ended: list[EndedTrack]) -> TrackedFrame:
        """One frame's share of the message: its detections `dets` with the ids of published
        tracks; the fresh ones start tracks. The loop per object of the finish stage: kept lean."""
        max_tracks, labels = cam.settings.max_tracks, self._labels
        boxes, classes, scores, matched, track_id, track_class = x.boxes, x.classes, x.scores, x.matched, x.track_id, x.track_class
        make, kind = tuple.__new__, Detection  # Detection(...) without its __new__'s Python frame
        untracked, out = 0, []
        for d in dets:
            cls, t = classes[d], matched[d]
            if t >= 0:  # a matched track is published
                tc = track_class[t]
                out.append(make(kind, (cls, labels[cls], scores[d], boxes[d], track_id[t], tc, labels[tc])))
            elif not x.fresh[d] or len(cam.rows) >= max_tracks:
                untracked += x.fresh[d]
                out.append(make(kind, (cls, labels[cls], scores[d], boxes[d], None, None, None)))
            elif x.over_live[d]:  # a new box over a live track: its id goes out once it is seen again
                self._start(cam, x.array[d], cls, scores[d], f, x.looks[d], published=False)
                out.append(make(kind, (cls, labels[cls], scores[d], boxes[d], None, None, None)))
            else:
                new_id = self._start(cam, x.array[d], cls, scores[d], f, x.looks[d], published=True)
                started.append(new_id)
                out.append(make(kind, (cls, labels[cls], scores[d], boxes[d], new_id, cls, labels[cls])))
        return TrackedFrame(tuple(out), started, ended, untracked)

    # ------------------------------------------------------------------ rows
    def _start(self, cam: _Camera, box: np.ndarray, cls: int, score: float, f: FrameInfo, look: np.ndarray,
               published: bool) -> int:
        if not self._free:
            self._grow()
        row = self._free.pop()
        track_id, cam.next_id = cam.next_id, cam.next_id + 1
        state = self._state[row]
        state[:] = 0.0
        x1, y1, x2, y2 = box.tolist()
        w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        state[_X] = ((x1 + x2) / 2, (y1 + y2) / 2, w, h)
        state[_P00] = [(2 * _STD_POSITION * v) ** 2 for v in (w, h, w, h)]
        state[_P11] = [(10 * _STD_VELOCITY * v / _STEP_S) ** 2 for v in (w, h, w, h)]
        state[_T] = state[_SEEN_PTS] = f.pts
        state[_FIRST] = state[_LAST_SEEN] = f.captured_at
        state[_LAST] = box
        state[_HITS], state[_PUBLISHED], state[_CLASS], state[_ID] = 1, published, cls, track_id
        self._votes[row] = 0.0
        self._votes[row, np.searchsorted(self._classes, cls)] = score
        self._looks[row] = look
        cam.rows.append(row)
        return track_id

    def _end(self, cam: _Camera, local: list[int], reason: str, keep: bool = False) -> list[EndedTrack]:
        """End the tracks at `local` places of a camera's rows (`keep`: the caller removes them)
        -> the ends to announce: a hidden track never published ends unannounced (its start never was)."""
        state, labels = self._state, self._labels
        out = []
        for i in local:
            r = state[cam.rows[i]]
            if r[_PUBLISHED]:
                out.append(EndedTrack(int(r[_ID]), labels[int(r[_CLASS])], float(r[_FIRST]), float(r[_LAST_SEEN]),
                                      int(r[_HITS]), reason))
        if not keep:
            dead = set(local)
            self._free.extend(cam.rows[i] for i in dead)
            cam.rows = [r for i, r in enumerate(cam.rows) if i not in dead]
        return out

    def _grow(self) -> None:
        size = len(self._state)
        self._state = np.concatenate([self._state, np.zeros_like(self._state)])
        self._votes = np.concatenate([self._votes, np.zeros_like(self._votes)])
        self._looks = np.concatenate([self._looks, np.full_like(self._looks, np.nan)])
        self._free.extend(range(2 * size - 1, size - 1, -1))

    def _learn(self, classes: np.ndarray, label_of: Callable[[int], str]) -> None:
        """Make room in the votes for classes not seen before."""
        if not len(classes):
            return
        known = self._classes
        at = np.minimum(np.searchsorted(known, classes), max(len(known) - 1, 0))
        if len(known) and (known[at] == classes).all():
            return
        new = np.setdiff1d(classes, known)
        merged = np.union1d(known, new)
        if len(merged) > MAX_CLASSES:  # each class is a column of every track's votes: bounded
            raise ValueError(f"{len(merged)} distinct class ids seen (at most {MAX_CLASSES} are tracked): "
                             f"the model's class output is not class ids (e.g. {new[:3].tolist()})")
        votes = np.zeros((len(self._votes), len(merged)))
        votes[:, np.searchsorted(merged, known)] = self._votes
        self._votes, self._classes = votes, merged
        for c in new.tolist():
            self._labels.setdefault(c, label_of(c))


class _Lists(NamedTuple):
    """A round's arrays as lists, for the Detection objects of the messages."""

    boxes: list  # of tuples
    scores: list
    classes: list
    matched: list  # detection -> its track's index in the round, -1 for none
    track_id: list
    track_class: list
    fresh: list
    over_live: list
    array: np.ndarray  # the boxes
    looks: np.ndarray


class _Pairs:
    """The track-detection pairs of one round, camera by camera: arrays [frames, most tracks,
    most detections] (a camera's tracks and detections side by side, the rest padding), which
    tracks and confident detections are still unmatched, and the matches so far."""

    def __init__(self, state: np.ndarray, track_cam: np.ndarray, counts: list[int], boxes: np.ndarray,
                 classes: np.ndarray, owner: np.ndarray, frames: int, high: np.ndarray, low: np.ndarray,
                 valid: np.ndarray, before: np.ndarray, recent: np.ndarray, track_looks: np.ndarray,
                 det_looks: np.ndarray, unseen_for: np.ndarray) -> None:
        self.n_tracks, self.n_dets = len(state), len(boxes)
        self.matched = np.full(len(boxes), -1)  # detection -> index into `state` of its track
        self.dropped = np.zeros(len(boxes), bool)  # duplicates: neither published nor tracked
        self.any = bool(self.n_tracks and self.n_dets)
        if not self.any:
            self._high = high
            return
        self.tpad = _padded(track_cam, counts, frames, self.n_tracks)
        self.dpad = _padded(owner, np.bincount(owner, minlength=frames).tolist(), frames, self.n_dets)
        self.track_ok = self.tpad < self.n_tracks
        self.free_track = self.track_ok.copy()
        filler = np.zeros((1, _COLUMNS))
        filler[0, _CLASS] = -1
        tracks = np.concatenate([state, filler])[self.tpad]  # every column at once: [frames, most tracks, columns]
        flags = _pad(np.stack([high, low, valid], axis=1), self.dpad, False)
        self.high, self.low, self.valid = flags[..., 0], flags[..., 1], flags[..., 2]
        self.free_high = self.high.copy()
        self.dup = np.zeros_like(self.high)
        self.tboxes = _boxes(tracks)  # predicted
        self.last = tracks[..., _LAST]
        self.dboxes = _pad(boxes, self.dpad, 0.0)
        self.other = tracks[..., _CLASS][:, :, None] != _pad(classes, self.dpad, -1)[:, None, :]
        self.confirmed = tracks[..., _CONFIRMED] > 0
        self.steady = tracks[..., _HITS] >= STEADY_HITS
        self.lost = tracks[..., _SEEN_PTS] < before[:, None]  # unseen in the frame before this one too
        self.recent = _pad(recent, self.tpad, False)  # seen within max_age_s
        known_t, known_d = ~np.isnan(track_looks[:, 0]), ~np.isnan(det_looks[:, 0])
        self.has_look = _pad(known_t, self.tpad, False)
        self.tlooks, self.dlooks = track_looks, det_looks  # unpadded: read for few pairs
        self.any_look = bool(known_t.any() and known_d.any())
        self.unseen_for = _pad(unseen_for, self.tpad, 0.0)
        self.velocity = tracks[..., 4:6]
        self.speed = np.hypot(self.velocity[..., 0], self.velocity[..., 1])
        self.size = np.sqrt(np.maximum(tracks[..., 2] * tracks[..., 3], 1.0))
        self.moving = self.steady & (self.speed >= MOVING * self.size)
        if not self.moving.any():
            self.moving = None
        self._dd = None
        self._overlaps: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # buffer -> boxes, inter, IoU

    def cost(self, buffer: float = 0.0, seen_where: bool = False) -> np.ndarray:
        """[frames, tracks, detections]: 1 - IoU of the boxes grown by `buffer` of their size on
        each side (with `steady` and `lost`: a steady track at its predicted box, a lost one where
        it was last seen, one both at whichever fits better: `seen_where`), plus CLASS_MISMATCH for another
        class and DIRECTION_WEIGHT for a box behind a moving track."""
        boxes, _, iou = self._overlap(buffer)
        if seen_where and self.lost.any():
            seen = _iou(_grown(self.last, buffer), boxes)
            iou = np.maximum(np.where(self.steady[:, :, None], iou, 0.0), np.where(self.lost[:, :, None], seen, 0.0))
        cost = 1 - iou + CLASS_MISMATCH * self.other
        if self.moving is not None:  # only pairs that overlap can match (any other costs 1 or more)
            b, t, d = np.nonzero((iou > 0) & self.moving[:, :, None])
            cost[b, t, d] = cost[b, t, d] + DIRECTION_WEIGHT * self._backwards(boxes[b, d], b, t)
        return cost

    def _overlap(self, buffer: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The detections' boxes grown by `buffer`, and their intersections and IoU with the
        tracks' predicted boxes grown alike (worked out once a round: the passes share them)."""
        found = self._overlaps.get(buffer)
        if found is None:
            boxes, tracks = _grown(self.dboxes, buffer), _grown(self.tboxes, buffer)
            inter = _intersections(tracks, boxes)
            found = self._overlaps[buffer] = (boxes, inter, _iou(tracks, boxes, inter))
        return found

    def refind_cost(self) -> np.ndarray:
        """[frames, tracks, detections]: 1 - the similarity of looks of each lost track and box, plus
        CLASS_MISMATCH for another class; infinite for a box out of the track's reach (from where
        it was last seen: REACH of its size per second unseen, plus 1.5 times its speed), of
        another size (half or twice its size or more) or with no look."""
        cost = np.full(self.tpad.shape + self.dpad.shape[1:], np.inf)
        b, t, d = np.nonzero(self.lost[:, :, None] & self.has_look[:, :, None] & self.free_high[:, None, :]
                             & self.free_track[:, :, None])
        if not len(b):
            return cost
        last, box = self.last[b, t], self.dboxes[b, d]
        size = self.size[b, t]
        gap = self.unseen_for[b, t]
        reach = size * (1 + REACH * gap) + 1.5 * self.speed[b, t] * gap
        dist = np.hypot((box[:, 0] + box[:, 2] - last[:, 0] - last[:, 2]) / 2,
                        (box[:, 1] + box[:, 3] - last[:, 1] - last[:, 3]) / 2)
        ratio = np.sqrt(np.maximum((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]), 1.0)) / size
        alike = similarity(self.tlooks[self.tpad[b, t]], self.dlooks[self.dpad[b, d]])
        ok = (dist <= reach) & (ratio > 0.5) & (ratio < 2) & ~np.isnan(alike)
        cost[b[ok], t[ok], d[ok]] = 1 - alike[ok] + CLASS_MISMATCH * self.other[b[ok], t[ok], d[ok]]
        return cost

    def _backwards(self, boxes: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
        """For pairs of a moving track (b, t) and a box: 0 where the box lies ahead of the track
        (from where it was last seen, along its velocity) or near it, up to 1 straight behind
        (OC-SORT's momentum, Cao et al. 2023)."""
        last, v, speed = self.last[b, t], self.velocity[b, t], self.speed[b, t]
        dx = (boxes[:, 0] + boxes[:, 2]) / 2 - (last[:, 0] + last[:, 2]) / 2
        dy = (boxes[:, 1] + boxes[:, 3]) / 2 - (last[:, 1] + last[:, 3]) / 2
        dist = np.hypot(dx, dy)
        cos = (dx * v[:, 0] + dy * v[:, 1]) / np.maximum(dist * speed, 1e-9)
        return (1 - cos) / 2 * np.minimum(1.0, dist / (NEAR * self.size[b, t]))

    def match(self, cost: np.ndarray, tracks: np.ndarray, confident: bool, limit: np.ndarray,
              looks: bool = True) -> list[np.ndarray]:
        """Match the unmatched `tracks` (mask [frames, most tracks]) with the unmatched
        confident detections (`confident`) or the weak ones, per camera, by minimum total cost,
        pairs costing `limit` (per camera) or more excluded -> the tracks matched, camera by
        camera, in row order. Where no track nor detection of a camera has two pairs under its
        limit, those pairs are the matching; the other cameras go to lap.lapjv (its call costs
        20-30 us even for a 3 x 3 problem, more than the rest of a pass). There, where motion
        alone cannot decide, unlike looks add up to LOOK_WEIGHT to a pair's cost (`looks`)."""
        rows = tracks & self.free_track
        cols = self.free_high if confident else self.low
        allowed = (cost < limit[:, None, None]) & rows[:, :, None] & cols[:, None, :]
        simple = (allowed.sum(axis=2) <= 1).all(axis=1) & (allowed.sum(axis=1) <= 1).all(axis=1)
        b, r, c = np.nonzero(allowed & simple[:, None, None])
        out = [self._matched(b, r, c, confident)] if len(b) else []
        for b in np.flatnonzero(~simple).tolist():
            r, c = np.flatnonzero(rows[b]), np.flatnonzero(cols[b])
            sub, most = cost[b][np.ix_(r, c)], float(limit[b])
            if looks and self.any_look:
                unlike = 1 - similarity(self.tlooks[self.tpad[b, r]][:, None, :], self.dlooks[self.dpad[b, c]][None, :, :])
                most += LOOK_WEIGHT
                sub = np.where(allowed[b][np.ix_(r, c)], sub + LOOK_WEIGHT * np.nan_to_num(unlike, nan=0.0), most + 1)
            pairs = np.array(assign(sub, most)[0], np.int64).reshape(-1, 2)
            out.append(self._matched(b, r[pairs[:, 0]], c[pairs[:, 1]], confident))
        return out

    def _matched(self, b, r: np.ndarray, c: np.ndarray, confident: bool) -> np.ndarray:
        self.free_track[b, r] = False
        if confident:
            self.free_high[b, c] = False
        tracks = self.tpad[b, r]
        self.matched[self.dpad[b, c]] = tracks
        return tracks

    def wants(self, tracks: np.ndarray) -> bool:
        """Whether a camera has unmatched `tracks` and unmatched confident detections."""
        rows = tracks & self.free_track
        return bool((rows.any(axis=1) & self.free_high.any(axis=1)).any())

    def drop_duplicates(self) -> None:
        """Confident detections left over a confident one matched by DUPLICATE_IOU or more: dropped."""
        taken = self.high & ~self.free_high & ~self.dup  # matched (a duplicate drops nothing more)
        if not (taken.any() and self.free_high.any()):
            return
        if self._dd is None:
            self._dd = _iou(self.dboxes, self.dboxes)
        dup = self.free_high & (np.where(taken[:, None, :], self._dd, 0.0).max(axis=2) >= DUPLICATE_IOU)
        self.free_high &= ~dup
        self.dup |= dup
        self.dropped = _unpad(self.dup, self.dpad, self.n_dets)

    def unmatched_tracks(self) -> np.ndarray:
        """[tracks]: not matched this round."""
        return _unpad(self.free_track, self.tpad, self.n_tracks) if self.any else np.ones(self.n_tracks, bool)

    def fresh(self) -> np.ndarray:
        """[detections]: confident, unmatched and not a duplicate: each starts a track."""
        return _unpad(self.free_high, self.dpad, self.n_dets) if self.any else self._high

    def covered(self) -> np.ndarray:
        """[tracks]: the largest share of each track's predicted box one valid detection covers."""
        if not self.any:
            return np.zeros(self.n_tracks)
        t = self.tboxes
        area = np.maximum((t[..., 2] - t[..., 0]) * (t[..., 3] - t[..., 1]), 1e-9)
        inter = np.where(self.valid[:, None, :], self._overlap(0.0)[1], 0.0)
        return _unpad(inter.max(axis=2) / area, self.tpad, self.n_tracks)

    def over_live(self, state: np.ndarray, live: np.ndarray, fresh: np.ndarray) -> np.ndarray:
        """[detections]: the fresh ones over a live track (as it is now) by OVERLAP_IOU or more."""
        if not self.any or not fresh.any():
            return np.zeros(self.n_dets, bool)
        iou = np.where(_pad(live, self.tpad, False)[:, :, None], _iou(_boxes(_pad(state[:, :4], self.tpad, 0.0)),
                                                                      self.dboxes), 0.0)
        return _unpad(iou.max(axis=1) >= OVERLAP_IOU, self.dpad, self.n_dets)


# ---------------------------------------------------------------------- array helpers
def _padded(group: np.ndarray, counts: list[int], groups: int, n: int | None = None) -> np.ndarray:
    """[groups, most]: the indices of each group's items (items sorted by group), `n` = padding."""
    n = len(group) if n is None else n
    out = np.full((groups, max(counts, default=0)), n)
    starts = np.cumsum([0, *counts[:-1]])
    out[group, np.arange(len(group)) - np.repeat(starts, counts)] = np.arange(len(group))
    return out


def _pad(values: np.ndarray, index: np.ndarray, fill) -> np.ndarray:
    """values[index], the padding index given `fill`."""
    values = np.asarray(values)
    filler = np.full((1, *values.shape[1:]), fill, values.dtype)
    return np.concatenate([values, filler])[index]


def _unpad(padded: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n + 1, padded.dtype)
    out[index] = padded
    return out[:n]


def _boxes(state: np.ndarray) -> np.ndarray:
    """The motion states as xyxy boxes."""
    cx, cy, w, h = state[..., 0], state[..., 1], state[..., 2], state[..., 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def _iou(a: np.ndarray, b: np.ndarray, inter: np.ndarray | None = None) -> np.ndarray:
    """[..., N, 4] x [..., M, 4] (xyxy, float64) -> IoU [..., N, M] (`inter`: their intersections, if known)."""
    inter = _intersections(a, b) if inter is None else inter
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _predict(state: np.ndarray, t: np.ndarray) -> None:
    """Move each track's motion on to media time t[i]. An unseen track (not seen at its state's
    time) keeps its size (as ByteTrack: a box shrinking behind another would vanish), and, unless
    a detection covered it (it is behind another object and goes on), its speed falls by e every
    DECAY_S: an object no longer seen is more likely stopped than going on."""
    unseen = state[:, _SEEN_PTS] < state[:, _T]
    state[unseen, 6:8] = 0.0
    dt = t - state[:, _T]
    state[:, _T] = np.maximum(t, state[:, _T])
    go = dt > 0
    if not go.any():
        return
    g, dt = state[go], dt[go][:, None]
    decay = (unseen & (state[:, _OCCLUDED] == 0))[go]
    if decay.any():
        g[decay, 4:6] *= np.exp(-dt[decay] / DECAY_S)
    steps = dt / _STEP_S
    w, h = np.maximum(g[:, 2:3], 1.0), np.maximum(g[:, 3:4], 1.0)
    qw, qh = (_STD_POSITION * w) ** 2 * steps, (_STD_POSITION * h) ** 2 * steps  # process noise per scale
    rw, rh = (_STD_VELOCITY * w / _STEP_S) ** 2 * steps, (_STD_VELOCITY * h / _STEP_S) ** 2 * steps
    q, r = np.concatenate([qw, qh, qw, qh], axis=1), np.concatenate([rw, rh, rw, rh], axis=1)
    a, b, c = g[:, _P00], g[:, _P01], g[:, _P11]
    g[:, _X] += g[:, _V] * dt
    g[:, _P00], g[:, _P01], g[:, _P11] = a + 2 * dt * b + dt * dt * c + q, b + dt * c, c + r
    g[:, 2:4] = np.maximum(g[:, 2:4], 1.0)
    state[go] = g


def _correct(state: np.ndarray, tracks: np.ndarray, boxes: np.ndarray) -> None:
    """Correct the motion of state[tracks] with measured boxes."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    w, h = np.maximum(x2 - x1, 1.0), np.maximum(y2 - y1, 1.0)
    rw, rh = (_STD_POSITION * w) ** 2, (_STD_POSITION * h) ** 2  # measurement noise per scale
    z = np.stack([(x1 + x2) / 2, (y1 + y2) / 2, w, h], axis=1)
    r = np.stack([rw, rh, rw, rh], axis=1)
    g = state[tracks]
    a, b, c = g[:, _P00], g[:, _P01], g[:, _P11]
    gain = 1 / (a + r)
    k0, k1 = a * gain, b * gain
    innovation = z - g[:, _X]
    g[:, _X] += k0 * innovation
    g[:, _V] += k1 * innovation
    g[:, _P00], g[:, _P01], g[:, _P11] = (1 - k0) * a, (1 - k0) * b, c - k1 * b
    state[tracks] = g


def _grown(boxes: np.ndarray, buffer: float) -> np.ndarray:
    """xyxy boxes grown by `buffer` of their width and height on each side."""
    if not buffer or boxes.size == 0:
        return boxes
    pad = np.stack([boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]], axis=-1) * buffer
    return boxes + np.concatenate([-pad, pad], axis=-1)


# ---------------------------------------------------------------------- one camera, and a lane's cameras
def detection_arrays(detections: Sequence[Detection]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
    """Detection objects as the tracker's arrays: boxes, scores, classes, and the labels."""
    boxes = np.array([d.bbox for d in detections], np.float64).reshape(-1, 4)
    return (boxes, np.array([d.confidence for d in detections], np.float64),
            np.array([d.class_id for d in detections], np.int64), {d.class_id: d.label for d in detections})


class CameraTracker:
    """The tracks of one camera (a TrackTable of one): for tests and benchmarks frame by frame."""

    def __init__(self, settings: TrackSettings) -> None:
        self.settings = settings
        self._table = TrackTable()

    def update(self, detections: Sequence[Detection], pts: float, captured_at: float, epoch: int = 0,
               looks: np.ndarray | None = None) -> TrackedFrame:
        """Associate one frame's detections (and their looks, pipeline.s5_looks, if known);
        returns the confident ones with their track ids."""
        boxes, scores, classes, labels = detection_arrays(detections)
        return self._table.update([FrameInfo("", self.settings, pts, captured_at, epoch)], boxes, scores, classes,
                                  np.zeros(len(boxes), np.int64), labels.__getitem__, looks)[0]

    @property
    def tracks(self) -> list[int]:
        """The ids of the live tracks."""
        return self._table.track_ids("")

    def stop(self) -> list[EndedTrack]:
        """End every track."""
        return self._table.stop("")


class Trackers:
    """The tracks of one lane's cameras, in one TrackTable; each camera's settings are read at
    its first frame. Used by the finish stage only; forget() may come from another thread (the
    camera's rows are dropped at the next batch, by the finish stage)."""

    def __init__(self, settings_for: Callable[[str], TrackSettings], metrics: Metrics,
                 looks_on_gpu: Callable[[], Any] | None = None) -> None:
        """`looks_on_gpu`: makes a pipeline.s5_looks.DeviceSampler, where frames are DeviceFrames
        (made at the first batch that has boxes on one: nothing is held on the GPU before)."""
        self._make_sampler = looks_on_gpu
        self._looks_on_gpu = None
        self._settings_for = settings_for
        self._metrics = metrics
        self._settings: dict[str, TrackSettings] = {}
        self._table = TrackTable()
        self._forgotten: set[str] = set()
        self._children: dict[str, tuple] = {}  # camera -> its metric children (looked up once)
        self._lock = threading.Lock()

    def track(self, meta: FrameMeta, detections: Sequence[Detection],
              picture: Any = None) -> tuple[tuple[Detection, ...], TrackEvents | None]:
        """A frame's publishable detections (with track ids when its camera is tracked) and its
        track events; `picture`: the decoded frame, for the detections' looks."""
        boxes, scores, classes, labels = detection_arrays(detections)
        return self.track_arrays([meta], boxes, scores, classes, np.zeros(len(boxes), np.int64), labels.__getitem__,
                                 [picture])[0]

    def track_batch(self, metas: Sequence[FrameMeta], found: BatchDetections, images: Sequence[int],
                    pictures: Sequence[Any] | None = None) -> list[tuple[tuple[Detection, ...], TrackEvents | None]]:
        """The frames of a batch at once: metas[k] is image images[k] of the batch's detections,
        pictures[k] its decoded picture (for the detections' looks; None: not known)."""
        place = np.full(int(max(images, default=-1)) + 1, -1)
        place[list(images)] = np.arange(len(images))
        image = found.image[found.image < len(place)]
        keep = np.zeros(len(found.image), bool)
        keep[:len(image)] = place[image] >= 0  # rows are sorted by image
        labels, n = found.labels, len(found.labels)
        return self.track_arrays(metas, found.boxes[keep], found.scores[keep], found.classes[keep],
                                 place[found.image[keep]],
                                 lambda c: labels[c] if 0 <= c < n else f"class_{c}", pictures)

    def track_arrays(self, metas: Sequence[FrameMeta], boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
                     owner: np.ndarray, label_of: Callable[[int], str],
                     pictures: Sequence[Any] | None = None) -> list[tuple[tuple[Detection, ...], TrackEvents | None]]:
        """Frames' detections as arrays (row k of frame owner[k], ascending) and the frames'
        pictures -> per frame its publishable detections and its track events (None: the camera
        is not tracked)."""
        with self._lock:
            for cam in self._forgotten:
                self._table.forget(cam)
                self._settings.pop(cam, None)
            self._forgotten.clear()
            settings = []
            for meta in metas:
                s = self._settings.get(meta.camera_id)
                if s is None:
                    s = self._settings[meta.camera_id] = self._settings_for(meta.camera_id)
                settings.append(s)
        out: list = [None] * len(metas)
        tracked = [i for i, s in enumerate(settings) if s.enabled]
        pictures = list(pictures) if pictures is not None else [None] * len(metas)
        if len(tracked) < len(metas):  # not tracked: only the confidence threshold applies
            for i, s in enumerate(settings):
                if not s.enabled:
                    rows = np.flatnonzero((owner == i) & (scores >= s.high_confidence)).tolist()
                    out[i] = (tuple(Detection(int(classes[k]), label_of(int(classes[k])), float(scores[k]),
                                              tuple(boxes[k].tolist())) for k in rows), None)
            place = np.full(len(metas), -1)
            place[tracked] = np.arange(len(tracked))
            rows = place[owner] >= 0
            boxes, scores, classes, owner = boxes[rows], scores[rows], classes[rows], place[owner[rows]]
            pictures = [pictures[i] for i in tracked]
        if not tracked:
            return out
        looks = None
        if any(p is not None for p in pictures) and any(settings[i].appearance for i in tracked):
            if self._looks_on_gpu is None and self._make_sampler is not None and len(boxes) and any(
                    hasattr(p, "luma_ptr") for p in pictures):
                self._looks_on_gpu = self._make_sampler()
            looks = box_looks(pictures, boxes, owner, self._looks_on_gpu)  # read only for cameras that use them
        frames = [FrameInfo(metas[i].camera_id, settings[i], metas[i].pts, metas[i].captured_at, metas[i].epoch)
                  for i in tracked]
        m = self._metrics
        for i, frame in zip(tracked, self._table.update(frames, boxes, scores, classes, owner, label_of, looks)):
            cam = metas[i].camera_id
            children = self._children.get(cam)
            if children is None:
                children = self._children[cam] = (m.tracks_active.labels(cam), m.tracks_started.labels(cam))
            if frame.started:
                children[1].inc(len(frame.started))
            for ended in frame.ended:
                m.tracks_ended.labels(cam, ended.reason).inc()
            if frame.untracked:
                m.detections_untracked.labels(cam).inc(frame.untracked)
            children[0].set(self._table.count(cam))
            if frame.refound:
                m.tracks_refound.labels(cam).inc(len(frame.refound))
            out[i] = (frame.detections, TrackEvents(tuple(frame.started), tuple(frame.ended), tuple(frame.refound)))
        return out

    def close(self) -> None:
        """Free what the looks hold on the GPU (after the finish stage stopped)."""
        if self._looks_on_gpu is not None:
            self._looks_on_gpu.close()
            self._looks_on_gpu = None

    def forget(self, camera_id: str) -> None:
        """A camera was removed: drop its tracks."""
        with self._lock:
            self._forgotten.add(camera_id)
            self._children.pop(camera_id, None)
        try:
            self._metrics.tracks_active.remove(camera_id)
        except KeyError:
            pass
