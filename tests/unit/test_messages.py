"""Message serialisation: detections/v1 and camera-status/v1 match their published JSON Schemas."""
import json
from importlib import resources

import jsonschema
import pytest

from pipeline.core import CameraState, Detection, FrameMeta, FrameResult, ModelRef
from pipeline.s6_publish import encode_detections, encode_status, rfc3339_ms

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
