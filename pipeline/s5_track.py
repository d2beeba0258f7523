"""Track: stable ids for the objects of each camera, after postprocessing and before publishing.

A ByteTrack-style tracker (Zhang et al., 2022) per camera: a constant-velocity Kalman filter per
track, associated with the new detections by IoU in two passes: tracks against confident
detections first, then the tracks still unmatched against low-confidence ones (which keeps a
track alive through a partial occlusion; the weak box goes out under the track's id, as
ByteTrack outputs it, unless `publish_weak` is off; a weak box over an object matched in the
first pass is that object again, and neither matched nor published), then steady tracks
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
- **Full occlusions and look-alikes** (issue 35): each track keeps an average look
  (pipeline.s5_looks). A track unseen for `max_age_s` is lost, not ended: until `lost_s` it is
  found again by its look, within the reach of its motion (its size and the speed it had when
  last seen, per second unseen), before tentative tracks take boxes, and only if it was seen
  `REFIND_HITS` times (a false box's look is the background's). Where two tracks want one box
  their looks weigh in; a pair that motion hardly holds (IoU under `GATE_IOU`) whose looks share
  next to nothing is never matched; a steady track seen in the frame before is matched to no box
  it would have to jump to (more than half its size plus `JUMP_TRAVEL` times its way in the gap).
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
supervision, rich and requests: too heavy for an edge daemon). Where a track or a detection of a
camera has two candidates under the limit, the pass is a minimum-cost assignment (the problem
ByteTrack and Ultralytics give `lap.lapjv`); elsewhere the pairs under it are the matching.

The state of a lane's cameras is one TrackTable: every track a row of float64 columns. The finish
stage hands it a whole batch at once (`Trackers.track_batch`, the postprocessed batch's arrays).
A round (each camera's frame once) is one call of the compiled association (pipeline.s5_match:
prediction, the five passes, the assignments) and one of the compiled sighting update (Kalman
corrections, class votes, looks), each a loop over the batch's cameras in numba, with no Python
per object or per pass; they make the same decisions as the array tracker they replaced (its
messages on the tracking, breaker and occluder scenes at 25, 10 and 5 fps are byte-identical).
Per-object Python is left where tracks start or end and where the messages' Detection objects are
made. CameraTracker is a table of one camera, for tests and tools.
"""
from __future__ import annotations

import threading
from itertools import chain
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import numpy as np

from pipeline.core import Detection, EndedTrack, FrameMeta, TrackEvents
from pipeline.metrics import Metrics
from pipeline.s5_looks import LOOK_BINS
from pipeline.s5_looks import looks as box_looks
from pipeline.s5_match import (  # the track state's columns and the motion's noise
    CLASS as _CLASS, COLUMNS as _COLUMNS, CONFIRMED as _CONFIRMED, FIRST as _FIRST, HITS as _HITS, ID as _ID,
    LAST as _LAST, LAST_SEEN as _LAST_SEEN, MISSED as _MISSED, OCCLUDED as _OCCLUDED, P00 as _P00,
    P11 as _P11, PUBLISHED as _PUBLISHED, REFIND_PASS as _REFIND_PASS, SEEN_PTS as _SEEN_PTS,
    STD_POSITION as _STD_POSITION, STD_VELOCITY as _STD_VELOCITY, STEP_S as _STEP_S, T as _T, X as _X)
from pipeline.s5_match import associate, over_live, sighted, warm
from pipeline.s5_postprocess import BatchDetections

OCCLUDED = 0.3  # an unseen track this much covered by a detection is behind it, not stopped
MAX_CLASSES = 1024  # distinct class ids a lane's tracker votes over (COCO has 80, Open Images 601)
TENTATIVE_MISSES = 1  # a tentative track survives this many frames in a row unseen (confirmed by a second hit)


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


# ---------------------------------------------------------------------- settings and results
@dataclass(frozen=True)
class TrackSettings:
    """How a camera's objects are tracked (config: `tracking`, per camera `cameras[].tracking`)."""

    high_confidence: float  # detections this confident are published, matched first, and start tracks
    enabled: bool = True
    low_confidence: float = 0.1  # weaker ones only continue existing tracks (second pass)
    match_iou: float = 0.2  # least IoU with a track's predicted box for a confident detection
    low_match_iou: float = 0.5  # ... for a low-confidence one
    max_age_s: float = 2.0  # a track unseen this long is lost: no longer matched by motion
    lost_s: float = 8.0  # ... and ends when unseen this long (found again by its look until then; at least max_age_s)
    appearance: bool = True  # use the looks (pipeline.s5_looks) where motion cannot decide
    publish_weak: bool = True  # a weak detection that continues a confirmed track is published under its id
    jump_s: float = 10.0  # media time moving on by more than this (or backwards) ends every track
    max_tracks: int = 256  # live tracks per camera at most

    @classmethod
    def of(cls, tracking, high_confidence: float, fps: float | None = None) -> TrackSettings:
        """A camera's settings from its `tracking` section (pipeline.config.TrackingConfig: each of its
        keys that is a field here, by name) and its model's confidence; at `fps` frames a second a
        track stays matched by motion for at least 3 frame intervals, however short `max_age_s`."""
        given = {f.name: getattr(tracking, f.name) for f in fields(cls) if f.name in type(tracking).model_fields}
        if fps:
            given["max_age_s"] = max(tracking.max_age_s, 3 / fps)
        return cls(high_confidence, **given)


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
# One row per track of every camera of a lane, float64 columns (counts and ids are exact in them),
# laid out by pipeline.s5_match (the compiled round reads them).


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
        warm()  # the compiled round, now rather than in the first batch

    # ------------------------------------------------------------------ public
    def update(self, frames: Sequence[FrameInfo], boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray,
               owner: np.ndarray, label_of: Callable[[int], str], looks: np.ndarray | None = None) -> list[TrackedFrame]:
        """Track the detections of `frames`: row k of boxes [M, 4] (xyxy), scores [M], classes
        [M] and looks [M, LOOK_BINS] (pipeline.s5_looks; NaN or None: unknown) is of
        frames[owner[k]], `owner` ascending; bad boxes and boxes below the camera's low
        confidence are left out here -> one TrackedFrame per frame, in order. Frames of one
        camera are tracked one after the other, in the order given."""
        boxes = np.array(boxes, np.float64).reshape(-1, 4)  # (copies: the compiled round takes writable arrays)
        scores, classes = np.asarray(scores, np.float64), np.array(classes, np.int64)
        owner = np.asarray(owner, np.int64)
        looks = np.full((len(boxes), LOOK_BINS), np.nan) if looks is None else np.array(looks, np.float64)
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
        with np.errstate(invalid="ignore"):  # boxes that are not finite and positive are never tracked
            x1, y1, x2, y2 = boxes.T
            valid = (np.isfinite(x1 + y1 + x2 + y2) & (x2 > x1) & (x1 >= 0) & (y2 > y1) & (y1 >= 0)
                     & (scores >= np.array([x.low_confidence for x in s])[owner]))
        high = valid & (scores >= np.array([x.high_confidence for x in s])[owner])
        appearance = np.array([x.appearance for x in s])
        track_looks = np.where(appearance[track_cam][:, None], self._looks[rows], np.nan)
        det_looks = np.where(appearance[owner][:, None], looks, np.nan)
        confirmed = state[:, _CONFIRMED] > 0
        tstart = np.zeros(n + 1, np.int64)
        tstart[1:] = np.cumsum(counts)
        dstart = np.searchsorted(owner, np.arange(n + 1))
        any_look = bool((~np.isnan(track_looks[:, 0])).any() and (~np.isnan(det_looks[:, 0])).any())
        # prediction and the five passes (pipeline.s5_match, compiled): 1, confirmed tracks seen
        # within max_age_s against the confident detections, 2, against the weak ones, 3, steady
        # and lost tracks, boxes grown (where they were last seen too), 4, lost tracks by their
        # looks, 5, tentative tracks, boxes grown; duplicates dropped after 2, 4 and 5
        matched, fresh, dropped, unmatched, step, covered = associate(
            state, tstart, at, unseen_for <= max_age, unseen_for, track_looks, boxes, classes, high, valid & ~high,
            valid, dstart, det_looks, 1 - np.array([x.match_iou for x in s]),
            1 - np.array([x.low_match_iou for x in s]), before, any_look)
        hidden = sighted(state, rows, matched, boxes, scores, classes, owner, pts,
                         np.array([f.captured_at for f in frames], np.float64), high, det_looks, self._votes,
                         self._classes, self._looks)
        # a tentative track survives TENTATIVE_MISSES frames unseen; a track unseen for max_age_s
        # is lost, and ends at lost_s if it has a look to be found again by (else at max_age_s)
        state[:, _MISSED] = np.where(unmatched, state[:, _MISSED] + 1, 0)
        gone = ~confirmed & unmatched & (state[:, _MISSED] > TENTATIVE_MISSES)
        keep_for = np.where(~np.isnan(track_looks[:, 0]), np.array([max(x.lost_s, x.max_age_s) for x in s])[track_cam],
                            max_age)
        expired = ~gone & (at - state[:, _SEEN_PTS] > keep_for)
        live = ~gone & ~expired
        # an unseen track that a detection covers is behind it (its prediction goes on), not stopped
        unseen = live & (state[:, _SEEN_PTS] < at)
        state[unseen, _OCCLUDED] = covered[unseen] >= OCCLUDED
        # (a lost track is no object in view: a box over it is not over a live one)
        over = over_live(state, tstart, live & ((unseen_for <= max_age) | ~unmatched), boxes, valid, dstart, fresh)
        self._state[rows] = state
        # what each camera saw: ends, starts, and the message's detections
        newly = [[] for _ in frames]  # hidden tracks seen again: their start is announced now, pass by pass
        if hidden.any():
            for t in sorted(np.flatnonzero(hidden & (step > 0)).tolist(), key=lambda t: (track_cam[t], step[t], t)):
                newly[track_cam[t]].append(int(state[t, _ID]))
        back = [[] for _ in frames]  # lost tracks (unseen over max_age_s) found again
        for t in np.flatnonzero((step == _REFIND_PASS) & (unseen_for > max_age) & ~hidden).tolist():
            back[track_cam[t]].append(int(state[t, _ID]))
        # in the message: the confident boxes that are not duplicates, and the weak ones that
        # continue a confirmed track (pass 2; ByteTrack's output) where the camera publishes them
        weak_kept = valid & ~high & (matched >= 0) & np.array([x.publish_weak for x in s])[owner]
        shown = np.flatnonzero((high & ~dropped) | weak_kept)
        lists = _Lists(list(map(tuple, boxes.tolist())), scores.tolist(), classes.tolist(), matched.tolist(),
                       state[:, _ID].astype(np.int64).tolist(), state[:, _CLASS].astype(np.int64).tolist(),
                       fresh.tolist(), over.tolist(), boxes, det_looks)
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
                out.append(make(kind, (cls, labels[cls], scores[d], boxes[d], track_id[t], tc, labels[tc], None)))
            elif not x.fresh[d] or len(cam.rows) >= max_tracks:
                untracked += x.fresh[d]
                out.append(make(kind, (cls, labels[cls], scores[d], boxes[d], None, None, None, None)))
            elif x.over_live[d]:  # a new box over a live track: its id goes out once it is seen again
                self._start(cam, x.array[d], cls, scores[d], f, x.looks[d], published=False)
                out.append(make(kind, (cls, labels[cls], scores[d], boxes[d], None, None, None, None)))
            else:
                new_id = self._start(cam, x.array[d], cls, scores[d], f, x.looks[d], published=True)
                started.append(new_id)
                out.append(make(kind, (cls, labels[cls], scores[d], boxes[d], new_id, cls, labels[cls], None)))
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


# ---------------------------------------------------------------------- array helpers
def _iou(a: np.ndarray, b: np.ndarray, inter: np.ndarray | None = None) -> np.ndarray:
    """[..., N, 4] x [..., M, 4] (xyxy, float64) -> IoU [..., N, M] (`inter`: their intersections, if known)."""
    inter = _intersections(a, b) if inter is None else inter
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


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
