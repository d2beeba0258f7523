"""Malformed input gets a typed, clear error and nothing else: the config loader with arbitrary YAML
documents, and the YOLO output decoder with arbitrary tensors (NaN, inf, wrong shapes, wrong
classes). Property tests (hypothesis)."""
import math
import re

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.config import ConfigError, load_config
from pipeline.core import EngineError, Letterbox
from pipeline.s5_postprocess import LayoutError, detections_for_image

KEYS = ["model", "path", "backend", "kafka", "bootstrap_servers", "cameras", "id", "url", "fps", "gpu",
        "batching", "max_batch", "source", "metrics", "listen", "confidence", "tensorrt", "decoder", "x"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=30), st.sampled_from(["rtsp://h/s", "${NOPE}", "${A:-rtsp://x/y}", "127.0.0.1:9092",
                                                           "auto", "tensorrt", "nvdec", "../x.onnx"]))
DOCS = st.recursive(SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                   st.dictionaries(st.sampled_from(KEYS), kids, max_size=5)),
                    max_leaves=25)
PROBLEM = re.compile(r"^\S+\.yaml(:\d+)?: ")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=DOCS)
def test_any_yaml_document_loads_or_fails_with_config_error_lines(tmp_path, doc):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    try:
        load_config(path, environ={"A": "rtsp://cam/1"})
    except ConfigError as exc:
        assert exc.problems and all(PROBLEM.match(p) for p in exc.problems), exc.problems


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_any_text_loads_or_fails_with_config_error_lines(tmp_path, text):
    path = tmp_path / "text.yaml"
    path.write_text(text)
    try:
        load_config(path, environ={})
    except ConfigError as exc:
        assert exc.problems and all(PROBLEM.match(p) for p in exc.problems), exc.problems


FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
LB = Letterbox(0.5, 0, 12, 640, 360)


@settings(max_examples=300, deadline=None)
@given(layout=st.sampled_from(["yolov8", "yolov5", "end2end"]),
       output=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=12), elements=FLOATS),
       labels=st.lists(st.text(max_size=5), max_size=4))
# found by this test: a huge finite float32 box overflowed mapping it back to source pixels
@example(layout="yolov8", output=np.array([[1.0], [1.7014118e38], [1.0], [1.0], [1.0]], np.float32), labels=[])
@example(layout="yolov8", output=np.full((5, 1), 1.1342746e38, np.float32), labels=[])
def test_any_output_tensor_gives_valid_detections_or_a_layout_error(layout, output, labels):
    try:
        found = detections_for_image(output, layout, LB, labels, confidence=0.25, iou=0.45, max_detections=50)
    except LayoutError as exc:
        assert str(exc)  # says what is wrong
        return
    for det in found:
        x1, y1, x2, y2 = det.bbox
        assert all(math.isfinite(v) for v in det.bbox) and 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 360
        assert math.isfinite(det.confidence) and det.confidence >= 0.25
        assert isinstance(det.label, str)


def test_layout_error_is_an_engine_error():
    assert issubclass(LayoutError, EngineError)
    with pytest.raises(LayoutError):
        detections_for_image(np.zeros((3, 2), np.float32), "yolov8", LB, [], 0.25, 0.45, 10)
