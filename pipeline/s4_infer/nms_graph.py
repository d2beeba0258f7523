"""NMS inside the engine: a YOLOv8 raw-head ONNX model ([B, 4+nc, anchors]) extended with its
postprocessing, so it emits at most `rows` detections per image, [B, rows, 6] (x1, y1, x2, y2,
score, class in input pixels, best first, zero rows after the last): the "end2end" layout.

Why: on a GPU the raw heads are 84 x 8,400 floats per 640 px image (2.8 MB) copied to the host and
decoded there in Python's process, per frame; with NMS in the engine the copy is a few KB and the
host reads a handful of rows (docs/BENCHMARKS.md, the host path at a GPU's rate). The graph uses
only standard ONNX operators (opset 11+): ONNX Runtime runs it on the CPU, TensorRT's ONNX parser
maps NonMaxSuppression to its INMSLayer (TensorRT 8.6+).

The same decisions as the host's postprocessing (pipeline.s5_postprocess.detections_for_batch):
an anchor's class is its best class score, NMS is per class (boxes shifted apart per class, one
NonMaxSuppression call for the batch), a box is suppressed by a better one of its class that
overlaps it by more than the IoU threshold, the best `max_detections` per image are kept.

The thresholds are graph inputs with defaults (initializers that are also inputs): ONNX Runtime
takes the configured values with every run (`overridable(...)`); a builder that treats
initializers as constants (TensorRT) gets the model with the configured values written in.

Needs the `onnx` package (the `nms` extra) only where a model is extended, not to run one.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.core import EngineError

IOU = "nms_iou_threshold"  # float32 [1]
SCORE = "nms_score_threshold"  # float32 [1]: a box needs a score above this
MOST = "nms_max_detections"  # int64 [1]: kept per image, at most `rows`
OUTPUT = "detections"
ROWS = 300  # detections per image the appended graph can give (its output's second dimension)
_MAX_WH = 7680.0  # class offset, as the host's class-aware NMS (larger than any input side)


def thresholds(confidence: float, iou: float, max_detections: int, rows: int) -> dict[str, np.ndarray]:
    """The NMS inputs for a configured confidence (kept from this score up, as on the host: the
    engine keeps scores strictly above the float32 just below it), IoU and detections per image."""
    below = np.nextafter(np.float32(confidence), np.float32(0))
    return {IOU: np.array([iou], np.float32), SCORE: np.array([below], np.float32),
            MOST: np.array([min(max_detections, rows)], np.int64)}


def with_nms(model_bytes: bytes, *, confidence: float, iou: float, max_detections: int,
             rows: int = ROWS, constant: bool = False) -> bytes:
    """The model with NMS appended to its first output, thresholds defaulting to the given ones
    (`constant`: written in, not inputs). Raises EngineError when the model's output is not a
    YOLOv8 raw head [B, 4+nc, anchors]."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise EngineError("NMS in the engine (model.nms: engine) needs the onnx package: "
                          "pip install 'rtsp-pipeline[nms]', or set model.nms: host") from None
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    head = graph.output[0]
    dims = head.type.tensor_type.shape.dim
    if len(dims) != 3 or not dims[1].HasField("dim_value") or dims[1].dim_value <= 4:
        raise EngineError(f"NMS in the engine needs a YOLOv8 raw-head output [batch, 4+classes, anchors]; "
                          f"{head.name} is {[d.dim_param or d.dim_value for d in dims]}: set model.nms: host")
    if any(o.domain in ("", "ai.onnx") and o.version < 11 for o in model.opset_import):
        raise EngineError("NMS in the engine needs an ONNX model of opset 11 or newer; set model.nms: host")
    raw = head.name
    nodes, consts = [], []

    def const(name: str, value) -> str:
        consts.append(numpy_helper.from_array(np.asarray(value), f"nms/const/{name}"))
        return f"nms/const/{name}"

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [f"nms/{name}"], name=f"nms/{name}", **attrs))
        return f"nms/{name}"

    rows_first = node("Transpose", [raw], "rows", perm=[0, 2, 1])  # [B, N, 4+nc]
    axis2, zero, two, four, big = const("axis2", [2]), const("zero", [0]), const("two", [2]), const("four", [4]), \
        const("big", [2**31 - 1])
    xy = node("Slice", [rows_first, zero, two, axis2], "xy")
    wh = node("Slice", [rows_first, two, four, axis2], "wh")
    classes = node("Slice", [rows_first, four, big, axis2], "classes")  # [B, N, nc]
    score = node("ReduceMax", [classes], "score", axes=[2], keepdims=1)  # [B, N, 1]
    label = node("Cast", [node("ArgMax", [classes], "label_i", axis=2, keepdims=1)], "label", to=TensorProto.FLOAT)
    half = node("Div", [wh, const("half", np.array(2, np.float32))], "half")
    xyxy = node("Concat", [node("Sub", [xy, half], "x1y1"), node("Add", [xy, half], "x2y2")], "xyxy", axis=2)
    shifted = node("Add", [xyxy, node("Mul", [label, const("max_wh", np.array(_MAX_WH, np.float32))], "offset")],
                   "shifted")
    scores = node("Transpose", [score], "scores", perm=[0, 2, 1])  # [B, 1, N]: one class after the shift
    selected = node("NonMaxSuppression", [shifted, scores, MOST, IOU, SCORE], "selected")  # [M, 3]
    image = node("Gather", [selected, const("col0", np.array(0, np.int64))], "image", axis=1)  # [M]
    anchor = node("Gather", [selected, const("col2", np.array(2, np.int64))], "anchor", axis=1)
    one = const("one", [1])
    image_col = node("Unsqueeze", [image, one], "image_col")  # [M, 1]
    where = node("Concat", [image_col, node("Unsqueeze", [anchor, one], "anchor_col")], "where", axis=1)
    found = node("GatherND", [node("Concat", [xyxy, score, label], "table", axis=2), where], "found")  # [M, 6]
    # each selected box's place within its image: NonMaxSuppression gives them by image, best first
    batch = node("Slice", [node("Shape", [raw], "shape"), zero, one], "batch")  # [1]
    count = node("Squeeze", [batch, zero], "count")
    images = node("Range", [const("i0", np.array(0, np.int64)), count, const("i1", np.array(1, np.int64))], "images")
    mine = node("Cast", [node("Equal", [image_col, node("Unsqueeze", [images, zero], "images_row")], "same")],
                "mine", to=TensorProto.INT64)  # [M, B]
    seen = node("CumSum", [mine, const("axis0", np.array(0, np.int64))], "seen")
    place = node("Sub", [node("GatherElements", [seen, image_col], "upto", axis=1), one], "place")  # [M, 1]
    size = node("Concat", [batch, const("size", [rows, 6])], "size", axis=0)
    empty = node("ConstantOfShape", [size], "empty", value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
    nodes.append(helper.make_node("ScatterND", [empty, node("Concat", [image_col, place], "at", axis=1), found],
                                  [OUTPUT], name="nms/output"))
    defaults = thresholds(confidence, iou, max_detections, rows)
    for name, value in defaults.items():
        graph.initializer.append(numpy_helper.from_array(value, name))
        if not constant:
            graph.input.append(helper.make_tensor_value_info(
                name, TensorProto.FLOAT if value.dtype == np.float32 else TensorProto.INT64, [1]))
    graph.node.extend(nodes)
    graph.initializer.extend(consts)
    batch_dim = dims[0].dim_param or dims[0].dim_value or "batch"
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [batch_dim, rows, 6]))
    meta = {p.key: p for p in model.metadata_props}
    for key, value in (("end2end", "True"), ("nms", f"in the engine, at most {rows} per image")):
        if key in meta:
            meta[key].value = value
        else:
            model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def in_engine(config, backend: str, output_shape: tuple, metadata: dict[str, str]) -> bool:
    """Whether this model's NMS runs in the engine (model.nms): `engine` for a raw-head YOLOv8
    model (a model whose output is already end to end needs nothing added), `host` never, `auto`
    with TensorRT only (on the CPU, ONNX Runtime's NMS costs about what the host's does)."""
    if config.nms == "host" or metadata.get("end2end", "").lower() == "true" or config.layout == "end2end":
        return False
    raw_head = (config.layout in ("auto", "yolov8") and len(output_shape) == 3
                and isinstance(output_shape[1], int) and 4 < output_shape[1] < 1000)
    if config.nms == "engine" and not raw_head:
        raise EngineError(f"model.nms: engine needs a YOLOv8 raw-head model ([batch, 4+classes, anchors]); "
                          f"{config.path} gives {list(output_shape)} (layout {config.layout}): set model.nms: host")
    return raw_head and (config.nms == "engine" or backend == "tensorrt")


def end2end_info(info, rows: int = ROWS):
    """The ModelInfo of the model with NMS appended (labels as the raw model's)."""
    shape = (info.output_shape[0], rows, 6)
    return dataclasses.replace(info, output_shape=shape, metadata={**info.metadata, "end2end": "True"})
