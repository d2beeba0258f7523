"""Alert rules over detections/v1 messages, in capture time: dwell in a zone (the same object when
tracked), counts of distinct tracks, line crossings per track, gaps, and geometry checked at load."""
import json
from importlib import resources

import jsonschema
import pytest

from pipeline.alerting.rules import AlertEngine, AlertRules, inside, load_rules
from pipeline.config import ConfigError
from pipeline.core import Detection, EndedTrack, FrameMeta, FrameResult, ModelRef, TrackEvents
from pipeline.messages import encode_detections, rfc3339_ms

T0 = 1_790_000_000.0
SCHEMA = json.loads(resources.files("pipeline").joinpath("schemas/alerts-v2.schema.json").read_text())
BAY = [(100, 600), (900, 600), (900, 1080), (100, 1080)]


def message(at: float, boxes=(), camera="gate-1", seq=0, label="person", confidence=0.9, tracks=None,
            ended=(), run="run", model="m", attributes=None) -> dict:
    """A detections/v1 message exactly as the daemon encodes it; `tracks` gives each box its track
    id (a tracked camera), `ended` the ids of the tracks that ended."""
    meta = FrameMeta(camera, at - T0, at, "rtcp", 1920, 1080)
    ids = tracks if tracks is not None else [None] * len(boxes)
    attributes = attributes or [None] * len(boxes)
    dets = tuple(Detection(0, label, confidence, box, track_id=t, attributes=a) for box, t, a in zip(boxes, ids, attributes))
    events = None if tracks is None else TrackEvents((), tuple(EndedTrack(t, label, T0, at, 1, "unseen") for t in ended))
    raw = encode_detections(FrameResult(meta, seq, dets, events), ModelRef(model, "0" * 64, "onnxruntime"), run)
    return json.loads(raw)


def engine(**rule) -> AlertEngine:
    rules = AlertRules.model_validate({
        "zones": {"bay": {"camera": "gate-1", "polygon": BAY}},
        "rules": [{"id": "r", "kind": "dwell", "classes": ["person"], "zone": "bay", "for_s": 5, "clear_s": 2, **rule}],
    })
    return AlertEngine(rules)


def run(eng: AlertEngine, frames) -> list[dict]:
    """frames: (seconds after T0, boxes[, track ids[, ended ids]]); 10 fps unless the caller spaces them otherwise."""
    out = []
    for seq, (t, boxes, *tracking) in enumerate(frames):
        ids, ended = (tracking[0] if tracking else None), (tracking[1] if len(tracking) > 1 else ())
        out += eng.feed(message(T0 + t, boxes, seq=seq, tracks=ids, ended=ended))
    for alert in out:
        jsonschema.validate(alert, SCHEMA)
    return out


IN_BAY = (400, 700, 500, 900)  # its bottom middle (450, 900) is inside
BESIDE = (1000, 700, 1100, 900)  # outside
STRADDLING = (50, 300, 500, 650)  # mostly outside, but stands (bottom middle at 275, 650) inside


def test_a_person_in_the_zone_fires_after_for_s_then_resolves_after_clear_s():
    frames = [(i / 10, [IN_BAY]) for i in range(80)] + [(8 + i / 10, []) for i in range(40)]
    alerts = run(engine(), frames)
    assert [a["state"] for a in alerts] == ["firing", "resolved"]
    firing, resolved = alerts
    assert firing["at"] == rfc3339_ms(T0 + 5) and firing["duration_s"] == 5.0  # T0 + 5 s exactly
    assert firing["detections"][0]["bbox"] == list(IN_BAY) and firing["value"] == 1
    assert resolved["alert_id"] == firing["alert_id"]
    assert resolved["duration_s"] == pytest.approx(7.9)  # first to last frame with the person
    assert resolved["at"] == rfc3339_ms(T0 + 9.9)  # 2 s after the last sighting at 7.9 s


def test_outside_the_zone_or_other_classes_or_low_confidence_never_fire():
    assert run(engine(), [(i / 10, [BESIDE]) for i in range(100)]) == []
    eng = engine(min_confidence=0.5)
    out = []
    for i in range(100):
        out += eng.feed(message(T0 + i / 10, [IN_BAY], label="car"))
        out += eng.feed(message(T0 + i / 10, [IN_BAY], confidence=0.3))
    assert out == []


def test_where_an_object_stands_decides_not_its_box():
    assert [a["state"] for a in run(engine(), [(i / 10, [STRADDLING]) for i in range(60)])] == ["firing"]


def test_missed_detections_shorter_than_clear_s_do_not_reset_or_resolve():
    # seen every other second for 0.5 s: gaps of 0.5 s < clear_s 2 s
    frames = [(i / 10, [IN_BAY] if (i // 5) % 2 == 0 else []) for i in range(100)]
    alerts = run(engine(), frames)
    assert [a["state"] for a in alerts] == ["firing"]
    assert alerts[0]["duration_s"] >= 5


def test_a_gap_longer_than_clear_s_restarts_the_timer():
    frames = [(i / 10, [IN_BAY]) for i in range(40)] + [(4 + i / 10, []) for i in range(30)]
    frames += [(7 + i / 10, [IN_BAY]) for i in range(40)]  # 4 s, gap 3 s, 4 s: never 5 s in a row
    assert run(engine(), frames) == []


def test_count_rule_fires_above_its_threshold():
    eng = engine(kind="count", zone=None, above=2, for_s=1)
    crowd = [(10 + 100 * k, 100, 60 + 100 * k, 200) for k in range(3)]
    frames = [(i / 10, crowd[:2]) for i in range(30)] + [(3 + i / 10, crowd) for i in range(30)]
    alerts = run(eng, frames)
    assert [a["state"] for a in alerts] == ["firing"] and alerts[0]["value"] == 3
    assert alerts[0]["started_at"] == rfc3339_ms(T0 + 3)


def test_rules_watch_only_their_cameras():
    eng = engine()
    assert all(eng.feed(message(T0 + i / 10, [IN_BAY], camera="gate-2")) == [] for i in range(100))


def test_point_in_polygon():
    assert inside((450, 900), BAY) and not inside((950, 900), BAY) and not inside((450, 500), BAY)


def test_a_bad_rules_file_says_where_and_what(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("zones:\n  bay: {camera: gate-1, polygon: [[0, 0], [1, 1]]}\n"
                    "rules:\n  - {id: r, kind: dwell, classes: [person], zone: dock}\n"
                    "  - {id: r, kind: loiter, classes: [person]}\n")
    with pytest.raises(ConfigError) as err:
        load_rules(path)
    text = "\n".join(err.value.problems)
    assert f"{path}:2: zones.bay.polygon" in text and "at least 3" in text
    assert f"{path}:5: rules[1].kind" in text and "'dwell', 'count' or 'line'" in text


# ---------------------------------------------------------------------- tracks
OTHER_IN_BAY = (600, 700, 700, 900)


def test_with_tracks_dwell_is_the_same_object_for_for_s():
    # two people take turns in the bay every 3 s: someone is always there, nobody for 5 s
    frames = [(i / 10, [IN_BAY if (i // 30) % 2 == 0 else OTHER_IN_BAY], [1 + (i // 30) % 2]) for i in range(120)]
    assert run(engine(clear_s=0.5), frames) == []
    untracked = [(t, boxes) for t, boxes, _ in frames]  # without track ids: anyone counts
    assert [a["state"] for a in run(engine(clear_s=0.5), untracked)] == ["firing"]


def test_a_dwelling_track_fires_once_with_its_id_and_resolves_when_it_ends():
    frames = [(i / 10, [IN_BAY, BESIDE], [7, 8]) for i in range(70)] + [(7.0, [], [], [7])]
    alerts = run(engine(), frames)
    assert [(a["state"], a["track_ids"]) for a in alerts] == [("firing", [7]), ("resolved", [7])]
    assert alerts[0]["alert_id"].startswith("r:gate-1/m:7:")
    assert alerts[1]["at"] == rfc3339_ms(T0 + 7.0)  # at the track's end, not clear_s later


def test_count_counts_distinct_tracks_seen_in_the_zone_within_clear_s():
    eng = engine(kind="count", above=2, for_s=1, clear_s=1)
    # three people, each detected only every third frame: never more than one box per frame
    boxes = [(100 + 200 * k, 700, 180 + 200 * k, 900) for k in range(3)]
    frames = [(i / 10, [boxes[i % 3]], [10 + i % 3]) for i in range(40)]
    alerts = run(eng, frames)
    assert [a["state"] for a in alerts] == ["firing"] and alerts[0]["value"] == 3
    assert alerts[0]["track_ids"] == [10, 11, 12]
    assert eng.zone_tracks() == {("r", "gate-1"): 3}


def test_two_models_on_one_camera_keep_their_own_tracks_and_a_rule_may_read_one():
    # two detectors on one camera both number their tracks from 1: track 1 of "people" dwells in the
    # bay while track 1 of "helmets" is elsewhere. Read as one stream, the two would be one object.
    eng = engine()
    out = []
    for i in range(70):
        out += eng.feed(message(T0 + i / 10, [IN_BAY], seq=i, tracks=[1], model="people"))
        out += eng.feed(message(T0 + i / 10, [BESIDE], seq=i, tracks=[1], model="helmets"))
    assert [(a["state"], a["model"], a["track_ids"]) for a in out] == [("firing", "people", [1])]
    assert out[0]["alert_id"].startswith("r:gate-1/people:1:")
    jsonschema.validate(out[0], SCHEMA)
    # the helmets model's track 1 ends: the people model's track 1 still dwells (no resolve)
    assert eng.feed(message(T0 + 7.0, [], seq=70, tracks=[], ended=[1], model="helmets")) == []
    # a rule that names its model reads only that model's messages
    only = engine(models=["helmets"])
    for i in range(70):
        assert only.feed(message(T0 + i / 10, [IN_BAY], seq=i, tracks=[1], model="people")) == []
    fired = [a for i in range(60) for a in only.feed(message(T0 + 8 + i / 10, [IN_BAY], tracks=[2], model="helmets"))]
    assert [(a["state"], a["model"]) for a in fired] == [("firing", "helmets")]


def test_a_rule_may_ask_for_a_classifiers_label_and_reads_the_tracks_vote():
    def colour(label, voted):
        return {"colour": {"label": label, "confidence": 0.8, "track_label": voted}}

    eng, out = engine(attributes={"colour": ["red"]}), []
    for i in range(70):  # track 1 is red by vote though one frame in 7 says blue; track 2 is blue; track 3 has none
        one = colour("blue" if i % 7 == 0 else "red", "red")
        out += eng.feed(message(T0 + i / 10, [IN_BAY, OTHER_IN_BAY, STRADDLING], seq=i, tracks=[1, 2, 3],
                                attributes=[one, colour("blue", "blue"), None]))
    assert [(a["state"], a["track_ids"]) for a in out] == [("firing", [1])]
    jsonschema.validate(message(T0, [IN_BAY], tracks=[1], attributes=[colour("red", "red")], run="0" * 32),
                        json.loads(resources.files("pipeline").joinpath("schemas/detections-v1.schema.json").read_text()))


def line_engine(**line) -> AlertEngine:
    rules = AlertRules.model_validate({
        "lines": {"gate": {"camera": "gate-1", "points": [[0, 500], [1920, 500]], **line}},
        "rules": [{"id": "gate-count", "kind": "line", "line": "gate", "classes": ["person"]}],
    })
    return AlertEngine(rules)


def walking(track, y_from, y_to, steps, x=400.0, t0=0.0):
    """A person's boxes walking down (or up) the picture, their feet from y_from to y_to."""
    return [(t0 + i / 10, [(x, y - 100, x + 60, y)], [track])
            for i, y in enumerate(y_from + (y_to - y_from) * k / (steps - 1) for k in range(steps))]


def test_each_crossing_is_one_event_with_its_direction_track_and_running_counts():
    eng = line_engine(in_side="right")  # walking the line left to right, its right side is down
    frames = walking(1, 300, 700, 20) + walking(2, 800, 200, 20, x=900, t0=2) + walking(3, 300, 450, 10, t0=4)
    alerts = run(eng, frames)
    assert [(a["direction"], a["track_ids"], a["counts"]) for a in alerts] == [
        ("in", [1], {"in": 1, "out": 0}), ("out", [2], {"in": 1, "out": 1})]
    assert all(a["kind"] == "line" and a["state"] == "crossed" for a in alerts)
    assert eng.line_counts() == {("gate-count", "gate-1"): {"in": 1, "out": 1}}


def test_a_box_jittering_on_the_line_is_not_counted_and_untracked_boxes_never_are():
    eng = line_engine(margin_px=6)
    jitter = [(i / 10, [(400, 400, 460, 500 + (4 if i % 2 else -4))], [1]) for i in range(40)]
    assert run(eng, jitter) == []
    untracked = [(t, boxes) for t, boxes, _ in walking(5, 300, 700, 20)]
    assert run(eng, untracked) == []


def test_a_new_run_of_the_daemon_forgets_the_old_track_ids():
    eng = line_engine()
    out = []
    for t, boxes, ids in walking(1, 300, 480, 10):  # track 1 stops short of the line...
        out += eng.feed(message(T0 + t, boxes, tracks=ids, run="a" * 32))
    for t, boxes, ids in walking(1, 520, 700, 10, t0=2):  # ...a new run's track 1 is another person
        out += eng.feed(message(T0 + t, boxes, tracks=ids, run="b" * 32))
    assert out == []


@pytest.mark.parametrize("geometry, problem", [
    ("zones:\n  bay: {camera: gate-1, polygon: [[0, 0], [100, 100], [100, 0], [0, 60]]}\n", "crosses itself"),
    ("zones:\n  bay: {camera: gate-1, polygon: [[0, 0], [50, 50], [100, 100]]}\n", "no area"),
    ("lines:\n  gate: {camera: gate-1, points: [[10, 10], [10, 10]]}\n", "has no length"),
    ("lines:\n  gate: {camera: gate-1, points: [[0, 0], [100, 0], [100, 100], [50, -50]]}\n", "crosses itself"),
])
def test_a_self_crossing_zone_or_a_degenerate_line_is_refused_at_load_saying_where(tmp_path, geometry, problem):
    path = tmp_path / "rules.yaml"
    path.write_text(geometry + "rules:\n  - {id: r, kind: count, classes: [person]}\n")
    with pytest.raises(ConfigError) as err:
        load_rules(path)
    text = "\n".join(err.value.problems)
    assert f"{path}:2: " in text and problem in text, text


def test_a_rule_asking_for_evidence_names_its_clip_and_snapshots_and_asks_the_cameras_daemon():
    from pipeline.alerting.rules import evidence_request
    from pipeline.evidence import parse_request

    dwell = engine(clip={"pre_s": 4, "post_s": 6}, snapshot=True)
    alerts = run(dwell, [(i / 10, [IN_BAY], [7]) for i in range(70)] + [(7.0, [], [], [7])])
    firing, resolved = alerts
    evidence = firing["evidence"]
    rid = evidence["request_id"]
    assert rid.startswith("20260921T") and "evidence" not in resolved  # named by the alert's frame's time
    assert evidence["clip"] == {"clip_id": rid, "url": f"/v1/clips/{rid}", "pre_s": 4, "post_s": 6}
    assert evidence["snapshots"] == [{"track_id": 7, "snapshot_id": f"{rid}-7", "url": f"/v1/snapshots/{rid}-7",
                                      "boxed_url": f"/v1/snapshots/{rid}-7/boxed"}]
    request = parse_request(json.dumps(evidence_request(firing)).encode())  # what the daemon reads
    assert (request.request_id, request.camera_id, request.model, request.track_ids) == (rid, "gate-1", "m", [7])
    assert request.at.timestamp() == pytest.approx(T0 + 5.0) and request.snapshots
    assert (request.clip.pre_s, request.clip.post_s) == (4, 6)
    assert request.trigger == {"kind": "rule", "rule": "r", "alert_id": firing["alert_id"]}
    again = run(engine(clip={"pre_s": 4, "post_s": 6}, snapshot=True),
                [(i / 10, [IN_BAY], [7]) for i in range(70)] + [(7.0, [], [], [7])])
    assert again[0]["evidence"] == evidence  # the same alert (read again after a restart) asks for the same ids
    plain = run(engine(), [(i / 10, [IN_BAY], [7]) for i in range(60)])
    assert plain and "evidence" not in plain[0]  # a rule without clip or snapshot asks for nothing
    with pytest.raises(ValueError):
        AlertRules.model_validate({"rules": [{"id": "r", "kind": "dwell", "classes": ["person"],
                                              "clip": {"pre_s": 500}}]})
