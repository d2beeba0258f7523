"""NMS in the engine (model.nms): the shipped raw-head models with NMS appended give, through ONNX
Runtime, the detections the host's postprocessing finds on the raw heads, for scenes neither saw,
with the configured thresholds; the daemon's settings reach it; a model it cannot extend is a
clear error."""
from pathlib import Path

import numpy as np
import onnx
import pytest

from pipeline.config import ModelConfig
from pipeline.core import EngineError
from pipeline.s4_infer import nms_graph
from pipeline.s4_infer.loader import load_engine
from pipeline.s5_postprocess import detect_layout, detections_for_batch
from scripts.lab.scenes import Scene
from scripts.model.quantize_int8 import letterboxed

ENGINES = Path(__file__).resolve().parents[2] / "engines"
SHAPES = ENGINES / "shapes-yolov8n.onnx"


def _batch(engine, pictures):
    spec = engine.info.input_spec
    inputs = [letterboxed(rgb, spec) for rgb in pictures]
    batch = np.concatenate(inputs)
    boxes = [spec.letterbox(rgb.shape[1], rgb.shape[0], batch.shape[3], batch.shape[2]) for rgb in pictures]
    return batch, boxes


def _found(engine, scenes, confidence, iou=0.45, most=300):
    """(layout, [BatchDetections of each scene's pictures, one batch a scene])."""
    layout = detect_layout(engine.info.output_shape, len(engine.info.labels), engine.info.metadata)
    found = []
    for pictures in scenes:
        batch, boxes = _batch(engine, pictures)
        found.append(detections_for_batch(engine.infer(batch), layout, boxes, engine.info.labels, confidence,
                                          iou, most))
    return layout, found


def _same(a, b) -> int:
    """Asserts each batch's detections are the same; returns how many there are."""
    for x, y in zip(a, b, strict=True):
        # the same boxes of the same classes per image, best first (IoU is float32 in the engine,
        # float64 on the host: a box at the threshold's edge could go either way; none did here)
        assert np.array_equal(x.image, y.image) and np.array_equal(x.classes, y.classes)
        np.testing.assert_allclose(x.boxes, y.boxes, atol=0.11)
        np.testing.assert_allclose(x.scores, y.scores, atol=1e-4)
    return sum(len(x.image) for x in a)


@pytest.fixture(scope="module")
def pictures():
    out = []  # a batch per scene (one input size a batch)
    for seed, (w, h) in ((9311, (1280, 720)), (9312, (800, 600))):
        scene = Scene(seed, w, h, frames=60)
        out.append([scene.render(frame)[0] for frame in (5, 25, 45)])
    return out


@pytest.mark.parametrize("confidence,iou", [(0.1, 0.45), (0.35, 0.45), (0.05, 0.7)])
def test_engine_nms_finds_what_the_host_finds(pictures, confidence, iou):
    host = load_engine(ModelConfig(path=SHAPES, input_size=320, iou=iou, nms="host"), confidence=confidence)
    engine = load_engine(ModelConfig(path=SHAPES, input_size=320, iou=iou, nms="engine"), confidence=confidence)
    assert engine.nms_floor == confidence and host.nms_floor is None
    layout_a, a = _found(host, pictures, confidence, iou)
    layout_b, b = _found(engine, pictures, confidence, iou)
    assert (layout_a, layout_b) == ("yolov8", "end2end")
    assert engine.info.labels == host.info.labels == ("disc", "square", "triangle", "cross")
    assert _same(a, b) >= 40  # the scenes have something to find


def test_engine_nms_keeps_the_best_max_detections_per_image(pictures):
    most = 3
    host = load_engine(ModelConfig(path=SHAPES, input_size=320, nms="host", max_detections=most), confidence=0.1)
    engine = load_engine(ModelConfig(path=SHAPES, input_size=320, nms="engine", max_detections=most), confidence=0.1)
    _, a = _found(host, pictures, 0.1, most=most)
    _, b = _found(engine, pictures, 0.1, most=most)
    assert max(np.bincount(x.image).max() for x in b) == most
    _same(a, b)


def test_engine_nms_output_is_small_and_auto_keeps_it_on_the_host_for_onnxruntime(pictures):
    engine = load_engine(ModelConfig(path=SHAPES, input_size=320, nms="engine"))
    batch, _ = _batch(engine, pictures[0][:2])
    out = engine.infer(batch)
    assert out.shape == (2, nms_graph.ROWS, 6)  # not [2, 8, anchors]
    auto = load_engine(ModelConfig(path=SHAPES, input_size=320))
    assert auto.nms_floor is None and auto.infer(batch).shape[1] == 8


def test_thresholds_can_be_written_in_for_builders_that_take_initializers_as_constants():
    model = onnx.load_from_string(nms_graph.with_nms(SHAPES.read_bytes(), confidence=0.2, iou=0.5,
                                                     max_detections=50, constant=True))
    assert [i.name for i in model.graph.input] == ["images"]
    values = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert values[nms_graph.IOU][0] == np.float32(0.5) and values[nms_graph.MOST][0] == 50
    assert {p.key: p.value for p in model.metadata_props}["end2end"] == "True"
    assert "NonMaxSuppression" in {n.op_type for n in model.graph.node}


def test_a_model_that_cannot_take_nms_is_a_clear_error():
    with pytest.raises(EngineError, match="model.nms: engine needs a YOLOv8 raw-head model.*set model.nms: host"):
        load_engine(ModelConfig(path=SHAPES, input_size=320, nms="engine", layout="yolov5"))
