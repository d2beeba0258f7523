"""Postprocessing a whole batch at once (detections_for_batch) gives what postprocessing each
image alone gives (detections_for_image), for every layout, on random outputs with clusters of
overlapping candidates, several classes, NaNs, boxes outside the frame and various letterboxes."""
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.core import Letterbox
from pipeline.s5_postprocess import LayoutError, detections_for_batch, detections_for_image

LABELS = ("disc", "square", "triangle", "cross")


def raw_heads(rng, anchors: int, objects: int, classes: int = 4) -> np.ndarray:
    """[4+nc, anchors]: `objects` clusters of 1-6 overlapping candidates, noise below threshold."""
    out = np.zeros((4 + classes, anchors), np.float32)
    out[4:] = rng.uniform(0, 0.2, (classes, anchors))
    for _ in range(objects):
        cx, cy, w, h = rng.uniform(0, 640), rng.uniform(0, 384), rng.uniform(5, 200), rng.uniform(5, 200)
        cls = rng.integers(classes)
        for a in rng.choice(anchors, rng.integers(1, 7), replace=False):
            out[:4, a] = (cx + rng.normal(0, w / 8), cy + rng.normal(0, h / 8), w * rng.uniform(0.8, 1.2),
                          h * rng.uniform(0.8, 1.2))
            out[4 + cls, a] = rng.uniform(0.25, 0.99)
            if rng.random() < 0.2:
                out[4 + (cls + 1) % classes, a] = rng.uniform(0.25, 0.99)  # a second class on the same anchor
    if rng.random() < 0.3:
        out[:, rng.integers(anchors)] = np.nan
    return out


def letterbox(rng) -> Letterbox:
    src_w, src_h = int(rng.choice([1920, 1280, 640, 1024])), int(rng.choice([1080, 720, 480, 768]))
    scale = min(640 / src_w, 384 / src_h)
    return Letterbox(scale, int((640 - src_w * scale) // 2), int((384 - src_h * scale) // 2), src_w, src_h)


def same(batch, one):
    assert len(batch) == len(one)
    for a, b in zip(batch, one):
        assert (a.class_id, a.label) == (b.class_id, b.label)
        assert abs(a.confidence - b.confidence) <= 1e-4
        assert np.allclose(a.bbox, b.bbox, atol=0.1001)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 8), st.integers(0, 40), st.sampled_from([0.3, 0.45, 0.7]),
       st.integers(1, 100))
@example(31619009, 6, 17, 0.7, 37)  # an IoU at the threshold: the one-image NMS once shifted classes in float32
def test_a_batch_gives_each_images_own_detections_raw_heads(seed, batch, objects, iou, most):
    rng = np.random.default_rng(seed)
    outputs = np.stack([raw_heads(rng, 300, objects) for _ in range(batch)])
    boxes = [letterbox(rng) for _ in range(batch)]
    found = detections_for_batch(outputs, "yolov8", boxes, LABELS, 0.25, iou, most)
    for i in range(batch):
        same(found.for_image(i), detections_for_image(outputs[i], "yolov8", boxes[i], LABELS, 0.25, iou, most))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 8), st.integers(0, 30), st.sampled_from(["yolov5", "end2end"]))
def test_a_batch_gives_each_images_own_detections_other_layouts(seed, batch, objects, layout):
    rng = np.random.default_rng(seed)
    heads = [raw_heads(rng, 200, objects) for _ in range(batch)]
    if layout == "yolov5":  # [N, 5+nc]: objectness then class scores
        outputs = np.stack([np.concatenate([h[:4], h[4:].max(axis=0, keepdims=True), h[4:]]).T for h in heads])
    else:  # [N, 6]: x1, y1, x2, y2, score, class
        outputs = np.zeros((batch, 50, 6), np.float32)
        for i, h in enumerate(heads):
            top = np.argsort(-h[4:].max(axis=0))[:50]
            cx, cy, w, ht = h[:4, top]
            outputs[i] = np.stack([cx - w / 2, cy - ht / 2, cx + w / 2, cy + ht / 2, h[4:, top].max(axis=0),
                                   h[4:, top].argmax(axis=0)], axis=1)
    boxes = [letterbox(rng) for _ in range(batch)]
    found = detections_for_batch(outputs, layout, boxes, LABELS, 0.25, 0.45, 100)
    for i in range(batch):
        same(found.for_image(i), detections_for_image(outputs[i], layout, boxes[i], LABELS, 0.25, 0.45, 100))


def test_an_output_of_another_shape_is_refused_with_the_layout_named():
    with pytest.raises(LayoutError, match="yolov8"):
        detections_for_batch(np.zeros((2, 3, 100), np.float32), "yolov8", [Letterbox(1, 0, 0, 10, 10)] * 2,
                             LABELS, 0.25, 0.45, 10)
    with pytest.raises(LayoutError, match="2 images"):
        detections_for_batch(np.zeros((3, 8, 100), np.float32), "yolov8", [Letterbox(1, 0, 0, 10, 10)] * 2,
                             LABELS, 0.25, 0.45, 10)
