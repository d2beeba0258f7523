"""What the daemon writes to Kafka: the detections/v1 and camera-status/v1 message values, their
schema ids and timestamps. The contract users see (docs/kafka.md; JSON Schemas in schemas/): the
publisher sends these bytes, the alerting consumer reads them, tests and tools check them.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import orjson

from pipeline.core import CameraState, Detection, FrameResult, ModelRef

DETECTIONS_SCHEMA = "detections/v1"
STATUS_SCHEMA = "camera-status/v1"
CLIPS_SCHEMA = "clips/v1"
SNAPSHOTS_SCHEMA = "snapshots/v1"


def rfc3339_ms(ts: float) -> str:
    """UTC time as RFC 3339 with milliseconds, e.g. 2026-11-21T05:57:24.123Z: what
    datetime.fromtimestamp(ts, utc).isoformat(timespec="milliseconds") gives (microseconds rounded
    half to even, then cut to milliseconds), with the date and time of the second made once per
    second (every message has one: 0.5 us against 2.5 us)."""
    frac, whole = math.modf(ts)
    micros = round(frac * 1e6)
    second = int(whole)
    if micros < 0:  # before 1970
        second, micros = second - 1, micros + 1_000_000
    elif micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    cached = _second  # one read: (second, its text), replaced whole, so threads never mix two
    if cached[0] != second:
        cached = _remember(second)
    return f"{cached[1]}.{micros // 1000:03d}Z"


def _remember(second: int) -> tuple[int, str]:
    global _second
    _second = (second, datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
    return _second


_second: tuple[int | None, str] = (None, "")


def encode_detections(result: FrameResult, model: ModelRef, run_id: str, node: str | None = None) -> bytes:
    """The detections/v1 message value for one inferred frame (`node`: the daemon's node id, with
    placement on)."""
    meta = result.meta
    body = {
        "schema": DETECTIONS_SCHEMA,
        "camera_id": meta.camera_id,
        "run_id": run_id,
        "frame": {
            "seq": result.seq,
            "pts": meta.pts,
            "captured_at": rfc3339_ms(meta.captured_at),
            "clock": meta.clock,
            "width": meta.width,
            "height": meta.height,
        },
        "detections": [_detection(d, result.tracks is not None) for d in result.detections],
        "model": {"name": model.name, "sha256": model.sha256, "backend": model.backend},
    }
    if node is not None:
        body["node"] = node
    if result.tracks is not None:
        body["tracks"] = {
            "started": list(result.tracks.started),
            "ended": [{"track_id": t.track_id, "label": t.label, "first_seen": rfc3339_ms(t.first_seen),
                       "last_seen": rfc3339_ms(t.last_seen), "detections": t.detections, "reason": t.reason}
                      for t in result.tracks.ended],
        }
        if result.tracks.refound:
            body["tracks"]["refound"] = list(result.tracks.refound)
    return orjson.dumps(body)  # compact UTF-8 JSON, as json.dumps(separators=(",", ":")): ~4 x faster


def _detection(d: Detection, tracked: bool) -> dict:
    # one per object and message: the tuple unpacked once (a NamedTuple's fields are descriptors),
    # the box as the tuple it is (orjson writes a tuple as an array)
    class_id, label, confidence, bbox, track_id, track_class_id, track_label, attributes = d
    if not tracked:
        out = {"class_id": class_id, "label": label, "confidence": confidence, "bbox": bbox}
    elif track_id is None or track_class_id is None:
        out = {"class_id": class_id, "label": label, "confidence": confidence, "bbox": bbox, "track_id": track_id}
    else:
        out = {"class_id": class_id, "label": label, "confidence": confidence, "bbox": bbox, "track_id": track_id,
               "track_class_id": track_class_id, "track_label": track_label}
    if attributes:
        out["attributes"] = attributes
    return out


def camera_status(state: CameraState, previous: CameraState | None) -> str:
    """The coarse status consumers act on: connecting, connected, reconnecting, disconnected,
    finished (a file read to its end) or stopped."""
    if state is CameraState.STREAMING:
        return "connected"
    if state is CameraState.CONNECTING:
        return "connecting" if previous in (None, CameraState.STOPPED) else "reconnecting"
    if state is CameraState.STOPPED:
        return "stopped"
    if state is CameraState.FINISHED:
        return "finished"
    return "disconnected"


def encode_status(camera_id: str, state: CameraState, previous: CameraState | None, reason: str, at: float,
                  transport: str | None = None, node: str | None = None) -> bytes:
    """The camera-status/v1 message value for one state change (`transport`: what a streaming
    camera's RTP comes over)."""
    body = {
        "schema": STATUS_SCHEMA,
        "camera_id": camera_id,
        "status": camera_status(state, previous),
        "state": state.value,
        "reason": reason,
        "at": rfc3339_ms(at),
    }
    if transport is not None:
        body["transport"] = transport
    if node is not None:
        body["node"] = node
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def encode_snapshots(result, run_id: str, node: str | None = None) -> bytes:
    """The snapshots/v1 message value for a request's snapshots (a pipeline.clips.SnapshotResult)."""
    shots = []
    for shot in result.snapshots:
        entry = {"track_id": shot.track_id, "snapshot_id": shot.name,
                 "status": "failed" if shot.failure else "written"}
        seen = shot.sighting
        if seen is not None:
            entry |= {"label": seen.label, "confidence": round(seen.confidence, 4),
                      "bbox": [round(v, 1) for v in seen.bbox], "captured_at": rfc3339_ms(seen.captured),
                      "pts": round(seen.pts, 6)}
        if shot.failure:
            entry["reason"] = shot.failure
        else:
            entry |= {"size": shot.size, "sha256": shot.sha256, "url": f"/v1/snapshots/{shot.name}",
                      "boxed_url": f"/v1/snapshots/{shot.name}/boxed"}
        shots.append(entry)
    body = {"schema": SNAPSHOTS_SCHEMA, "camera_id": result.camera, "request_id": result.request_id,
            "run_id": run_id, "model": result.model, "trigger": result.trigger, "snapshots": shots}
    if node is not None:
        body["node"] = node
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def encode_clip(result, run_id: str, node: str | None = None) -> bytes:
    """The clips/v1 message value for a clip written or failed (a pipeline.clips.ClipResult)."""
    body = {
        "schema": CLIPS_SCHEMA,
        "camera_id": result.camera,
        "clip_id": result.clip_id,
        "run_id": run_id,
        "status": "failed" if result.failure else "written",
        "trigger": result.trigger,
        "track_ids": list(result.track_ids),
        "first_captured_at": None if result.first_captured is None else rfc3339_ms(result.first_captured),
        "last_captured_at": None if result.last_captured is None else rfc3339_ms(result.last_captured),
        "first_pts": result.first,
        "last_pts": result.last,
        "ended_early": result.ended_early,
    }
    if result.failure:
        body["reason"] = result.failure
    else:
        body |= {"size": result.size, "sha256": result.sha256, "url": f"/v1/clips/{result.clip_id}",
                 "file": result.path.name}
    if node is not None:
        body["node"] = node
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
