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
the linear-assignment solver ByteTrack itself and Ultralytics use. Association is pure
(`iou_matrix`, `assign`: arrays in, matches out); the state is one CameraTracker per camera,
owned by the finish stage that numbers that camera's frames.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import lap
import numpy as np

from pipeline.core import Detection, EndedTrack, FrameMeta, TrackEvents
from pipeline.metrics import Metrics

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


# ---------------------------------------------------------------------- association (pure)
def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` [N, 4] with every box of `b` [M, 4] (xyxy) -> [N, M]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    inter = _intersections(a, b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection areas of every box of `a` [N, 4] with every box of `b` [M, 4] (xyxy, float64)."""
    wh = np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None)
    return wh[..., 0] * wh[..., 1]  # both corners at once: fewer numpy calls (the tracker's cost is their overhead)


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


# ---------------------------------------------------------------------- motion
class BoxFilter:
    """Constant-velocity Kalman filter of a box as (cx, cy, w, h), each with its rate per second.

    With diagonal noise the four coordinates are independent filters of (value, rate), so each
    is a 2x2 covariance kept as three floats: plain Python arithmetic, several times cheaper per
    track than numpy's per-call overhead on 8x8 matrices (scripts/bench/bench_tracking.py cost)."""

    __slots__ = ("t", "x", "v", "p00", "p01", "p11")

    def __init__(self, box: Sequence[float], t: float) -> None:
        self.t = t  # media time of the state
        self.x = list(_xywh(box))
        self.v = [0.0, 0.0, 0.0, 0.0]
        scale = self._scales()
        self.p00 = [(2 * _STD_POSITION * s) ** 2 for s in scale]
        self.p01 = [0.0] * 4
        self.p11 = [(10 * _STD_VELOCITY * s / _STEP_S) ** 2 for s in scale]

    def _scales(self) -> tuple[float, float, float, float]:
        w, h = max(self.x[2], 1.0), max(self.x[3], 1.0)
        return (w, h, w, h)

    def predict(self, t: float, decay_s: float | None = None) -> None:
        """Move the state on to media time `t` (seconds); `decay_s`: the speed falls by e every
        that long on the way (an object no longer seen is more likely stopped than going on)."""
        dt, self.t = t - self.t, max(t, self.t)
        if dt <= 0:
            return
        x, v, p00, p01, p11 = self.x, self.v, self.p00, self.p01, self.p11
        if decay_s is not None:
            keep = math.exp(-dt / decay_s)
            v[0] *= keep
            v[1] *= keep
        steps = dt / _STEP_S
        w, h = max(x[2], 1.0), max(x[3], 1.0)
        qw, qh = (_STD_POSITION * w) ** 2 * steps, (_STD_POSITION * h) ** 2 * steps  # process noise per scale
        rw, rh = (_STD_VELOCITY * w / _STEP_S) ** 2 * steps, (_STD_VELOCITY * h / _STEP_S) ** 2 * steps
        for i, q, r in ((0, qw, rw), (1, qh, rh), (2, qw, rw), (3, qh, rh)):  # unrolled by hand: the hot loop
            a, b, c = p00[i], p01[i], p11[i]
            x[i] += v[i] * dt
            p00[i] = a + 2 * dt * b + dt * dt * c + q
            p01[i] = b + dt * c
            p11[i] = c + r
        x[2], x[3] = max(x[2], 1.0), max(x[3], 1.0)

    def update(self, box: Sequence[float]) -> None:
        """Correct the state with a measured box."""
        x1, y1, x2, y2 = box
        w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
        x, v, p00, p01, p11 = self.x, self.v, self.p00, self.p01, self.p11
        rw, rh = (_STD_POSITION * w) ** 2, (_STD_POSITION * h) ** 2  # measurement noise per scale
        for i, z, r in ((0, (x1 + x2) / 2, rw), (1, (y1 + y2) / 2, rh), (2, w, rw), (3, h, rh)):
            a, b, c = p00[i], p01[i], p11[i]
            gain = 1 / (a + r)
            k0, k1 = a * gain, b * gain
            innovation = z - x[i]
            x[i] += k0 * innovation
            v[i] += k1 * innovation
            p00[i], p01[i], p11[i] = (1 - k0) * a, (1 - k0) * b, c - k1 * b

    def box(self) -> tuple[float, float, float, float]:
        """The state as xyxy."""
        cx, cy, w, h = self.x
        return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def _xywh(box: Sequence[float]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = box
    return ((x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, 1.0), max(y2 - y1, 1.0))


# ---------------------------------------------------------------------- tracks
@dataclass(frozen=True)
class TrackSettings:
    """How a camera's objects are tracked (config: `tracking`, per camera `cameras[].tracking`)."""

    high_confidence: float  # detections this confident are published, matched first, and start tracks
    enabled: bool = True
    low_confidence: float = 0.1  # weaker ones only keep existing tracks alive (second pass)
    match_iou: float = 0.2  # least IoU with a track's predicted box for a confident detection
    low_match_iou: float = 0.5  # ... for a low-confidence one
    max_age_s: float = 2.0  # a track unseen this long ends
    jump_s: float = 10.0  # media time moving on by more than this (or backwards) ends every track
    max_tracks: int = 256  # live tracks per camera at most


@dataclass(eq=False)  # a track is itself: removing one from a list must not compare every field
class Track:
    """One object followed over time."""

    track_id: int
    class_id: int  # by vote over its sightings
    label: str
    motion: BoxFilter
    first_seen: float  # capture time (UTC seconds) of its first detection
    last_seen: float  # capture time of its latest detection
    seen_pts: float  # media time of its latest detection
    hits: int = 1
    confirmed: bool = False  # seen in two frames: only then does a lost track get a second chance
    published: bool = True  # its id is in the messages (a new track over a live one: once seen again)
    last_box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # where it was last seen
    occluded: bool = False  # unseen last frame where another object's box covered it
    votes: dict[int, float] = field(default_factory=dict)  # class -> confidence seen as it
    labels: dict[int, str] = field(default_factory=dict)

    def sighted(self, det: Detection) -> None:
        """A detection of this track: its vote for a class, where it was seen."""
        self.votes[det.class_id] = self.votes.get(det.class_id, 0.0) + det.confidence
        self.labels[det.class_id] = det.label
        self.class_id = max(self.votes, key=lambda c: (self.votes[c], c == self.class_id))
        self.label = self.labels[self.class_id]
        self.last_box = tuple(det.bbox)


@dataclass
class TrackedFrame:
    """One frame's detections with their track ids, and the tracks that started or ended."""

    detections: tuple[Detection, ...]
    started: list[int] = field(default_factory=list)
    ended: list[EndedTrack] = field(default_factory=list)
    untracked: int = 0  # detections left without an id (max_tracks reached)


class CameraTracker:
    """The tracks of one camera. Not thread-safe: one finish stage feeds it, in frame order."""

    def __init__(self, settings: TrackSettings) -> None:
        self.settings = settings
        self.tracks: list[Track] = []
        self._next_id = 1
        self._pts: float | None = None
        self._epoch: int | None = None
        self._newly_published: list[int] = []  # hidden tracks seen again this frame: announced now

    def update(self, detections: Sequence[Detection], pts: float, captured_at: float,
               epoch: int = 0) -> TrackedFrame:
        """Associate one frame's detections (all above `low_confidence`); returns the confident
        ones with their track ids. Boxes that are not finite and positive are never tracked."""
        s = self.settings
        ended = self._end_on_discontinuity(pts, epoch)
        before, self._pts, self._epoch = self._pts, pts, epoch
        for track in self.tracks:
            unseen = track.seen_pts < track.motion.t
            if unseen:  # unseen last frame: its size stays as it was (as ByteTrack): a box
                track.motion.v[2] = track.motion.v[3] = 0.0  # shrinking behind another would vanish
            # unseen in the open it may have stopped: its speed decays; behind another object it goes on
            track.motion.predict(pts, DECAY_S if unseen and not track.occluded else None)
        valid = [d for d in detections if _sane(d.bbox) and d.confidence >= s.low_confidence]
        high = [d for d in valid if d.confidence >= s.high_confidence]
        low = [d for d in valid if d.confidence < s.high_confidence]
        ids: dict[int, int] = {}  # index into `high` -> track id
        confirmed = [t for t in self.tracks if t.confirmed]
        tentative = [t for t in self.tracks if not t.confirmed]
        # 1: confirmed tracks (seen lately or not) against the confident detections
        left_tracks, left_high = self._match(confirmed, high, list(range(len(high))), s.match_iou, ids,
                                             pts, captured_at)
        # 2: the confirmed tracks still unmatched against the weak detections: a partly hidden
        # object is often seen only weakly (ByteTrack's second pass; lost tracks too, which
        # finds an object again as it comes out from behind another sooner)
        left_tracks, _ = self._match(left_tracks, low, list(range(len(low))), s.low_match_iou, {}, pts, captured_at)
        # a confident box left over an object matched so far is that object again (the detector's
        # other class for it): the passes with grown boxes below must not give it to a neighbour
        duplicates = set(_over(high, left_high, list(ids), DUPLICATE_IOU))
        left_high = [i for i in left_high if i not in duplicates]
        # 3: steady tracks still unmatched against the confident detections left, with boxes grown
        # by half their size (C-BIoU, Yang et al. 2023): an object hidden behind another is seen
        # shrinking before it goes, so its prediction lags or turns back, and it comes out ahead
        # of it (tracking scenes: IDF1 0.92 -> 0.96 on average over 25/10/7/5 fps, line-crossing
        # errors 22 -> 10 of 376); only tracks seen 3+ times, a young one's speed is noise. A lost
        # track is also looked for where it was last seen (it stopped, or was missed for a few
        # frames while its prediction went on): whichever of the two places fits a box better
        def lost(t: Track) -> bool:  # unseen in the frame before this one too
            return before is not None and t.seen_pts < before

        wanted = [t for t in left_tracks if t.hits >= STEADY_HITS or lost(t)]
        _, left_high = self._match(wanted, high, left_high, s.match_iou, ids, pts, captured_at, buffer=BUFFER,
                                   lost=lost)
        # 4: tentative tracks against the confident detections left, with boxes grown by half
        # their size: a new track has no speed yet, and a small fast object sampled at a few fps
        # moves further than its own size between frames (C-BIoU, Yang et al. 2023)
        left_tentative, left_high = self._match(tentative, high, left_high, s.match_iou, ids, pts, captured_at,
                                                buffer=BUFFER)
        ended += self._end(left_tentative, "unseen")  # a tentative track gets one frame to be seen again
        ended += self._expire(pts)
        unseen = [t for t in self.tracks if t.seen_pts < pts]
        for track, covered in zip(unseen, _covered([t.motion.box() for t in unseen], [d.bbox for d in valid])):
            track.occluded = covered >= OCCLUDED
        started, untracked = [t for t in self._newly_published], 0
        self._newly_published.clear()
        duplicates.update(_over(high, left_high, list(ids), DUPLICATE_IOU))
        fresh = [i for i in left_high if i not in duplicates]
        live_boxes = np.array([t.motion.box() for t in self.tracks] if fresh else [], np.float64).reshape(-1, 4)
        over = (iou_matrix(np.array([high[i].bbox for i in fresh], np.float64), live_boxes).max(axis=1) >= OVERLAP_IOU
                if fresh and len(live_boxes) else np.zeros(len(fresh), bool))
        for i, over_live in zip(fresh, over.tolist()):
            if len(self.tracks) >= s.max_tracks:
                untracked += 1
                continue
            track = Track(self._next_id, high[i].class_id, high[i].label, BoxFilter(high[i].bbox, pts),
                          captured_at, captured_at, pts, published=not over_live)
            track.sighted(high[i])
            self._next_id += 1
            self.tracks.append(track)
            ids[i] = track.track_id
            if track.published:
                started.append(track.track_id)
        by_id = {t.track_id: t for t in self.tracks}
        out = []
        for i, d in enumerate(high):
            if i in duplicates:
                continue
            track = by_id.get(ids.get(i))
            if track is None or not track.published:
                out.append(Detection(d.class_id, d.label, d.confidence, d.bbox, None if track else ids.get(i)))
                continue
            out.append(Detection(d.class_id, d.label, d.confidence, d.bbox, track.track_id, track.class_id, track.label))
        return TrackedFrame(tuple(out), started, ended, untracked)

    def stop(self) -> list[EndedTrack]:
        """End every track (the camera was removed or the daemon stops)."""
        return self._end(list(self.tracks), "stopped")

    def _match(self, tracks: list[Track], dets: Sequence[Detection], candidates: list[int], min_iou: float,
               ids: dict[int, int], pts: float, captured_at: float, buffer: float = 0.0,
               lost: Callable[[Track], bool] | None = None) -> tuple[list[Track], list[int]]:
        """Match `tracks` with dets[candidates], comparing boxes grown by `buffer` of their size
        on each side, and update the matched tracks. A track is at its predicted box; with `lost`
        given, a steady track is at its predicted box, a lost one where it was last seen, and one
        both steady and lost at whichever of the two fits a box better."""
        if not tracks or not candidates:
            return tracks, candidates
        boxes = _grown(np.array([dets[i].bbox for i in candidates], np.float64), buffer)
        iou = iou_matrix(_grown(np.array([t.motion.box() for t in tracks], np.float64), buffer), boxes)
        if lost is not None:  # every track here is steady or lost (or both)
            away = [lost(t) for t in tracks]
            if any(away):
                steady = np.array([t.hits >= STEADY_HITS for t in tracks])
                seen = iou_matrix(_grown(np.array([t.last_box for t in tracks], np.float64), buffer), boxes)
                iou = np.maximum(np.where(steady[:, None], iou, 0.0), np.where(np.array(away)[:, None], seen, 0.0))
        other = np.array([t.class_id for t in tracks])[:, None] != np.array([dets[i].class_id for i in candidates])[None, :]
        cost = 1 - iou + CLASS_MISMATCH * other + DIRECTION_WEIGHT * _backwards(tracks, boxes)
        matches, left_rows, left_cols = assign(cost, 1 - min_iou)
        for r, c in matches:
            track, det = tracks[r], dets[candidates[c]]
            track.motion.update(det.bbox)
            track.last_seen, track.seen_pts = captured_at, pts
            track.hits += 1
            track.confirmed = True
            track.sighted(det)
            if not track.published:
                track.published = True
                self._newly_published.append(track.track_id)
            ids[candidates[c]] = track.track_id
        return [tracks[r] for r in left_rows], [candidates[c] for c in left_cols]

    def _expire(self, pts: float) -> list[EndedTrack]:
        return self._end([t for t in self.tracks if pts - t.seen_pts > self.settings.max_age_s], "unseen")

    def _end_on_discontinuity(self, pts: float, epoch: int) -> list[EndedTrack]:
        if self._pts is None:
            return []
        if epoch != self._epoch:
            reason = "reconnect"
        elif pts < self._pts or pts - self._pts > self.settings.jump_s:
            reason = "time_jump"
        else:
            return []
        return self._end(list(self.tracks), reason)

    def _end(self, tracks: list[Track], reason: str) -> list[EndedTrack]:
        """Remove `tracks`; the ends to announce: a hidden track never published ends unannounced
        (its start never was)."""
        for track in tracks:
            self.tracks.remove(track)
        return [EndedTrack(t.track_id, t.label, t.first_seen, t.last_seen, t.hits, reason) for t in tracks if t.published]


def _backwards(tracks: list[Track], boxes: np.ndarray) -> np.ndarray:
    """[tracks, boxes]: 0 where a box lies ahead of a moving track (from where it was last seen,
    along its velocity) or near it, up to 1 straight behind; 0 for tracks not steadily moving."""
    state = np.array([(t.motion.v[0], t.motion.v[1], t.motion.x[2] * t.motion.x[3], t.hits, *t.last_box)
                      for t in tracks], np.float64)
    velocity, size = state[:, 0:2], np.sqrt(np.maximum(state[:, 2], 1.0))
    speed = np.hypot(velocity[:, 0], velocity[:, 1])
    moving = (state[:, 3] >= STEADY_HITS) & (speed >= MOVING * size)
    if not moving.any():
        return np.zeros((len(tracks), len(boxes)))
    d = ((boxes[:, :2] + boxes[:, 2:]) / 2)[None, :, :] - ((state[:, 4:6] + state[:, 6:8]) / 2)[:, None, :]
    dist = np.hypot(d[..., 0], d[..., 1])
    cos = (d[..., 0] * velocity[:, None, 0] + d[..., 1] * velocity[:, None, 1]) / np.maximum(dist * speed[:, None], 1e-9)
    return np.where(moving[:, None], (1 - cos) / 2 * np.minimum(1.0, dist / (NEAR * size[:, None])), 0.0)


def _covered(boxes: list, others: list) -> np.ndarray:
    """The largest share of each box's area that one of `others` covers."""
    if not boxes or not others:
        return np.zeros(len(boxes))
    a, b = np.asarray(boxes, np.float64), np.asarray(others, np.float64)
    area = np.maximum((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), 1e-9)
    return _intersections(a, b).max(axis=1) / area


def _over(dets: Sequence[Detection], candidates: list[int], others: list[int], min_iou: float) -> list[int]:
    """The candidates whose box overlaps one of the `others`' boxes by `min_iou` or more."""
    if not candidates or not others:
        return []
    iou = iou_matrix(np.array([dets[i].bbox for i in candidates], np.float64),
                     np.array([dets[i].bbox for i in others], np.float64))
    return [i for i, best in zip(candidates, iou.max(axis=1)) if best >= min_iou]


def _grown(boxes: np.ndarray, buffer: float) -> np.ndarray:
    """xyxy boxes grown by `buffer` of their width and height on each side."""
    if not buffer or len(boxes) == 0:
        return boxes
    pad = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1) * buffer
    return boxes + np.concatenate([-pad, pad], axis=1)


def _sane(box: Sequence[float]) -> bool:
    x1, y1, x2, y2 = box
    return math.isfinite(x1 + y1 + x2 + y2) and x2 > x1 >= 0 and y2 > y1 >= 0


class Trackers:
    """The trackers of one lane's cameras, each made on the camera's first frame; used by the
    finish stage only (forget() may come from another thread)."""

    def __init__(self, settings_for: Callable[[str], TrackSettings], metrics: Metrics) -> None:
        self._settings_for = settings_for
        self._metrics = metrics
        self._trackers: dict[str, tuple[TrackSettings, CameraTracker | None]] = {}
        self._active: dict[str, object] = {}  # camera -> tracks_active's child (looked up once)
        self._lock = threading.Lock()

    def track(self, meta: FrameMeta, detections: Sequence[Detection]) -> tuple[tuple[Detection, ...], TrackEvents | None]:
        """A frame's publishable detections (with track ids when its camera is tracked) and its track events."""
        cam = meta.camera_id
        with self._lock:
            if cam not in self._trackers:
                settings = self._settings_for(cam)
                self._trackers[cam] = (settings, CameraTracker(settings) if settings.enabled else None)
            settings, tracker = self._trackers[cam]
        if tracker is None:  # not tracked: only the confidence threshold applies
            return tuple(d for d in detections if d.confidence >= settings.high_confidence), None
        frame = tracker.update(detections, meta.pts, meta.captured_at, meta.epoch)
        m = self._metrics
        if frame.started:
            m.tracks_started.labels(cam).inc(len(frame.started))
        for ended in frame.ended:
            m.tracks_ended.labels(cam, ended.reason).inc()
        if frame.untracked:
            m.detections_untracked.labels(cam).inc(frame.untracked)
        active = self._active.get(cam)
        if active is None:
            active = self._active[cam] = m.tracks_active.labels(cam)
        active.set(len(tracker.tracks))
        return frame.detections, TrackEvents(tuple(frame.started), tuple(frame.ended))

    def forget(self, camera_id: str) -> None:
        """A camera was removed: drop its tracks."""
        with self._lock:
            self._trackers.pop(camera_id, None)
            self._active.pop(camera_id, None)
        try:
            self._metrics.tracks_active.remove(camera_id)
        except KeyError:
            pass
