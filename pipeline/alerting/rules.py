"""Alert rules (YAML models) and their evaluation over detections/v1 messages, in event time.

Each (rule, camera) pair is a small state machine driven by the frames' `captured_at`:
idle -> pending (condition true) -> firing after `for_s` seconds of it (alert "firing") ->
idle after `clear_s` seconds without it (alert "resolved"). Short gaps (a missed detection in a
frame or two) shorter than `clear_s` neither reset a pending rule nor resolve a firing one.
A detection is in a zone when the middle of its bottom edge (where an object stands) is inside
the polygon.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.config import CAMERA_ID, load_yaml_model
from pipeline.s6_publish import rfc3339_ms

ALERTS_SCHEMA = "alerts/v1"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AlertsKafka(_Strict):
    """Where detections are read and alerts written."""

    bootstrap_servers: str = Field("127.0.0.1:9092", description="comma-separated host:port list")
    detections_topic: str = Field("detections", description="topic the daemon publishes detections/v1 to")
    alerts_topic: str = Field("alerts", description="topic alert events (alerts/v1) are published to")
    group_id: str = Field("rtsp-alerts", description="consumer group; offsets are committed after alerts are sent")
    start_from: Literal["latest", "earliest"] = Field(
        "latest", description="where a new consumer group starts: latest (only new frames) or earliest")


class Zone(_Strict):
    """A polygon in one camera's picture, in source pixels."""

    camera: str = Field(pattern=CAMERA_ID, description="the camera whose picture the polygon is drawn on")
    polygon: list[tuple[float, float]] = Field(min_length=3, description="[[x, y], ...] in source pixels, 3 or more")


class Rule(_Strict):
    """One alert condition."""

    id: str = Field(pattern=CAMERA_ID, description="names the rule in every alert")
    kind: Literal["dwell", "count"] = Field(
        description="dwell: an object of `classes` in the zone for `for_s` seconds; "
                    "count: more than `above` of them for `for_s` seconds")
    classes: list[str] = Field(min_length=1, description="detection labels that count, e.g. [person]")
    zone: str | None = Field(None, description="a zone name; omitted: the whole picture")
    cameras: list[str] | None = Field(None, description="cameras the rule watches; default: the zone's, else all")
    above: int = Field(0, ge=0, description="count: alert when more than this many are seen")
    for_s: float = Field(0, ge=0, le=86400, description="seconds the condition must hold before the alert fires")
    clear_s: float = Field(2, ge=0, le=3600, description="seconds without the condition that resolve the alert")
    min_confidence: float = Field(0.0, ge=0, le=1, description="detections below this confidence are ignored")

    @model_validator(mode="after")
    def _count_needs_threshold(self) -> Rule:
        if self.kind == "dwell" and self.above:
            raise ValueError("`above` is for count rules; a dwell rule fires on one object")
        return self


class AlertRules(_Strict):
    """The alerting consumer's file."""

    kafka: AlertsKafka = Field(default_factory=AlertsKafka, description="topics and consumer group")
    zones: dict[str, Zone] = Field(default_factory=dict, description="named polygons, per camera")
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
    def _zones_exist(self) -> AlertRules:
        for rule in self.rules:
            if rule.zone is not None and rule.zone not in self.zones:
                raise ValueError(f"rule {rule.id!r} names zone {rule.zone!r}, which is not under `zones` "
                                 f"(known: {', '.join(sorted(self.zones)) or 'none'})")
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


@dataclass
class _Track:
    since: float | None = None  # when the condition started holding (pending or firing)
    last_true: float | None = None
    firing: bool = False
    alert_id: str = ""
    peak: float = 0.0


@dataclass
class AlertEngine:
    """Feeds detections/v1 messages through every rule; returns the alert events to publish."""

    rules: AlertRules
    _tracks: dict[tuple[str, str], _Track] = field(default_factory=dict)

    def feed(self, message: dict) -> list[dict]:
        """One detections/v1 message -> zero or more alerts/v1 events."""
        camera = message["camera_id"]
        at = _seconds(message["frame"]["captured_at"])
        events = []
        for rule in self.rules.rules:
            if not self._watches(rule, camera):
                continue
            matched = self._matching(rule, message["detections"])
            value = float(len(matched))
            holds = len(matched) > rule.above if rule.kind == "count" else bool(matched)
            event = self._step(rule, camera, at, holds, value, message, matched)
            if event is not None:
                events.append(event)
        return events

    def _watches(self, rule: Rule, camera: str) -> bool:
        if rule.cameras is not None:
            return camera in rule.cameras
        if rule.zone is not None:
            return self.rules.zones[rule.zone].camera == camera
        return True

    def _matching(self, rule: Rule, detections: list[dict]) -> list[dict]:
        polygon = self.rules.zones[rule.zone].polygon if rule.zone else None
        out = []
        for det in detections:
            if det["label"] not in rule.classes or det["confidence"] < rule.min_confidence:
                continue
            x1, _, x2, y2 = det["bbox"]
            if polygon is None or inside(((x1 + x2) / 2, y2), polygon):
                out.append(det)
        return out

    def _step(self, rule: Rule, camera: str, at: float, holds: bool, value: float, message: dict,
              matched: list[dict]) -> dict | None:
        track = self._tracks.setdefault((rule.id, camera), _Track())
        if holds:
            if track.since is None or (not track.firing and at - track.last_true > rule.clear_s):
                track.since = at  # a new episode (a long gap ended the previous pending one)
            track.last_true = at
            track.peak = max(track.peak, value)
            if not track.firing and at - track.since >= rule.for_s:
                track.firing = True
                track.alert_id = f"{rule.id}:{camera}:{round(track.since * 1000)}"
                return self._event(rule, camera, track, "firing", at, value, message, matched)
            return None
        if track.since is not None and at - track.last_true >= rule.clear_s:
            was_firing = track.firing
            event = self._event(rule, camera, track, "resolved", at, value, message, []) if was_firing else None
            self._tracks[(rule.id, camera)] = _Track()
            return event
        return None

    def _event(self, rule: Rule, camera: str, track: _Track, state: str, at: float, value: float,
               message: dict, matched: list[dict]) -> dict:
        return {
            "schema": ALERTS_SCHEMA,
            "alert_id": track.alert_id,
            "rule": rule.id,
            "kind": rule.kind,
            "state": state,
            "camera_id": camera,
            "zone": rule.zone,
            "started_at": _iso(track.since),
            "at": _iso(at),
            "duration_s": round((track.last_true if state == "resolved" else at) - track.since, 3),
            "value": value if state == "firing" else track.peak,
            "frame": {"seq": message["frame"]["seq"], "captured_at": message["frame"]["captured_at"]},
            "detections": matched,
        }


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _iso(seconds: float) -> str:
    return rfc3339_ms(seconds)
