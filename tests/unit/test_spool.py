"""The publish spool keeps every message until it is delivered in order, survives a crash (also a
torn last write), stays within its size limit by its named policy, and reads again after a
failed send. On a real small filesystem (tmpfs, as root): a full disk, a read-only remount and a
removed folder lose nothing the spool had kept on disk, hold new records in memory meanwhile, and
never make close() fail."""
import contextlib
import os
import shutil
import subprocess
import sys
import time
from contextlib import closing

import pytest

from pipeline.s6_spool import Spool, SpoolFull, SpoolUnavailable, SpoolUnusable
from scripts.lab.disk import SmallDisk


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


def stopped_after(folder, written: int, delivered: int) -> None:
    """A run that wrote `written` records, had the first `delivered` acknowledged, and stopped cleanly."""
    spool = Spool(folder, max_bytes=1 << 20)
    fill(spool, written)
    for record in spool.read(delivered):
        spool.ack(record.number)
    spool.close()


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
    stopped_after(tmp_path, 6, 3)
    again = opened(tmp_path, max_bytes=1 << 20)
    assert [r.number for r in again.read(10)] == [3, 4, 5]
    assert fill(again, 1) == [6]  # numbering continues


def test_a_restart_after_everything_was_delivered_starts_and_numbering_goes_on(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    fill(spool, 5)
    for record in spool.read(10):
        spool.ack(record.number)
    spool.close()  # a clean stop: the delivered tail segment stays on disk
    for start in range(3):  # start, stop, start again, as an operator restarting it would
        again = Spool(tmp_path, max_bytes=1 << 20)
        assert again.pending == 0 and again.read(10) == []
        assert fill(again, 1) == [5 + start]
        again.read(10)
        again.ack(5 + start)
        again.close()


def test_records_delivered_out_of_order_are_not_sent_again_after_a_clean_restart(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    fill(spool, 8)
    for record in spool.read(8):
        if record.number in (2, 3, 6):  # another camera's messages got through first
            spool.ack(record.number)
    spool.close()
    again = opened(tmp_path, max_bytes=1 << 20)
    assert [r.number for r in again.read(10)] == [0, 1, 4, 5, 7] and again.pending == 8
    for number in (0, 1):
        again.ack(number)
    assert again.pending == 4  # 2 and 3 were delivered before the restart: committed with 0 and 1


def test_leftovers_that_are_not_the_spools_are_left_alone(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    fill(spool, 3)
    spool.close()
    (tmp_path / "notes.seg").write_text("an operator's file")
    (tmp_path / "0000000000000042.seg").mkdir()  # a folder with a segment's name
    (tmp_path / "README").write_text("x")
    (tmp_path / "0000000000000009.tmp").write_bytes(b"half a segment from a crash")
    again = opened(tmp_path, max_bytes=1 << 20)
    assert [r.number for r in again.read(10)] == [0, 1, 2]
    assert (tmp_path / "notes.seg").exists() and (tmp_path / "0000000000000042.seg").is_dir()
    assert not (tmp_path / "0000000000000009.tmp").exists()


def test_a_damaged_commit_mark_sends_everything_again_rather_than_failing(tmp_path):
    stopped_after(tmp_path, 4, 2)
    for damage in ("{\"next\": ", "[1, 2]", "{\"next\": 2, \"acked\": [[\"x\", 3], 7]}"):
        (tmp_path / "committed").write_text(damage)
        again = Spool(tmp_path, max_bytes=1 << 20)
        assert [r.number for r in again.read(10)][-2:] == [2, 3]  # nothing undelivered is lost
        again.close()


def test_a_segment_file_the_daemon_may_not_read_is_named_in_one_line(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    fill(spool, 3)
    spool.close()
    segment = next(tmp_path.glob("*.seg"))
    segment.chmod(0)
    code = f"from pipeline.s6_spool import Spool; Spool({str(tmp_path)!r}, max_bytes=1 << 20)"
    # root reads any file: drop the capabilities that let it, as a service user would not have them
    as_user = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    result = subprocess.run([*as_user, sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "SpoolUnusable" in result.stderr
    assert f"cannot read spool file {segment}: permission denied" in result.stderr and "chown" in result.stderr


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
        assert reopened.lost["torn"] == 1  # the record being written: counted as lost
        assert fill(reopened, 1) == [5]  # and its number is not given again


def test_a_new_segment_whose_only_record_was_torn_is_counted_and_its_number_not_given_again(tmp_path):
    # found by the model test: the empty segment was deleted at start without counting its torn record
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1024)
    fill(spool, 16, size=40)  # 15 records fill a segment: the 16th starts a new one
    last = max(tmp_path.glob("*.seg"))
    assert last.name == "0000000000000015.seg"
    spool.close()
    os.truncate(last, 30)  # power loss while its only record was being written
    with closing(Spool(tmp_path, max_bytes=1 << 20, segment_bytes=1024)) as reopened:
        assert [r.number for r in reopened.read(100)] == list(range(15))
        assert reopened.lost["torn"] == 1  # counted
        assert fill(reopened, 1) == [16]  # and its number is not given again


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
    assert spool.dropped == newest[0] - 20  # the new ones pushed out before the first kept...
    spool.rewind()  # ...and record 0, handed out before its segment went, once the sender gives up on it
    assert spool.dropped == 1 + (newest[0] - 20)


def test_a_dropped_record_the_sender_still_delivers_is_not_counted_as_lost(tmp_path):
    spool = opened(tmp_path, max_bytes=4096, segment_bytes=1024, policy="drop_oldest")
    fill(spool, 5, size=40)
    in_hand = spool.read(5)  # handed to the producer
    fill(spool, 200, size=40)  # the broker is slow: the oldest segment goes
    for record in in_hand:
        spool.ack(record.number)  # it got there after all
    spool.rewind()
    kept = [r.number for r in spool.read(1000)]
    assert spool.dropped == kept[0] - 5  # only the records nobody sent
    assert spool.bytes == sum(p.stat().st_size for p in tmp_path.glob("*.seg"))


def test_a_record_delivered_out_of_order_is_not_sent_again_when_the_segment_before_it_is_dropped(tmp_path):
    # found by the model test in CI (SPOOL_MODEL_SEED=3650912270): dropping the oldest segment moved
    # the commit mark past a record delivered out of order, but not the read position, so it was read again
    spool = opened(tmp_path, max_bytes=4096, segment_bytes=1024, policy="drop_oldest")
    fill(spool, 20, size=40)
    second = min(int(p.name[:16]) for p in tmp_path.glob("*.seg") if p.name != "0000000000000000.seg")
    for record in spool.read(20):
        if record.number == second:  # the first record of the second segment
            spool.ack(second)  # got through first; the first segment's records still on their way
    spool.rewind()  # those failed: read again from 0
    fill(spool, 45, start=20, size=40)  # the broker stays away: the first segment goes
    again = [r.number for r in spool.read(1000)]
    assert spool.dropped == second  # the first segment's records, all undelivered
    assert again == [n for n in range(second, 65) if n != second]  # the second segment on, but not the delivered one


def test_acknowledgements_that_arrive_after_a_rewind_are_not_sent_again(tmp_path):
    spool = opened(tmp_path, max_bytes=1 << 20)
    fill(spool, 6)
    in_flight = spool.read(4)
    spool.rewind()  # a send failed while 0-3 were in flight...
    for record in in_flight:
        spool.ack(record.number)  # ...and they were acknowledged after all
    assert [r.number for r in spool.read(10)] == [4, 5]
    assert spool.pending == 2 and spool.unread == 0


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


# ---------------------------------------------------------------- host faults, on a real small filesystem
needs_mount = pytest.mark.skipif(SmallDisk.unavailable() is not None, reason=str(SmallDisk.unavailable()))


@pytest.fixture
def disk(tmp_path):
    with SmallDisk(tmp_path / "fs", kib=256) as small:
        yield small
        while OPEN:  # before unmounting: a spool holds its folder open
            OPEN.pop().close()


def wait_until_the_disk_takes_a_record(spool, value):
    """Append `value(i)` for i = 0, 1, ... every 100 ms (as a camera would) until one goes to disk;
    returns the values kept (a record that nothing could keep is left out)."""
    kept, deadline = [], time.monotonic() + 5
    while spool.fault is not None:
        assert time.monotonic() < deadline, spool.fault
        with contextlib.suppress(SpoolUnavailable):
            spool.append("detections", "cam", value(len(kept)))
            kept.append(value(len(kept)))
        time.sleep(0.1)
    return kept


def payload(n, size=3000):
    return n.to_bytes(4, "big") * (size // 4)


@needs_mount
def test_a_full_disk_keeps_records_in_memory_and_loses_none_once_space_is_back(disk):
    folder = disk.path / "spool"
    spool = opened(folder, max_bytes=1 << 20, segment_bytes=64 << 10)
    before = [spool.append("detections", "cam", payload(n)) for n in range(20)]
    disk.fill()  # something else takes the rest of the disk
    during = [spool.append("detections", "cam", payload(n)) for n in range(20, 60)]
    assert spool.fault is not None and spool.fault.kind == "full" and spool.memory_used > 0
    assert str(folder) in spool.fault.reason and "free space" in spool.fault.reason
    # the disk filled in the middle of a record: what is on disk is whole records only
    assert [r.value for r in spool.read(100)] == [payload(n) for n in range(60)]
    disk.free()
    after = wait_until_the_disk_takes_a_record(spool, lambda i: payload(60 + i))
    for _ in range(10):  # as the publisher does every second: moves what memory holds to disk
        spool.maintain()
    assert spool.memory_used == 0 and spool.fault is None, (spool.fault, [(s.first, s.count, s.records is not None) for s in spool._segments], disk.free_bytes())
    spool.close()
    reopened = opened(folder, max_bytes=1 << 20)
    assert before + during == list(range(60))
    assert [r.value for r in reopened.read(1000)] == [payload(n) for n in range(60)] + after  # all, once, in order


@needs_mount
def test_a_record_the_disk_cut_short_is_undone_so_the_next_ones_follow_whole_records(disk):
    folder = disk.path / "spool"
    spool = opened(folder, max_bytes=1 << 20, memory_bytes=0)  # nothing held in memory: the same file goes on
    kept = [spool.append("detections", "cam", payload(n, 1000)) for n in range(3)]
    disk.fill()
    with pytest.raises(SpoolUnavailable):
        spool.append("detections", "cam", payload(3, 5000))  # the disk takes part of it, then is full
    disk.free()
    after = wait_until_the_disk_takes_a_record(spool, lambda i: payload(4 + i, 1000))
    spool.close()
    values = [r.value for r in opened(folder, max_bytes=1 << 20).read(100)]
    assert kept == [0, 1, 2] and values == [payload(n, 1000) for n in kept] + after


@needs_mount
def test_a_full_disk_and_a_full_memory_allowance_drop_by_policy_and_count(disk):
    folder = disk.path / "spool"
    spool = opened(folder, max_bytes=1 << 20, memory_bytes=30_000, policy="drop_newest")
    disk.fill()
    kept, refused = 0, 0
    for n in range(30):
        try:
            spool.append("detections", "cam", payload(n))
            kept += 1
        except SpoolUnavailable:
            refused += 1
    assert kept == 9 and refused == 21  # 30000 bytes of memory hold 9 records of 3012 bytes
    assert [r.value for r in spool.read(100)] == [payload(n) for n in range(9)]  # the oldest kept


@needs_mount
def test_a_read_only_remount_keeps_what_the_disk_holds_and_never_fails_the_close(disk):
    folder = disk.path / "spool"
    spool = Spool(folder, max_bytes=1 << 20, segment_bytes=8 << 10)
    for n in range(10):
        spool.append("detections", "cam", payload(n))
    disk.remount(read_only=True)
    try:
        for record in spool.read(4):
            spool.ack(record.number)  # delivered: the commit mark moves, but it cannot be written now
        for n in range(10, 15):
            spool.append("detections", "cam", payload(n))
        assert spool.fault.kind == "read_only" and "remount it read-write" in spool.fault.reason
        spool.maintain()
        report = spool.close()  # does not raise
        assert report["unsaved"] == 5 and report["kept_on_disk"] == 6
        assert report["resent_at_start"] == 4  # delivered, but the mark and the deletions did not reach the disk
        with closing(Spool(folder, max_bytes=1 << 20)) as on_read_only:  # starts degraded, reads the backlog
            assert on_read_only.fault.kind == "read_only"
            assert [r.value for r in on_read_only.read(100)] == [payload(n) for n in range(10)]
            assert on_read_only.append("detections", "cam", payload(99)) == 10  # held in memory
    finally:
        disk.remount(read_only=False)
    with closing(Spool(folder, max_bytes=1 << 20)) as again:
        assert [r.value for r in again.read(100)] == [payload(n) for n in range(10)]  # intact


@needs_mount
def test_drop_oldest_on_a_read_only_folder_keeps_the_segment_it_cannot_delete(disk):
    # found by the model test (SPOOL_MODEL_SEED=890602386): the policy dropped a segment it could
    # not delete, counted its records as dropped, and they came back at the next start
    folder = disk.path / "spool"
    spool = Spool(folder, max_bytes=8 << 10, segment_bytes=1024, policy="drop_oldest")
    for n in range(21):
        spool.append("detections", "cam", payload(n, 360))  # 7.9 KiB of the 8
    disk.remount(read_only=True)
    try:
        for n in range(21, 25):  # past the limit: the disk would have to drop; it goes to memory instead
            spool.append("detections", "cam", payload(n, 360))
        assert spool.fault.kind == "read_only" and spool.dropped == 0
        assert [r.value for r in spool.read(100)] == [payload(n, 360) for n in range(25)]
        spool.close()
    finally:
        disk.remount(read_only=False)
    with closing(Spool(folder, max_bytes=8 << 10, segment_bytes=1024)) as again:
        assert [r.value for r in again.read(100)] == [payload(n, 360) for n in range(21)]  # what the disk held
        assert again.dropped == 0


def test_a_removed_folder_is_reported_and_taken_back_when_it_is_recreated(tmp_path):
    folder = tmp_path / "spool"
    spool = opened(folder, max_bytes=1 << 20)
    for n in range(5):
        spool.append("detections", "cam", payload(n))
    shutil.rmtree(folder)
    spool.maintain()
    assert spool.fault.kind == "removed" and f"mkdir -p {folder}" in spool.fault.reason
    assert spool.lost["removed"] == 5 and spool.pending == 0  # those went with the folder
    held = [spool.append("detections", "cam", payload(n)) for n in range(5, 8)]
    folder.mkdir()
    after = wait_until_the_disk_takes_a_record(spool, lambda i: payload(8 + i))
    spool.maintain()
    spool.close()
    with closing(Spool(folder, max_bytes=1 << 20)) as again:
        assert [r.value for r in again.read(100)] == [payload(n) for n in range(5, 8)] + after
        assert held == [5, 6, 7]


def test_a_second_spool_on_a_locked_folder_is_refused(tmp_path):
    opened(tmp_path, max_bytes=1 << 20)
    with pytest.raises(SpoolUnusable, match="used by another running daemon"):
        Spool(tmp_path, max_bytes=1 << 20)


@needs_mount
def test_a_start_on_a_full_disk_runs_degraded_and_sending_the_backlog_frees_it(disk):
    folder = disk.path / "spool"
    with closing(Spool(folder, max_bytes=1 << 20, segment_bytes=8 << 10)) as first:
        for n in range(40):
            first.append("detections", "cam", payload(n))
    disk.fill()
    spool = opened(folder, max_bytes=1 << 20, segment_bytes=8 << 10)  # does not raise
    assert spool.fault is not None and spool.fault.kind == "full"
    backlog = spool.read(100)
    assert [r.value for r in backlog] == [payload(n) for n in range(40)]
    for record in backlog:
        spool.ack(record.number)  # delivered: its segments are deleted, which frees the disk
    assert wait_until_the_disk_takes_a_record(spool, lambda i: payload(40 + i))
    assert spool.fault is None
