"""The shipped INT8 model: really quantised, a drop-in for the FP32 one (same input, output and
labels), and finding what the FP32 model finds on scenes neither saw."""
from pathlib import Path

import numpy as np
import onnx

from pipeline.config import ModelConfig
from pipeline.s4_infer.loader import load_engine
from pipeline.s5_postprocess import detections_for_image
from scripts.lab.accuracy import iou
from scripts.lab.scenes import Scene
from scripts.model.quantize_int8 import letterboxed

ENGINES = Path(__file__).resolve().parents[2] / "engines"
FP32, INT8 = ENGINES / "shapes-yolov8n.onnx", ENGINES / "shapes-yolov8n.int8.onnx"
CLEAR = 0.5  # a detection this confident in one model must be there in the other...
SEEN = 0.2  # ...at least this confident (near the operating point, 0.35, scores may cross it)


def test_int8_model_is_quantised_and_keeps_float_io_and_labels():
    model = onnx.load(str(INT8))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 50  # every convolution's weights
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert load_engine(ModelConfig(path=INT8)).info.labels == ("disc", "square", "triangle", "cross")


def detect(engine, rgb: np.ndarray):
    spec = engine.info.input_spec
    h, w = rgb.shape[:2]
    inp = letterboxed(rgb, spec)
    lb = spec.letterbox(w, h, inp.shape[3], inp.shape[2])
    out = engine.infer(inp)[0]
    return detections_for_image(out, "yolov8", lb, engine.info.labels, SEEN, 0.45, 300)


def matched(found, reference) -> float:
    """Share of the clear `reference` detections that `found` has too (same class, IoU >= 0.5)."""
    clear = [r for r in reference if r.confidence >= CLEAR]
    hits = sum(any(f.class_id == r.class_id and iou(f.bbox, r.bbox) >= 0.5 for f in found) for r in clear)
    return hits / max(1, len(clear))


def test_int8_finds_what_fp32_finds_on_unseen_scenes():
    fp32 = load_engine(ModelConfig(path=FP32, input_size=320))
    int8 = load_engine(ModelConfig(path=INT8, input_size=320))
    agree_fp32, agree_int8, total = [], [], 0
    for seed, (w, h) in ((9301, (1280, 720)), (9302, (640, 480))):
        scene = Scene(seed, w, h, frames=100)
        for frame in (10, 30, 50, 70, 90):
            rgb = scene.render(frame)[0]
            a, b = detect(fp32, rgb), detect(int8, rgb)
            agree_fp32.append(matched(b, a))
            agree_int8.append(matched(a, b))
            total += len(a)
    assert total >= 30  # the scenes have something to find
    assert np.mean(agree_fp32) >= 0.97 and np.mean(agree_int8) >= 0.97, (agree_fp32, agree_int8)
