"""Alert rules (YAML models) and their evaluation over detections/v1 messages, in event time.

Kinds:
- dwell: an object of `classes` in the zone for `for_s` seconds. With track ids in the messages
  (the daemon's default) it is the same object: one alert per track, carrying its id; without
  them, any object (a gap in sightings shorter than `clear_s` is a missed detection).
- count: more than `above` objects in the zone for `for_s` seconds: distinct tracks, each counted
  while it was seen in the zone within the last `clear_s` seconds (detections per frame without
  track ids). Alerts carry the track ids.
- line: a track crossing a polyline: one event per crossing, `in` or `out` by the side it crosses
  to (`in_side`, as seen walking the line from its first point to its last), with the running
  counts per direction (also exported as metrics). Needs track ids.

dwell and count are episodes, each a small state machine driven by the frames' `captured_at`:
idle -> pending (condition true) -> firing after `for_s` seconds of it (event "firing") -> idle
after `clear_s` seconds without it, or when its track ends (event "resolved").
An object is where the middle of its box's bottom edge (where it stands) is.
"""
from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.config import CAMERA_ID, load_yaml_model
from pipeline.evidence import REQUESTS_SCHEMA
from pipeline.messages import rfc3339_ms

ALERTS_SCHEMA = "alerts/v2"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AlertsKafka(_Strict):
    """Where detections are read and alerts written."""

    bootstrap_servers: str = Field("127.0.0.1:9092", description="comma-separated host:port list")
    detections_topic: str = Field("detections", description="topic the daemon publishes detections/v1 to")
    alerts_topic: str = Field("alerts", description="topic alert events (alerts/v1) are published to")
    group_id: str = Field("rtsp-alerts", description="consumer group; offsets are committed after alerts are sent")
    requests_topic: str = Field("clip-requests", description="topic the rules' clip and snapshot requests "
                                "(clip-requests/v1) go to; the daemons read it (their clips.requests_topic)")
    start_from: Literal["latest", "earliest"] = Field(
        "latest", description="where a new consumer group starts: latest (only new frames) or earliest")


class AlertsMetrics(_Strict):
    """Where the consumer serves its Prometheus metrics (line-crossing counts, alerts, tracks in zones)."""

    listen: str | None = Field("127.0.0.1:9109", description="host:port for /metrics; null: none")


class Zone(_Strict):
    """A polygon in one camera's picture, in source pixels."""

    camera: str = Field(pattern=CAMERA_ID, description="the camera whose picture the polygon is drawn on")
    polygon: list[tuple[float, float]] = Field(min_length=3, description="[[x, y], ...] in source pixels, 3 or more")

    @field_validator("polygon")
    @classmethod
    def _simple(cls, polygon: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if abs(_area(polygon)) < 1:
            raise ValueError("the polygon has no area (its points are on one line); draw the zone's outline")
        edges = list(zip(polygon, polygon[1:] + polygon[:1]))
        for i, j in _pairs(len(edges), closed=True):
            if _cross(*edges[i], *edges[j]):
                raise ValueError(f"the polygon crosses itself (edges {i + 1} and {j + 1}); list its corners "
                                 "in order around the zone")
        return polygon


class Line(_Strict):
    """A polyline in one camera's picture that tracks are counted across, in source pixels."""

    camera: str = Field(pattern=CAMERA_ID, description="the camera whose picture the line is drawn on")
    points: list[tuple[float, float]] = Field(min_length=2, description="[[x, y], ...] in source pixels, 2 or more")
    in_side: Literal["left", "right"] = Field(
        "left", description="crossing to this side, as seen walking the line from its first point to its "
        "last, counts as `in`; the other way as `out`")
    margin_px: float = Field(
        4, ge=0, le=1000, description="an object must be this far past the line for a crossing to count "
        "(a box jittering on the line is not a crossing)")
    margin_of_height: float = Field(
        0.15, ge=0, le=2, description="... and this fraction of its box's height, if more (detected boxes "
        "jitter in proportion to their size)")
    confirm_frames: int = Field(
        2, ge=1, le=100, description="sightings in a row on the other side that make a crossing (a box "
        "that shrinks for a frame behind another object is not one)")

    @field_validator("points")
    @classmethod
    def _not_degenerate(cls, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        segments = list(zip(points, points[1:]))
        for k, (a, b) in enumerate(segments):
            if (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 < 1:
                raise ValueError(f"segment {k + 1} has no length (points {k + 1} and {k + 2} are the same); "
                                 "give distinct points")
        for i, j in _pairs(len(segments), closed=False):
            if _cross(*segments[i], *segments[j]):
                raise ValueError(f"the line crosses itself (segments {i + 1} and {j + 1}); draw it without loops")
        return points


class ClipAsk(_Strict):
    """An evidence clip for each alert of a rule, cut by the daemon that runs the camera (its
    clips.enabled) from its ring of encoded video."""

    pre_s: float = Field(10, ge=0, le=120, description="seconds before the alert's frame (at most the daemon's "
                         "clips.pre_s); the clip starts at the keyframe at or before it")
    post_s: float = Field(10, ge=0, le=120, description="seconds after the alert's frame")


class Rule(_Strict):
    """One alert condition."""

    id: str = Field(pattern=CAMERA_ID, description="names the rule in every alert")
    kind: Literal["dwell", "count", "line"] = Field(
        description="dwell: an object of `classes` in the zone for `for_s` seconds (the same object, "
                    "when tracked); count: more than `above` of them for `for_s` seconds; line: every "
                    "crossing of `line` by a tracked object")
    classes: list[str] = Field(min_length=1, description="labels that count, e.g. [person]: the track's label "
                               "(voted over its sightings) where the message has one, else the detector's, so a "
                               "one-frame class flicker neither starts nor ends an alert")
    zone: str | None = Field(None, description="dwell, count: a zone name; omitted: the whole picture")
    line: str | None = Field(None, description="line: a line name (under `lines`)")
    cameras: list[str] | None = Field(None, description="cameras the rule watches; default: the zone's or "
                                      "line's, else all")
    above: int = Field(0, ge=0, description="count: alert when more than this many are seen")
    for_s: float = Field(0, ge=0, le=86400, description="seconds the condition must hold before the alert fires")
    clear_s: float = Field(2, ge=0, le=3600, description="seconds without the condition that resolve the alert")
    min_confidence: float = Field(0.0, ge=0, le=1, description="detections below this confidence are ignored")
    attributes: dict[str, list[str]] | None = Field(
        None, description="classifiers' labels a detection must have, e.g. {colour: [red, yellow]}: its "
        "attribute's track_label (voted over the track's sightings) where the message has one, else its label; "
        "a detection without that attribute does not count")
    models: list[str] | None = Field(None, min_length=1, description="the models whose detections the rule reads "
                                     "(their messages' `model.name`); default: every model's, each on its own "
                                     "(track ids are per camera and model)")
    clip: ClipAsk | None = Field(None, description="ask the camera's daemon for a clip of each alert (firing, "
                                 "crossed); the alert names it (`evidence.clip`), a clips/v1 message says when "
                                 "it is written")
    snapshot: bool = Field(False, description="ask the camera's daemon for each alerted track's best picture "
                           "(highest confidence x box area), as a JPEG and a copy with its box drawn; the alert "
                           "names them (`evidence.snapshots`), a snapshots/v1 message says when they are written")

    @model_validator(mode="after")
    def _fields_of_its_kind(self) -> Rule:
        if self.kind == "dwell" and self.above:
            raise ValueError("`above` is for count rules; a dwell rule fires on one object")
        if self.kind == "line" and (self.line is None or self.zone is not None):
            raise ValueError("a line rule needs `line` (a name under `lines`) and no `zone`")
        if self.kind != "line" and self.line is not None:
            raise ValueError("`line` is for line rules; dwell and count rules watch a `zone`")
        return self


class AlertRules(_Strict):
    """The alerting consumer's file."""

    kafka: AlertsKafka = Field(default_factory=AlertsKafka, description="topics and consumer group")
    metrics: AlertsMetrics = Field(default_factory=lambda: AlertsMetrics(), description="Prometheus metrics")
    zones: dict[str, Zone] = Field(default_factory=dict, description="named polygons, per camera")
    lines: dict[str, Line] = Field(default_factory=dict, description="named polylines, per camera")
    rules: list[Rule] = Field(min_length=1, description="the alert conditions")

    @field_validator("rules")
    @classmethod
    def _unique_ids(cls, rules: list[Rule]) -> list[Rule]:
        seen = [r.id for r in rules]
        dupes = sorted({i for i in seen if seen.count(i) > 1})
        if dupes:
            raise ValueError(f"rule ids must be unique; repeated: {', '.join(dupes)}")
        return rules

    @model_validator(mode="after")
    def _zones_and_lines_exist(self) -> AlertRules:
        for rule in self.rules:
            if rule.zone is not None and rule.zone not in self.zones:
                raise ValueError(f"rule {rule.id!r} names zone {rule.zone!r}, which is not under `zones` "
                                 f"(known: {', '.join(sorted(self.zones)) or 'none'})")
            if rule.line is not None and rule.line not in self.lines:
                raise ValueError(f"rule {rule.id!r} names line {rule.line!r}, which is not under `lines` "
                                 f"(known: {', '.join(sorted(self.lines)) or 'none'})")
        return self


def load_rules(path) -> AlertRules:
    """Read and validate an alert rules file; ConfigError lists every problem with file:line."""
    return load_yaml_model(path, AlertRules, what="a mapping with kafka, zones and rules")


def inside(point: tuple[float, float], polygon: list[tuple[float, float]]) -> bool:
    """Even-odd ray casting."""
    x, y = point
    hit = False
    for (x1, y1), (x2, y2) in zip(polygon, polygon[1:] + polygon[:1]):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            hit = not hit
    return hit


def crossing(line: Line, start: tuple[float, float], end: tuple[float, float]) -> str | None:
    """"in" or "out" when moving from `start` to `end` crosses `line`, else None."""
    for a, b in zip(line.points, line.points[1:]):
        if _cross(a, b, start, end):
            to_left = _side(a, b, end) < 0  # image y points down: negative is left of a -> b
            return "in" if to_left == (line.in_side == "left") else "out"
    return None


def line_margin(line: Line, bbox) -> float:
    """How far past `line` an object with this box must be to be on one side."""
    return max(line.margin_px, line.margin_of_height * (bbox[3] - bbox[1]))


def distance_to(line: Line, p: tuple[float, float]) -> float:
    """Distance from `p` to the polyline."""
    return min(_segment_distance(a, b, p) for a, b in zip(line.points, line.points[1:]))


def _side(a, b, p) -> float:
    return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])


def _cross(a, b, c, d) -> bool:
    """Segments ab and cd cross (touching at an end counts)."""
    d1, d2, d3, d4 = _side(c, d, a), _side(c, d, b), _side(a, b, c), _side(a, b, d)
    if ((d1 > 0) != (d2 > 0) and d1 != 0 and d2 != 0) and ((d3 > 0) != (d4 > 0) and d3 != 0 and d4 != 0):
        return True
    return any(v == 0 and _on(*seg, q) for v, seg, q in ((d1, (c, d), a), (d2, (c, d), b), (d3, (a, b), c),
                                                         (d4, (a, b), d)))


def _on(a, b, p) -> bool:
    return min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])


def _segment_distance(a, b, p) -> float:
    dx, dy = b[0] - a[0], b[1] - a[1]
    t = max(0.0, min(1.0, ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / (dx * dx + dy * dy)))
    return ((p[0] - a[0] - t * dx) ** 2 + (p[1] - a[1] - t * dy) ** 2) ** 0.5


def _area(polygon) -> float:
    return sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(polygon, polygon[1:] + polygon[:1])) / 2


def _pairs(n: int, closed: bool):
    """Index pairs of edges that share no corner (neighbours always touch)."""
    for i in range(n):
        for j in range(i + 2, n):
            if not (closed and i == 0 and j == n - 1):
                yield i, j


def anchor(det: dict) -> tuple[float, float]:
    """Where an object stands: the middle of its box's bottom edge."""
    x1, _, x2, y2 = det["bbox"]
    return ((x1 + x2) / 2, y2)


@dataclass
class _Episode:
    since: float | None = None  # when the condition started holding (pending or firing)
    last_true: float | None = None
    firing: bool = False
    alert_id: str = ""
    peak: float = 0.0
    track_ids: list = field(default_factory=list)


class LineCounter:
    """Crossings of one line by tracked objects: each object's side is settled when it stands
    beyond the line's margin, and a crossing is `confirm_frames` settled sightings in a row past
    the line from the side it was on. Used by line rules and to count the truth the same way."""

    def __init__(self, line: Line) -> None:
        self.line = line
        self.counts = {"in": 0, "out": 0}
        self._settled: dict = {}  # object -> (point on its side, at)
        self._pending: dict = {}  # object -> (direction, sightings so far)

    def observe(self, key, bbox, at: float) -> str | None:
        """One sighting of object `key`; "in" or "out" when it completes a crossing."""
        point = ((bbox[0] + bbox[2]) / 2, bbox[3])
        if distance_to(self.line, point) < line_margin(self.line, bbox):
            return None  # on the line: no side
        settled = self._settled.get(key)
        direction = crossing(self.line, settled[0], point) if settled is not None else None
        if direction is None:
            self._settled[key] = (point, at)
            self._pending.pop(key, None)
            return None
        before, seen = self._pending.get(key, (direction, 0))
        seen = seen + 1 if before == direction else 1
        if seen < self.line.confirm_frames:
            self._pending[key] = (direction, seen)
            return None
        self._settled[key] = (point, at)
        self._pending.pop(key, None)
        self.counts[direction] += 1
        return direction

    def forget(self, keys=(), before: float | None = None) -> None:
        """Drop objects that ended, and any not seen since `before` (their end was in a lost message)."""
        stale = {k for k, (_, at) in self._settled.items() if before is not None and at < before}
        for key in stale | set(keys):
            self._settled.pop(key, None)
            self._pending.pop(key, None)


TRACK_MEMORY_S = 300.0  # a track's line state is dropped this long after its last sighting, ended or not


@dataclass
class AlertEngine:
    """Feeds detections/v1 messages through every rule; returns the alert events to publish."""

    rules: AlertRules
    on_event: object = None  # (event) -> None, e.g. metrics
    _episodes: dict[tuple, _Episode] = field(default_factory=dict)
    # state is kept per (camera, model): a "scope"; each model tracks on its own, so its track ids are its own
    _zone_tracks: dict[tuple[str, tuple], dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    _lines: dict[tuple[str, tuple], LineCounter] = field(default_factory=dict)
    _runs: dict[str, str | None] = field(default_factory=dict)
    _by_id: dict[str, Rule] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_id = {rule.id: rule for rule in self.rules.rules}

    def _new_run(self, camera: str) -> None:
        """Forget a camera's tracks: its daemon restarted and numbers tracks from 1 again."""
        for key in [k for k in self._episodes if len(k) == 3 and k[1][0] == camera]:
            del self._episodes[key]
        for key, present in self._zone_tracks.items():
            if key[1][0] == camera:
                present.clear()
        for key, counter in self._lines.items():
            if key[1][0] == camera:
                counter.forget(before=float("inf"))

    def feed(self, message: dict) -> list[dict]:
        """One detections/v1 message -> zero or more alerts/v2 events."""
        camera = message["camera_id"]
        model = (message.get("model") or {}).get("name", "")
        scope = (camera, model)
        at = _seconds(message["frame"]["captured_at"])
        tracked = "tracks" in message
        ended = {t["track_id"] for t in message.get("tracks", {}).get("ended", ())}
        if self._runs.get(camera, message.get("run_id")) != message.get("run_id"):
            self._new_run(camera)  # track ids are unique within a run: the daemon restarted
        self._runs[camera] = message.get("run_id")
        events: list[dict] = []
        for rule in self.rules.rules:
            if not self._watches(rule, camera) or (rule.models is not None and model not in rule.models):
                continue
            matched = self._matching(rule, message["detections"])
            if rule.kind == "line":
                events += self._line(rule, scope, at, message, matched, ended)
            elif rule.kind == "dwell" and tracked:
                events += self._dwell_per_track(rule, scope, at, message, matched, ended)
            else:
                events += self._episode_events(rule, scope, at, message, matched, tracked, ended)
        for event in events:
            rule = self._by_id[event["rule"]]
            if (rule.clip is not None or rule.snapshot) and event["state"] != "resolved":
                event["evidence"] = evidence(rule, event)
            if self.on_event is not None:
                self.on_event(event)
        return events

    def line_counts(self) -> dict[tuple[str, str], dict[str, int]]:
        """(rule, camera) -> crossings so far, per direction (the models' summed)."""
        out: dict[tuple[str, str], dict[str, int]] = {}
        for (rule, (camera, _model)), counter in list(self._lines.items()):
            total = out.setdefault((rule, camera), {})
            for direction, n in counter.counts.items():
                total[direction] = total.get(direction, 0) + n
        return out

    def _watches(self, rule: Rule, camera: str) -> bool:
        if rule.cameras is not None:
            return camera in rule.cameras
        if rule.zone is not None:
            return self.rules.zones[rule.zone].camera == camera
        if rule.line is not None:
            return self.rules.lines[rule.line].camera == camera
        return True

    def _matching(self, rule: Rule, detections: list[dict]) -> list[dict]:
        polygon = self.rules.zones[rule.zone].polygon if rule.zone else None
        return [det for det in detections
                if det.get("track_label", det["label"]) in rule.classes and det["confidence"] >= rule.min_confidence
                and (polygon is None or inside(anchor(det), polygon))
                and (rule.attributes is None or _has_attributes(det, rule.attributes))]

    # ---------------------------------------------------------------- line
    def _line(self, rule: Rule, scope: tuple, at: float, message: dict, matched: list[dict], ended: set) -> list[dict]:
        counter = self._lines.get((rule.id, scope))
        if counter is None:
            counter = self._lines[(rule.id, scope)] = LineCounter(self.rules.lines[rule.line])
        events = []
        for det in matched:
            if det.get("track_id") is None:
                continue  # untracked: no identity to count once
            direction = counter.observe(det["track_id"], det["bbox"], at)
            if direction is not None:
                events.append(self._crossing(rule, scope, at, message, det, direction, counter))
        counter.forget(ended, at - TRACK_MEMORY_S)
        return events

    def _crossing(self, rule, scope, at, message, det, direction, counter: LineCounter) -> dict:
        return {"schema": ALERTS_SCHEMA, "alert_id": f"{rule.id}:{_scope_id(scope)}:{det['track_id']}:{round(at * 1000)}",
                "rule": rule.id, "kind": "line", "state": "crossed", "camera_id": scope[0], "model": scope[1],
                "zone": None,
                "line": rule.line, "direction": direction, "counts": dict(counter.counts),
                "track_ids": [det["track_id"]], "started_at": _iso(at), "at": _iso(at), "duration_s": 0.0,
                "value": 1.0, "frame": {"seq": message["frame"]["seq"], "captured_at": message["frame"]["captured_at"]},
                "detections": [det]}

    # ---------------------------------------------------------------- dwell per track
    def _dwell_per_track(self, rule, scope, at, message, matched, ended) -> list[dict]:
        events, seen = [], set()
        for det in matched:
            track = det.get("track_id")
            if track is None:
                continue
            seen.add(track)
            key = (rule.id, scope, track)
            event = self._step(rule, scope, key, at, True, 1.0, message, [det], [track])
            if event is not None:
                events.append(event)
        for key in [k for k in self._episodes if k[:2] == (rule.id, scope) and len(k) == 3 and k[2] not in seen]:
            gone = key[2] in ended
            event = self._step(rule, scope, key, at, False, 0.0, message, [], [key[2]], force_clear=gone)
            if event is not None:
                events.append(event)
        return events

    # ---------------------------------------------------------------- dwell (untracked), count
    def _episode_events(self, rule, scope, at, message, matched, tracked, ended) -> list[dict]:
        if rule.kind == "count" and tracked:
            present = self._zone_tracks[(rule.id, scope)]
            for det in matched:
                if det.get("track_id") is not None:
                    present[det["track_id"]] = at
            for track in [t for t, last in present.items() if t in ended or at - last > rule.clear_s]:
                del present[track]
            track_ids = sorted(present)
            value = float(len(track_ids))
        else:
            track_ids = sorted({d["track_id"] for d in matched if d.get("track_id") is not None})
            value = float(len(matched))
        holds = value > rule.above if rule.kind == "count" else value > 0
        event = self._step(rule, scope, (rule.id, scope), at, holds, value, message, matched, track_ids)
        return [] if event is None else [event]

    def zone_tracks(self) -> dict[tuple[str, str], int]:
        """(count rule, scope) -> distinct tracks in its zone now (the models' summed)."""
        out: dict[tuple[str, str], int] = {}
        for (rule, (scope, _model)), present in list(self._zone_tracks.items()):
            out[(rule, scope)] = out.get((rule, scope), 0) + len(present)
        return out

    def _step(self, rule: Rule, scope: tuple, key: tuple, at: float, holds: bool, value: float, message: dict,
              matched: list[dict], track_ids: list, force_clear: bool = False) -> dict | None:
        episode = self._episodes.setdefault(key, _Episode())
        if holds:
            if episode.since is None or (not episode.firing and at - episode.last_true > rule.clear_s):
                episode.since = at  # a new episode (a long gap ended the previous pending one)
            episode.last_true = at
            episode.peak = max(episode.peak, value)
            episode.track_ids = sorted(set(episode.track_ids) | set(track_ids))
            if not episode.firing and at - episode.since >= rule.for_s:
                episode.firing = True
                episode.alert_id = ":".join([rule.id, _scope_id(scope), *[str(k) for k in key[2:]],
                                             str(round(episode.since * 1000))])
                return self._event(rule, scope, episode, "firing", at, value, message, matched, track_ids)
            return None
        if episode.since is not None and (force_clear or at - episode.last_true >= rule.clear_s):
            event = (self._event(rule, scope, episode, "resolved", at, value, message, [], episode.track_ids)
                     if episode.firing else None)
            del self._episodes[key]
            return event
        if episode.since is None:
            del self._episodes[key]
        return None

    def _event(self, rule: Rule, scope: tuple, episode: _Episode, state: str, at: float, value: float,
               message: dict, matched: list[dict], track_ids: list) -> dict:
        return {
            "schema": ALERTS_SCHEMA,
            "alert_id": episode.alert_id,
            "rule": rule.id,
            "kind": rule.kind,
            "state": state,
            "camera_id": scope[0],
            "model": scope[1],
            "zone": rule.zone,
            "track_ids": list(track_ids),
            "started_at": _iso(episode.since),
            "at": _iso(at),
            "duration_s": round((episode.last_true if state == "resolved" else at) - episode.since, 3),
            "value": value if state == "firing" else episode.peak,
            "frame": {"seq": message["frame"]["seq"], "captured_at": message["frame"]["captured_at"]},
            "detections": matched,
        }


def evidence(rule: Rule, event: dict) -> dict:
    """What an alert's event names of its evidence: a clip and each track's snapshot, by ids made
    here from the alert's id and frame (the same alert gives the same ids: the daemon serves a
    repeated request once), with where the camera's daemon serves them (its HTTP API)."""
    at = _seconds(event["frame"]["captured_at"])
    digest = hashlib.sha256(event["alert_id"].encode()).hexdigest()[:8]
    request_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(at))}-{digest}"
    return {
        "request_id": request_id,
        "clip": None if rule.clip is None else {"clip_id": request_id, "url": f"/v1/clips/{request_id}",
                                                 "pre_s": rule.clip.pre_s, "post_s": rule.clip.post_s},
        "snapshots": [{"track_id": t, "snapshot_id": f"{request_id}-{t}", "url": f"/v1/snapshots/{request_id}-{t}",
                       "boxed_url": f"/v1/snapshots/{request_id}-{t}/boxed"}
                      for t in event["track_ids"]] if rule.snapshot else [],
    }


def evidence_request(event: dict) -> dict:
    """The clip-requests/v1 message that asks the camera's daemon for an event's evidence."""
    found = event["evidence"]
    clip = found["clip"]
    return {"schema": REQUESTS_SCHEMA, "request_id": found["request_id"], "camera_id": event["camera_id"],
            "model": event["model"], "at": event["frame"]["captured_at"],
            "trigger": {"kind": "rule", "rule": event["rule"], "alert_id": event["alert_id"]},
            "track_ids": list(event["track_ids"]),
            "clip": None if clip is None else {"pre_s": clip["pre_s"], "post_s": clip["post_s"]},
            "snapshots": bool(found["snapshots"])}


def _has_attributes(det: dict, wanted: dict[str, list[str]]) -> bool:
    """Whether a detection's classifiers said one of the wanted labels, for each classifier named."""
    found = det.get("attributes") or {}
    for name, labels in wanted.items():
        attribute = found.get(name)
        if attribute is None or (attribute.get("track_label") or attribute["label"]) not in labels:
            return False
    return True


def _scope_id(scope: tuple[str, str]) -> str:
    """A (camera, model)'s part of an alert id, `camera/model`: two models on one camera number
    their tracks each from 1, and may see one object cross at one frame."""
    camera, model = scope
    return f"{camera}/{model}" if model else camera


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _iso(seconds: float) -> str:
    return rfc3339_ms(seconds)
