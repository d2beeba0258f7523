"""YOLO output decoding for all three layouts, NMS, and mapping boxes back to source pixels."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core import InputSpec, Letterbox
from pipeline.s5_postprocess import (
    LayoutError,
    class_aware_nms,
    detect_layout,
    detections_for_image,
    nms,
)

LABELS = ("person", "car", "dog")
IDENTITY = Letterbox(scale=1.0, pad_x=0, pad_y=0, src_w=640, src_h=384)


def v8_output(objects, anchors=50, nc=3):
    """[4+nc, N] with `objects` = [(cx, cy, w, h, class, score)], the rest low-score noise."""
    out = np.zeros((4 + nc, anchors), np.float32)
    out[4:] = 0.01
    out[:4] = 10
    for i, (cx, cy, w, h, cls, score) in enumerate(objects):
        out[:4, i] = (cx, cy, w, h)
        out[4 + cls, i] = score
    return out


def test_yolov8_layout_decodes_known_boxes():
    out = v8_output([(100, 50, 40, 20, 1, 0.9), (300, 200, 60, 60, 0, 0.6)])
    dets = detections_for_image(out, "yolov8", IDENTITY, LABELS, 0.25, 0.45, 100)
    assert [(d.label, d.class_id, d.bbox) for d in dets] == [
        ("car", 1, (80.0, 40.0, 120.0, 60.0)),
        ("person", 0, (270.0, 170.0, 330.0, 230.0)),
    ]
    assert [d.confidence for d in dets] == pytest.approx([0.9, 0.6])


def test_yolov5_layout_multiplies_objectness_and_class_score():
    out = np.zeros((20, 5 + 3), np.float32)
    out[0] = (100, 100, 20, 40, 0.9, 0.1, 0.1, 0.8)  # 0.9 * 0.8 = 0.72, class 2
    out[1] = (200, 100, 20, 20, 0.9, 0.2, 0.2, 0.2)  # 0.18 < 0.25: dropped
    out[2] = (300, 100, 20, 20, 0.2, 1.0, 0.0, 0.0)  # objectness below threshold
    dets = detections_for_image(out, "yolov5", IDENTITY, LABELS, 0.25, 0.45, 100)
    assert len(dets) == 1
    assert (dets[0].label, dets[0].bbox) == ("dog", (90.0, 80.0, 110.0, 120.0))
    assert dets[0].confidence == pytest.approx(0.72)


def test_end2end_layout_keeps_overlapping_boxes_without_nms():
    out = np.zeros((300, 6), np.float32)
    out[0] = (10, 10, 110, 110, 0.9, 1)
    out[1] = (12, 12, 112, 112, 0.8, 1)  # overlaps the first: an end-to-end head already decided
    out[2] = (0, 0, 5, 5, 0.1, 0)
    dets = detections_for_image(out, "end2end", IDENTITY, LABELS, 0.25, 0.45, 100)
    assert [d.bbox for d in dets] == [(10.0, 10.0, 110.0, 110.0), (12.0, 12.0, 112.0, 112.0)]


def test_nms_suppresses_same_class_overlap_but_keeps_other_classes():
    out = v8_output([
        (100, 100, 50, 50, 0, 0.9),
        (102, 102, 50, 50, 0, 0.8),  # IoU ~0.85 with the first, same class: suppressed
        (102, 102, 50, 50, 1, 0.7),  # same place, other class: kept
        (400, 300, 50, 50, 0, 0.6),  # far away: kept
    ])
    dets = detections_for_image(out, "yolov8", IDENTITY, LABELS, 0.25, 0.45, 100)
    assert [(d.class_id, d.confidence) for d in dets] == [(0, pytest.approx(0.9)), (1, pytest.approx(0.7)), (0, pytest.approx(0.6))]


def test_nms_threshold_and_order():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.5, 0.9, 0.7], np.float32)
    # IoU of boxes 0 and 1 is 50 / 100 = 0.5: kept below that threshold, suppressed above it
    assert nms(boxes, scores, iou=0.55).tolist() == [1, 2, 0]
    assert nms(boxes, scores, iou=0.45).tolist() == [1, 2]
    assert class_aware_nms(boxes[:0], scores[:0], np.zeros(0), 0.5).tolist() == []


def test_max_detections_keeps_the_best():
    out = v8_output([(50 + 60 * i, 50, 20, 20, 0, 0.3 + 0.05 * i) for i in range(8)])
    dets = detections_for_image(out, "yolov8", IDENTITY, LABELS, 0.25, 0.45, 3)
    assert [d.confidence for d in dets] == pytest.approx([0.65, 0.6, 0.55])


def test_unknown_class_gets_generic_label():
    out = v8_output([(100, 100, 20, 20, 2, 0.9)])
    dets = detections_for_image(out, "yolov8", IDENTITY, ("only-one",), 0.25, 0.45, 10)
    assert dets[0].label == "class_2"


def test_boxes_map_back_to_source_pixels_and_are_clipped():
    spec = InputSpec(None, None, None, 640)
    lb = spec.letterbox(1920, 1080, 640, 384)  # scale 1/3, 12 px of padding top and bottom
    assert (lb.scale, lb.pad_x, lb.pad_y) == (pytest.approx(1 / 3), 0, 12)
    out = v8_output([(320, 192, 64, 36, 0, 0.9), (630, 20, 40, 40, 1, 0.8)])
    dets = detections_for_image(out, "yolov8", lb, LABELS, 0.25, 0.45, 10)
    assert dets[0].bbox == pytest.approx((864.0, 486.0, 1056.0, 594.0))
    assert dets[1].bbox == pytest.approx((1830.0, 0.0, 1920.0, 84.0))  # clipped at right and top


def test_box_entirely_in_padding_is_dropped():
    lb = InputSpec(None, None, None, 640).letterbox(1920, 1080, 640, 384)
    out = v8_output([(320, 5, 40, 8, 0, 0.9)])  # inside the top padding band
    assert detections_for_image(out, "yolov8", lb, LABELS, 0.25, 0.45, 10) == ()


@pytest.mark.parametrize(
    ("shape", "nc", "meta", "layout"),
    [
        ((1, 84, 8400), 80, {}, "yolov8"),
        (("batch", 84, "anchors"), 80, {}, "yolov8"),
        (("batch", 7, "anchors"), None, {}, "yolov8"),
        ((1, 25200, 85), 80, {}, "yolov5"),
        (("batch", "anchors", 85), None, {}, "yolov5"),
        ((1, 300, 6), 80, {"end2end": "True"}, "end2end"),
        (("batch", 300, 6), None, {}, "end2end"),
        ((1, 25200, 6), 1, {}, "yolov5"),  # single-class YOLOv5 is not end-to-end
    ],
)
def test_detect_layout(shape, nc, meta, layout):
    assert detect_layout(shape, nc, meta) == layout


def test_detect_layout_rejects_unknown_shapes():
    with pytest.raises(LayoutError):
        detect_layout((1, 3, 640, 640), 80, {})
    with pytest.raises(LayoutError):
        detect_layout(("b", "x", "y"), None, {})


@pytest.mark.parametrize(
    ("src", "rect"),
    [((1920, 1080), (640, 384)), ((1280, 720), (640, 384)), ((640, 480), (640, 512)),
     ((1080, 1920), (384, 640)), ((2560, 1080), (640, 288)), ((640, 640), (640, 640))],
)
def test_dynamic_models_get_the_smallest_stride_rectangle(src, rect):
    assert InputSpec(None, None, None, 640).rect_for(*src) == rect


@pytest.mark.parametrize("src", [(1920, 1080), (1280, 720), (1024, 768), (640, 480), (2560, 1080), (1080, 1920)])
def test_the_short_side_always_has_grey_beyond_both_edges(src):
    # a picture cut flush at its short side made the model see shapes in the edge (issue 6)
    spec = InputSpec(None, None, None, 320)
    w, h = spec.rect_for(*src)
    lb = spec.letterbox(*src, w, h)
    sw, sh = lb.scaled_size
    short_pad = lb.pad_y if sw >= sh else lb.pad_x
    assert short_pad >= spec.stride // 4


def test_fixed_models_get_their_own_size():
    spec = InputSpec(1, 640, 640)
    assert spec.rect_for(1920, 1080) == (640, 640)
    lb = spec.letterbox(1920, 1080, 640, 640)
    assert (lb.scaled_size, lb.pad_y) == ((640, 360), 140)


@settings(max_examples=300, deadline=None)
@given(
    src_w=st.integers(16, 4096), src_h=st.integers(16, 4096),
    fx1=st.floats(0, 1), fy1=st.floats(0, 1), fx2=st.floats(0, 1), fy2=st.floats(0, 1),
)
def test_letterbox_then_inverse_returns_the_source_box(src_w, src_h, fx1, fy1, fx2, fy2):
    spec = InputSpec(None, None, None, 640)
    w, h = spec.rect_for(src_w, src_h)
    assert w % 32 == 0 and h % 32 == 0 and max(w, h) <= 640 + 32
    lb = spec.letterbox(src_w, src_h, w, h)
    sw, sh = lb.scaled_size
    assert lb.pad_x >= 0 and lb.pad_y >= 0 and lb.pad_x + sw <= w and lb.pad_y + sh <= h
    box = np.array([[min(fx1, fx2) * src_w, min(fy1, fy2) * src_h, max(fx1, fx2) * src_w, max(fy1, fy2) * src_h]])
    forward = np.column_stack([box[:, 0] * lb.scale + lb.pad_x, box[:, 1] * lb.scale + lb.pad_y,
                               box[:, 2] * lb.scale + lb.pad_x, box[:, 3] * lb.scale + lb.pad_y])
    back = lb.to_source(forward)
    np.testing.assert_allclose(back, box, atol=1e-3 * max(src_w, src_h))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-5000, 5000), st.floats(-5000, 5000), st.floats(0, 3000), st.floats(0, 3000)),
                min_size=1, max_size=20))
def test_mapped_boxes_always_lie_inside_the_frame(raw):
    lb = InputSpec(None, None, None, 640).letterbox(1280, 720, 640, 384)
    boxes = np.array([(x, y, x + w, y + h) for x, y, w, h in raw], np.float32)
    mapped = lb.to_source(boxes)
    assert (mapped[:, 0::2] >= 0).all() and (mapped[:, 0::2] <= 1280).all()
    assert (mapped[:, 1::2] >= 0).all() and (mapped[:, 1::2] <= 720).all()


@pytest.mark.parametrize("value", [1.8446744e19, 3.0e38])
def test_huge_finite_boxes_from_a_broken_model_do_not_overflow_nms(value):
    # found by the fuzz test in CI: float32 areas of such boxes overflowed (RuntimeWarning)
    boxes = np.full((3, 4), value, np.float32)
    boxes[:, :2] /= 2  # x1, y1 half of x2, y2: huge boxes that overlap fully
    keep = nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), 0.45)
    assert keep.tolist() == [0]
