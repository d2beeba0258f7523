"""The placement storm's checks (scripts/lab/storm.py) judge what reached Kafka correctly: a
camera that moved away and came back to a node is no overlap (the first version of the check
merged the node's two stints and flagged the run between them: seen in the long storm), and two
runs serving one camera at the same time are."""
from datetime import datetime, timezone

from scripts.lab.broker import Record
from scripts.lab.storm import overlaps, removed_late, served_once

T0 = 1_800_000_000.0


def record(cam: str, node: str, run: str, at: float) -> Record:
    stamp = datetime.fromtimestamp(T0 + at, timezone.utc)
    captured = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return Record("detections", cam, {"node": node, "run_id": run, "frame": {"seq": 0, "captured_at": captured}}, T0 + at)


def frames(cam, node, run, start, end, every=0.5):
    return [record(cam, node, run, start + i * every) for i in range(int((end - start) / every) + 1)]


def test_a_camera_that_went_away_and_came_back_is_no_overlap():
    there_and_back = frames("cam-0", "n0", "r0", 0, 5) + frames("cam-0", "n3", "r3", 8, 30) + frames("cam-0", "n0", "r0", 34, 60)
    assert overlaps(there_and_back) == []


def test_two_runs_at_once_are_an_overlap():
    twice = frames("cam-0", "n0", "r0", 0, 20) + frames("cam-0", "n1", "r1", 15, 30)
    assert len(overlaps(twice)) == 1 and "cam-0" in overlaps(twice)[0]
    assert overlaps(frames("cam-0", "n0", "r0", 0, 10) + frames("cam-0", "n0", "r9", 10.5, 20)) == []  # a restart


def test_removed_cameras_and_cameras_served_once_after_the_quiet():
    assert removed_late(frames("cam-1", "n0", "r0", 0, 30), {"cam-1": T0 + 5}) != []
    assert removed_late(frames("cam-1", "n0", "r0", 0, 20), {"cam-1": T0 + 5}) == []
    records = frames("cam-0", "n0", "r0", 0, 20) + frames("cam-1", "n1", "r1", 0, 20) + frames("cam-1", "n2", "r2", 15, 20)
    assert served_once(records, ["cam-0", "cam-1", "cam-2"], T0 + 16) == ["cam-1: [('n1', 'r1'), ('n2', 'r2')]", "cam-2: []"]
