"""Message serialisation: detections/v1 and camera-status/v1 match their published JSON Schemas."""
import json
from importlib import resources

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core import CameraState, Detection, EndedTrack, FrameMeta, FrameResult, ModelRef, TrackEvents
from pipeline.messages import encode_detections, encode_status, rfc3339_ms

MODEL = ModelRef("yolov8n", "ab" * 32, "onnxruntime")
RUN = "0123456789abcdef" * 2


def schema(name: str) -> dict:
    return json.loads(resources.files("pipeline").joinpath(f"schemas/{name}").read_text())


def result(detections=()) -> FrameResult:
    meta = FrameMeta("gate-1", 12.04, 1_795_240_703.0771, "rtcp", 1920, 1080)
    return FrameResult(meta, 41, tuple(detections))


def test_detections_message_has_the_v1_shape_and_validates():
    det = Detection(2, "dog", 0.8731, (10.0, 20.5, 110.0, 220.0))
    value = encode_detections(result([det]), MODEL, RUN)
    body = json.loads(value.decode("utf-8"))
    jsonschema.validate(body, schema("detections-v1.schema.json"))
    assert body == {
        "schema": "detections/v1",
        "camera_id": "gate-1",
        "run_id": RUN,
        "frame": {"seq": 41, "pts": 12.04, "captured_at": "2026-11-21T05:58:23.077Z", "clock": "rtcp",
                  "width": 1920, "height": 1080},
        "detections": [{"class_id": 2, "label": "dog", "confidence": 0.8731, "bbox": [10.0, 20.5, 110.0, 220.0]}],
        "model": {"name": "yolov8n", "sha256": "ab" * 32, "backend": "onnxruntime"},
    }


def test_a_tracked_frame_carries_track_ids_and_the_tracks_that_started_and_ended():
    dets = [Detection(0, "car", 0.9, (10.0, 20.0, 110.0, 90.0), track_id=7),
            Detection(1, "person", 0.6, (200.0, 20.0, 240.0, 120.0), track_id=None)]  # max_tracks reached
    ended = EndedTrack(3, "person", 1_795_240_690.0, 1_795_240_702.5, 250, "unseen")
    frame = FrameResult(result().meta, 41, tuple(dets), TrackEvents(started=(7,), ended=(ended,)))
    body = json.loads(encode_detections(frame, MODEL, RUN))
    jsonschema.validate(body, schema("detections-v1.schema.json"))
    assert [d["track_id"] for d in body["detections"]] == [7, None]
    assert body["tracks"] == {"started": [7], "ended": [{
        "track_id": 3, "label": "person", "first_seen": "2026-11-21T05:58:10.000Z",
        "last_seen": "2026-11-21T05:58:22.500Z", "detections": 250, "reason": "unseen"}]}


def test_a_v1_consumer_written_before_tracking_still_reads_tracked_messages():
    """The message of before tracking (the schema as it was, additional keys ignored) still validates."""
    before = schema("detections-v1.schema.json")
    for key in ("tracks",):
        before["properties"].pop(key)
    before["properties"]["detections"]["items"]["properties"].pop("track_id")
    frame = FrameResult(result().meta, 41, (Detection(0, "car", 0.9, (1.0, 2.0, 3.0, 4.0), track_id=1),),
                        TrackEvents(started=(1,)))
    body = json.loads(encode_detections(frame, MODEL, RUN))
    jsonschema.validate(body, before)
    untracked = json.loads(encode_detections(result([Detection(0, "car", 0.9, (1.0, 2.0, 3.0, 4.0))]), MODEL, RUN))
    assert "tracks" not in untracked and "track_id" not in untracked["detections"][0]


def test_empty_frame_message_validates():
    body = json.loads(encode_detections(result(), MODEL, RUN))
    jsonschema.validate(body, schema("detections-v1.schema.json"))
    assert body["detections"] == []


def test_schema_rejects_a_message_without_seq():
    body = json.loads(encode_detections(result(), MODEL, RUN))
    del body["frame"]["seq"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, schema("detections-v1.schema.json"))


def test_rfc3339_has_milliseconds_and_z():
    assert rfc3339_ms(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339_ms(1.2345) == "1970-01-01T00:00:01.234Z"


@pytest.mark.parametrize(
    ("state", "previous", "status"),
    [
        (CameraState.CONNECTING, None, "connecting"),
        (CameraState.CONNECTING, CameraState.BACKING_OFF, "reconnecting"),
        (CameraState.STREAMING, CameraState.CONNECTING, "connected"),
        (CameraState.STALLED, CameraState.STREAMING, "disconnected"),
        (CameraState.BACKING_OFF, CameraState.CONNECTING, "disconnected"),
        (CameraState.STOPPED, CameraState.STREAMING, "stopped"),
    ],
)
def test_status_messages(state, previous, status):
    body = json.loads(encode_status("cam", state, previous, "connection refused", 0.0))
    jsonschema.validate(body, schema("camera-status-v1.schema.json"))
    assert (body["status"], body["state"], body["reason"]) == (status, state.value, "connection refused")


def test_a_connected_status_says_the_transport_and_the_schema_knows_it():
    body = json.loads(encode_status("cam", CameraState.STREAMING, CameraState.CONNECTING,
                                    "1280x720 stream over UDP (the camera refused TCP)", 0.0, "udp"))
    jsonschema.validate(body, schema("camera-status-v1.schema.json"))
    assert body["transport"] == "udp"
    with pytest.raises(jsonschema.ValidationError):  # only the two transports there are
        jsonschema.validate(dict(body, transport="sctp"), schema("camera-status-v1.schema.json"))
    assert "transport" not in json.loads(encode_status("cam", CameraState.STALLED, CameraState.STREAMING, "x", 0.0))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.floats(0, 4_102_444_800, allow_nan=False),
                 st.integers(0, 4_102_444_800).map(lambda s: s + 0.9995),  # carries: .9995, .9999995
                 st.integers(0, 4_102_444_800).map(lambda s: s + 0.9999995),
                 st.integers(1_700_000_000, 1_900_000_000).map(lambda ms: ms / 1000)))
def test_message_times_are_what_datetime_writes(ts):
    """rfc3339_ms formats the second once and adds the milliseconds: the text must be
    datetime's own, also where microseconds round up into the next second."""
    from datetime import datetime, timezone

    assert rfc3339_ms(ts) == datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def test_a_lost_track_seen_again_is_listed_in_refound_only_when_there_is_one():
    dets = (Detection(0, "car", 0.9, (10.0, 20.0, 110.0, 90.0), track_id=4),)
    again = json.loads(encode_detections(FrameResult(result().meta, 9, dets, TrackEvents(refound=(4,))), MODEL, RUN))
    jsonschema.validate(again, schema("detections-v1.schema.json"))
    assert again["tracks"] == {"started": [], "ended": [], "refound": [4]}
    plain = json.loads(encode_detections(FrameResult(result().meta, 10, dets, TrackEvents()), MODEL, RUN))
    assert plain["tracks"] == {"started": [], "ended": []}  # additive: absent when empty
    bad = dict(again, tracks={"started": [], "ended": [], "refound": [0]})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema("detections-v1.schema.json"))


def test_clip_messages_written_and_failed_validate_against_clips_v1():
    from pathlib import Path

    from pipeline.clips import ClipResult
    from pipeline.messages import encode_clip

    written = ClipResult("20261207T140312Z-1f3a9c0e", "gate-1", {"kind": "api"}, (3, 7),
                         Path("/clips/gate-1/20261207T140312Z-1f3a9c0e.mp4"), 812345, "ab" * 32, 12.0, 19.96,
                         1_795_240_703.0, 1_795_240_710.96)
    body = json.loads(encode_clip(written, RUN, "node-a"))
    jsonschema.validate(body, schema("clips-v1.schema.json"))
    assert body["status"] == "written" and body["url"] == "/v1/clips/20261207T140312Z-1f3a9c0e"
    assert body["first_captured_at"] == "2026-11-21T05:58:23.000Z" and body["track_ids"] == [3, 7]

    failed = ClipResult("20261207T140312Z-2f3a9c0e", "gate-1", {"kind": "api"}, (), None,
                        failure="the clip folder's disk is full: free space or lower clips.max_gb")
    body = json.loads(encode_clip(failed, RUN))
    jsonschema.validate(body, schema("clips-v1.schema.json"))
    assert body["status"] == "failed" and "disk is full" in body["reason"] and "url" not in body
    with pytest.raises(jsonschema.ValidationError):  # the schema holds a message to its shape
        jsonschema.validate({**body, "status": "maybe"}, schema("clips-v1.schema.json"))


def test_snapshot_messages_validate_against_snapshots_v1():
    from pipeline.clips import Sighting, Snapshot, SnapshotResult
    from pipeline.messages import encode_snapshots

    seen = Sighting(4, "square", 0.91, (100.0, 60.0, 200.0, 160.0), 2.48, 1_796_654_592.48, 9100.0)
    result = SnapshotResult("20261207T140312Z-1f3a9c0e", "gate-1", "m", {"kind": "rule", "rule": "r", "alert_id": "a"}, [
        Snapshot(4, "20261207T140312Z-1f3a9c0e-4", seen, 51234, "cd" * 32),
        Snapshot(9, "20261207T140312Z-1f3a9c0e-9", failure="no sighting of this track is held")])
    body = json.loads(encode_snapshots(result, RUN, "node-a"))
    jsonschema.validate(body, schema("snapshots-v1.schema.json"))
    good, missing = body["snapshots"]
    assert good["url"] == "/v1/snapshots/20261207T140312Z-1f3a9c0e-4" and good["bbox"] == [100.0, 60.0, 200.0, 160.0]
    assert good["boxed_url"].endswith("-4/boxed") and good["captured_at"] == "2026-12-07T14:43:12.480Z"
    assert missing == {"track_id": 9, "snapshot_id": "20261207T140312Z-1f3a9c0e-9", "status": "failed",
                       "reason": "no sighting of this track is held"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**body, "snapshots": [{**good, "snapshot_id": "../x"}]}, schema("snapshots-v1.schema.json"))
