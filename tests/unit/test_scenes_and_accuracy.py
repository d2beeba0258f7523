"""The scene generator is deterministic and its truth describes what it draws; the accuracy
scoring counts hits, misses, false positives and difficult objects as documented."""
import numpy as np
import pytest

from scripts.lab.accuracy import Score, best_offset, evaluate, match_frame
from scripts.lab.scenes import CLASSES, Scene, Truth, TruthBox


@pytest.fixture(scope="module")
def scene():
    return Scene(seed=11, width=320, height=180, frames=120)


def test_same_seed_same_pictures_and_truth_other_seed_differs(scene):
    again = Scene(seed=11, width=320, height=180, frames=120)
    img_a, truth_a = scene.render(40)
    img_b, truth_b = again.render(40)
    assert np.array_equal(img_a, img_b) and truth_a == truth_b
    img_c, truth_c = Scene(seed=12, width=320, height=180, frames=120).render(40)
    assert not np.array_equal(img_a, img_c)


def test_truth_boxes_lie_in_the_frame_and_cover_the_object_colour(scene):
    for index in range(0, 120, 7):
        img, truth = scene.render(index)
        for box in truth:
            x1, y1, x2, y2 = box.bbox
            assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 180
            assert box.label == CLASSES[box.class_id]
            assert 0 <= box.visible <= 1 and box.difficult == (box.visible < 0.5)


def test_objects_enter_leave_and_hide_each_other():
    scene = Scene(seed=3, width=640, height=360, frames=200)
    counts, partly_hidden, at_edge = [], 0, 0
    for index in range(0, 200, 4):
        _, truth = scene.render(index)
        counts.append(len(truth))
        for box in truth:
            x1, y1, x2, y2 = box.bbox
            inside = x1 > 0 and y1 > 0 and x2 < 640 and y2 < 360
            partly_hidden += inside and box.visible < 0.99
            at_edge += not inside
    assert len(set(counts)) > 2, "the number of objects in view changes over time"
    assert partly_hidden > 0 and at_edge > 0


def test_distractors_are_drawn_never_labelled_and_hide_what_is_behind_them():
    plain = Scene(seed=5, width=640, height=360, frames=100, distractors=0)
    busy = Scene(seed=5, width=640, height=360, frames=100, distractors=4)
    assert not any(t.class_id < 0 for t in plain.things) and any(t.class_id < 0 for t in busy.things)
    differs = hidden = 0
    for index in range(0, 100, 4):
        img_p, truth_p = plain.render(index)
        img_b, truth_b = busy.render(index)
        # the same objects in the same places: distractors come on top of a seed's scene
        assert [(t.class_id, t.bbox) for t in truth_p] == [(t.class_id, t.bbox) for t in truth_b]
        differs += not np.array_equal(img_p, img_b)
        hidden += sum(b.visible < p.visible for p, b in zip(truth_p, truth_b))
    assert differs > 10, "distractors are visible in most frames"
    assert hidden > 0, "a distractor in front lowers the visible fraction of what it covers"


def test_truth_is_found_by_pts_and_wraps_at_the_clip_end(scene):
    truth = Truth.of_scene(scene)
    assert truth.index_of(0.0) == 0 and truth.index_of(1.0) == 25
    assert truth.index_of(120 / 25) == 0  # the server loops the clip
    assert truth.at_pts(0.4) == scene.render(10)[1]


def det(cls, box, conf=0.9):
    return {"class_id": cls, "label": CLASSES[cls], "confidence": conf, "bbox": list(box)}


def test_match_frame_counts_hits_misses_false_positives_and_difficult_objects():
    truth = [
        TruthBox(0, "disc", (0, 0, 100, 100), 1.0, False),
        TruthBox(1, "square", (200, 0, 300, 100), 1.0, False),
        TruthBox(2, "triangle", (400, 0, 500, 100), 0.3, True),
    ]
    detections = [
        det(0, (5, 5, 105, 105)),            # hit
        det(0, (0, 0, 100, 100), 0.5),       # duplicate of a matched object: false positive
        det(2, (200, 0, 300, 100)),          # right place, wrong class: false positive
        det(2, (400, 0, 500, 100)),          # the difficult triangle: counts neither way
    ]
    match = match_frame(detections, truth)
    assert sorted(ok for _, _, ok in match.scored) == [False, False, True]
    assert match.missed == 1 and match.truths == {0: 1, 1: 1}


def test_map50_is_one_for_perfect_detections_and_lower_with_confident_mistakes():
    truth = [TruthBox(0, "disc", (0, 0, 10, 10), 1.0, False), TruthBox(1, "square", (20, 0, 30, 10), 1.0, False)]
    perfect, sloppy = Score(), Score()
    perfect.add(match_frame([det(0, (0, 0, 10, 10)), det(1, (20, 0, 30, 10))], truth))
    sloppy.add(match_frame([det(0, (50, 50, 60, 60), 0.99), det(0, (0, 0, 10, 10), 0.5),
                            det(1, (20, 0, 30, 10))], truth))
    assert perfect.map50() == pytest.approx(1.0) and perfect.precision == perfect.recall == 1.0
    assert sloppy.map50() == pytest.approx(0.75) and sloppy.precision == pytest.approx(2 / 3)


def test_detections_equal_to_the_truth_score_perfectly_and_reveal_their_frame_offset(scene):
    truth = Truth.of_scene(scene)
    messages = []
    for index in range(0, 120, 5):
        boxes = [det(b.class_id, b.bbox) for b in truth.frames[(index + 3) % 120] if not b.difficult]
        messages.append({"camera_id": "cam", "frame": {"pts": index / 25}, "detections": boxes})
    assert best_offset(messages, truth) == 3  # the detections were taken 3 frames late
    aligned = [dict(m, frame={"pts": m["frame"]["pts"] + 3 / 25}) for m in messages]
    score = evaluate(aligned, {"cam": truth})["cam"]
    assert score.precision == score.recall == 1.0 and score.map50() == pytest.approx(1.0)
