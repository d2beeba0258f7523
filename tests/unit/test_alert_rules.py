"""Alert rules over detections/v1 messages, in capture time: dwell in a zone, counts, gaps."""
import json
from importlib import resources

import jsonschema
import pytest

from pipeline.alerting.rules import AlertEngine, AlertRules, inside, load_rules
from pipeline.config import ConfigError
from pipeline.core import Detection, FrameMeta, FrameResult, ModelRef
from pipeline.s6_publish import encode_detections, rfc3339_ms

T0 = 1_790_000_000.0
SCHEMA = json.loads(resources.files("pipeline").joinpath("schemas/alerts-v1.schema.json").read_text())
BAY = [(100, 600), (900, 600), (900, 1080), (100, 1080)]


def message(at: float, boxes=(), camera="gate-1", seq=0, label="person", confidence=0.9) -> dict:
    """A detections/v1 message exactly as the daemon encodes it."""
    meta = FrameMeta(camera, at - T0, at, "rtcp", 1920, 1080)
    dets = tuple(Detection(0, label, confidence, box) for box in boxes)
    raw = encode_detections(FrameResult(meta, seq, dets), ModelRef("m", "0" * 64, "onnxruntime"), "run")
    return json.loads(raw)


def engine(**rule) -> AlertEngine:
    rules = AlertRules.model_validate({
        "zones": {"bay": {"camera": "gate-1", "polygon": BAY}},
        "rules": [{"id": "r", "kind": "dwell", "classes": ["person"], "zone": "bay", "for_s": 5, "clear_s": 2, **rule}],
    })
    return AlertEngine(rules)


def run(eng: AlertEngine, frames) -> list[dict]:
    """frames: (seconds after T0, boxes); 10 fps unless the caller spaces them otherwise."""
    out = []
    for seq, (t, boxes) in enumerate(frames):
        out += eng.feed(message(T0 + t, boxes, seq=seq))
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
    assert f"{path}:5: rules[1].kind" in text and "'dwell' or 'count'" in text
