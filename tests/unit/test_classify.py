"""The classifier cascade (pipeline.s5_classify) with the real colour classifier
(engines/colours-cnn.onnx) on ONNX Runtime: crops of the chosen classes labelled, a track's label
voted over its sightings, votes forgotten when the track ends, and a failing classifier losing no
detection."""
from pathlib import Path

import numpy as np

from pipeline.config import ModelConfig
from pipeline.core import Detection, EndedTrack, FrameMeta, FrameResult, TrackEvents
from pipeline.s4_infer.loader import load_engine
from pipeline.s5_classify import Cascade, Classifier

MODEL = Path(__file__).resolve().parents[2] / "engines" / "colours-cnn.onnx"
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 220)}
BOX = (100.0, 100.0, 200.0, 200.0)


def picture(colour: str) -> np.ndarray:
    img = np.full((360, 640, 3), 110, np.uint8)  # a grey floor, a coloured square on it
    img[110:190, 110:190] = COLOURS[colour]
    return img


class Frame:
    def __init__(self, image):
        self.image = image


def result(seq: int, class_id: int = 1, track: int | None = 7, ended=()) -> FrameResult:
    meta = FrameMeta("cam", seq / 10, 1e9 + seq / 10, "rtcp", 640, 360)
    det = Detection(class_id, "square", 0.9, BOX, track, class_id if track else None, "square" if track else None)
    return FrameResult(meta, seq, (det,), TrackEvents((), tuple(EndedTrack(t, "square", 0, 0, 1, "unseen") for t in ended)))


def cascade(classes=frozenset({1})) -> Cascade:
    return Cascade([Classifier("colour", load_engine(ModelConfig(path=MODEL)), classes)])


def test_each_crop_is_labelled_and_the_track_keeps_its_voted_label_through_a_stray_frame():
    run = cascade()
    labels = []
    for seq, colour in enumerate(["red", "red", "red", "blue", "red"]):
        [out] = run([Frame(picture(colour))], [result(seq)])
        labels.append(out.detections[0].attributes["colour"])
    assert [a["label"] for a in labels] == ["red", "red", "red", "blue", "red"]
    assert [a["track_label"] for a in labels] == ["red"] * 5  # one blue frame does not flip the track
    assert all(0.5 < a["confidence"] <= 1 for a in labels)


def test_an_ended_tracks_votes_go_and_other_classes_are_not_classified():
    run = cascade()
    for seq in range(3):
        run([Frame(picture("green"))], [result(seq)])
    [out] = run([Frame(picture("blue"))], [result(3, ended=(7,))])  # track 7 ended: the same id starts afresh
    assert out.detections[0].attributes["colour"]["track_label"] == "blue"
    [other] = run([Frame(picture("red"))], [result(4, class_id=0)])  # class 0 is not among `classes`
    assert other.detections[0].attributes is None
    [untracked] = run([Frame(picture("red"))], [result(5, track=None)])
    assert untracked.detections[0].attributes["colour"] == {"label": "red", "confidence": untracked.detections[0]
                                                            .attributes["colour"]["confidence"], "track_label": None}


def test_a_classifier_that_fails_leaves_the_detections_as_they_were():
    run = cascade()
    before = [result(0)]
    after = run([Frame("not a picture it can read")], before)  # no look, no crop: no attribute
    assert after[0].detections == before[0].detections
    broken = Cascade([Classifier("colour", load_engine(ModelConfig(path=MODEL)), None)])
    broken._classifiers[0].engine.infer = lambda batch: (_ for _ in ()).throw(RuntimeError("engine lost"))
    assert broken([Frame(picture("red"))], before)[0].detections == before[0].detections
