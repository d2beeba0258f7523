"""Upgrades: a spool folder written by an earlier release (tests/fixtures/spool, made by that
release's own code) is read by today's: every record it had not delivered comes back, byte for
byte and in order; nothing crashes; and the folder can be restarted on again."""
import json
import shutil
from pathlib import Path

import pytest

from pipeline.s6_spool import Spool

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "spool"
FOLDERS = sorted(p for p in FIXTURES.iterdir() if (p / "manifest.json").exists())


def test_there_are_fixtures_from_the_release_before_the_format_change_and_the_last_one():
    assert {p.name.split("-")[0] for p in FOLDERS} >= {"4488e7b", "66544af"}
    assert {p.name.split("-", 1)[1] for p in FOLDERS} == {"delivered", "backlog", "killed"}


@pytest.mark.parametrize("fixture", FOLDERS, ids=[p.name for p in FOLDERS])
def test_todays_spool_delivers_every_record_an_earlier_release_left(fixture, tmp_path):
    manifest = json.loads((fixture / "manifest.json").read_text())
    folder = shutil.copytree(fixture / "spool", tmp_path / "spool")
    spool = Spool(folder, max_bytes=1 << 20)
    got = {r.number: r for r in spool.read(1000)}
    wanted = manifest["undelivered"]
    for want in wanted:  # every record not delivered, byte for byte
        record = got.get(want["number"])
        assert record is not None, f"record {want['number']} of {fixture.name} not read back"
        assert (record.topic, record.key, record.value.decode()) == (want["topic"], want["key"], want["value"])
    extra = sorted(set(got) - {w["number"] for w in wanted})
    assert len(extra) <= 3, extra  # deliveries out of order that those releases did not save: sent again
    assert list(got) == sorted(got) and spool.lost["torn"] == 0
    for number in got:
        spool.ack(number)
    new = spool.append("detections", "gate-1", b"{}")
    assert new > max(got, default=-1)
    spool.close()
    again = Spool(folder, max_bytes=1 << 20)  # and it starts again on what today's code left
    assert [r.number for r in again.read(10)] == [new]
    again.close()
