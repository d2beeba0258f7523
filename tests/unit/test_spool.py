"""The publish spool keeps every message until it is delivered in order, survives a crash (also a
torn last write), stays within its size limit by its named policy, and reads again after a
failed send."""
import subprocess
import sys
from contextlib import closing

import pytest

from pipeline.s6_spool import Spool, SpoolFull


@pytest.fixture(autouse=True)
def _close_spools():
    yield
    while OPEN:
        OPEN.pop().close()


OPEN: list = []


def opened(folder, **settings) -> Spool:
    """A spool closed after the test."""
    OPEN.append(Spool(folder, **settings))
    return OPEN[-1]


def fill(spool, n, start=0, size=20):
    return [spool.append("detections", f"cam-{i % 3}", bytes([i % 256]) * size) for i in range(start, start + n)]


def test_records_come_back_in_order_and_are_forgotten_once_acknowledged(tmp_path):
    spool = opened(tmp_path, max_bytes=1 << 20)
    assert fill(spool, 5) == [0, 1, 2, 3, 4]
    got = spool.read(10)
    assert [r.number for r in got] == [0, 1, 2, 3, 4]
    assert got[4].topic == "detections" and got[4].key == "cam-1" and got[4].value == b"\x04" * 20
    spool.ack(1)  # out of order: nothing is committed before record 0 is
    assert spool.pending == 5
    spool.ack(0)
    assert spool.pending == 3 and spool.read(10) == []


def test_what_was_not_acknowledged_is_read_again_after_a_restart(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    fill(spool, 6)
    for record in spool.read(3):
        spool.ack(record.number)
    spool.close()
    again = opened(tmp_path, max_bytes=1 << 20)
    assert [r.number for r in again.read(10)] == [3, 4, 5]
    assert fill(again, 1) == [6]  # numbering continues


def test_kill_9_loses_nothing_appended_and_a_torn_last_record_is_cut(tmp_path):
    code = f"""
import os, signal
from pipeline.s6_spool import Spool
spool = Spool({str(tmp_path)!r}, max_bytes=1 << 20, sync_interval_s=3600)  # no fsync: only kill -9 safety
for i in range(4):
    spool.append("detections", "cam", bytes([i]) * 20)
os.kill(os.getpid(), signal.SIGKILL)
"""
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == -9
    segment = sorted(tmp_path.glob("*.seg"))[-1]
    with open(segment, "ab") as fh:
        fh.write(b"\x00\x00\x01\x00garbage")  # a record cut off mid-write
    with closing(Spool(tmp_path, max_bytes=1 << 20)) as reopened:
        assert [r.value[:1] for r in reopened.read(10)] == [b"\x00", b"\x01", b"\x02", b"\x03"]
        assert fill(reopened, 1) == [4]


def test_rewind_after_a_failed_send_reads_from_the_first_undelivered_record(tmp_path):
    spool = opened(tmp_path, max_bytes=1 << 20)
    fill(spool, 6)
    sent = spool.read(6)
    spool.ack(sent[0].number)
    spool.ack(sent[2].number)  # delivered out of order before the failure
    spool.rewind()
    assert [r.number for r in spool.read(10)] == [1, 3, 4, 5]  # 2 was delivered: not again
    spool.ack(1)
    assert spool.pending == 3  # 0, 1 and 2 committed


def test_drop_oldest_does_not_count_delivered_records_as_lost(tmp_path):
    spool = opened(tmp_path, max_bytes=4096, segment_bytes=1024, policy="drop_oldest")
    fill(spool, 20, size=40)
    for record in spool.read(20)[1:]:  # all but the first delivered: the commit mark stays at 0
        spool.ack(record.number)
    fill(spool, 200, size=40)
    newest = [r.number for r in spool.read(1000)]
    assert spool.dropped == 1 + (newest[0] - 20)  # record 0, and the new ones pushed out before the first kept
    assert spool.bytes == sum(p.stat().st_size for p in tmp_path.glob("*.seg"))


def test_drop_oldest_keeps_the_newest_within_the_size_limit(tmp_path):
    spool = opened(tmp_path, max_bytes=4096, segment_bytes=1024, policy="drop_oldest")
    fill(spool, 200, size=40)
    assert spool.bytes <= 4096 and spool.dropped > 0
    numbers = [r.number for r in spool.read(1000)]
    assert numbers == list(range(200 - len(numbers), 200))  # the newest, contiguous
    assert spool.dropped + len(numbers) == 200


def test_drop_newest_refuses_new_records_and_keeps_the_oldest(tmp_path):
    spool = opened(tmp_path, max_bytes=4096, segment_bytes=1024, policy="drop_newest")
    with pytest.raises(SpoolFull):
        fill(spool, 200, size=40)
    kept = [r.number for r in spool.read(1000)]
    assert kept[0] == 0 and spool.dropped == 1 and spool.bytes <= 4096


def test_delivered_segments_are_deleted(tmp_path):
    spool = opened(tmp_path, max_bytes=1 << 20, segment_bytes=1024)
    fill(spool, 100, size=40)
    assert len(list(tmp_path.glob("*.seg"))) > 3
    for record in spool.read(100):
        spool.ack(record.number)
    assert len(list(tmp_path.glob("*.seg"))) == 1 and spool.pending == 0
