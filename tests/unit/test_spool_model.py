"""The spool against a plain in-memory model, by hypothesis' stateful testing: random sequences of
append, read, acknowledge (in and out of order), rewind (with acknowledgements of what was in
flight arriving after it, or not), sync, clean close and reopen, crash and
reopen (the object dropped without close, the last record optionally torn at a random byte), and,
on a real tmpfs (root), the disk filling up and emptying and the folder going read-only and back.

What must hold whatever the sequence:
- opening never raises;
- reads come in order, byte for byte what was appended, and only records not yet acknowledged
  (or acknowledged where the spool had no chance to save that: a crash, a disk refusing writes);
- a record not acknowledged comes back after any reopen unless the spool counted it as lost
  (policy drops, a torn tail, held in memory when the disk refused it); after a crash, the only
  records allowed to vanish uncounted are those it held in memory;
- after a clean close on a healthy disk, exactly the unacknowledged records come back;
- the spool's counts and sizes match the model and the files on disk.

A failure prints the seed (SPOOL_MODEL_SEED=... reruns it) and hypothesis' shrunk sequence.
SPOOL_MODEL_EXAMPLES sets how many sequences run (CI: 600, about 15 s), within a wall-clock budget
(SPOOL_MODEL_BUDGET_S, 150 s): a slow host runs fewer sequences, says how many and where the time
went, and fails only below a sixth of them. A budget past 300 s needs `-o timeout=...` too
(pytest-timeout stops any test there). (Two CI runs timed out here: each had found a failure
and spent minutes shrinking it under hypothesis' line tracer; the explain phase is off since.)

Bugs it found: a torn segment with no whole record deleted uncounted; numbers given twice after a
torn tail; under drop_oldest, a delivered record read again after the segment before it was
dropped (SPOOL_MODEL_SEED=3650912270), and a segment dropped on a read-only folder counted yet back
at the next start (SPOOL_MODEL_SEED=890602386); all but the second have regression tests in
test_spool.py. The third, reverted, is found by 4 of 6 seeds in 10-22 s through the late
acknowledgements after a rewind (0 of 4 before that rule)."""
import collections
import json
import os
import random
import shutil
import struct
import time

import pytest
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test,
)

import pipeline.s6_spool as spool_module
from pipeline.s6_spool import Spool, SpoolFull, SpoolUnavailable
from scripts.lab.disk import SmallDisk

EXAMPLES = int(os.environ.get("SPOOL_MODEL_EXAMPLES", "600"))
BUDGET_S = float(os.environ.get("SPOOL_MODEL_BUDGET_S", "150"))
BATCH = 100  # sequences per hypothesis run
MAX_BYTES, MEMORY_BYTES, SEGMENT_BYTES = 8 << 10, 3 << 10, 1024
TOPICS, KEYS = ("detections", "camera-status"), ("gate-1", "yard", "dock-3")
_HEAD = struct.Struct(">II")


def saved_acknowledgements(folder) -> tuple[int, list[range]]:
    """What the `committed` file on disk says was delivered: (mark, ranges above it)."""
    try:
        state = json.loads((folder / "committed").read_text())
        return int(state["next"]), [range(a, b) for a, b in state.get("acked", [])]
    except (OSError, ValueError, KeyError, TypeError):
        return 0, []


def record_offsets(path) -> list[int]:
    """Byte offset of each whole record in a segment file."""
    data, offsets, at = path.read_bytes(), [], 0
    while at + _HEAD.size <= len(data):
        length, _ = _HEAD.unpack_from(data, at)
        if at + _HEAD.size + length > len(data):
            break
        offsets.append(at)
        at += _HEAD.size + length
    return offsets


class SpoolMachine(RuleBasedStateMachine):
    """One spool folder, reopened many times, checked against what was appended and acknowledged."""

    root = None  # a folder on the test's tmpfs (or tmp_path without root)
    disk: SmallDisk | None = None
    made = 0
    seen: collections.Counter = collections.Counter()  # what the runs went through, to show they mattered
    clock = {"began": 0.0, "disk_s": 0.0}  # the budget, and where the time went

    def __init__(self) -> None:
        super().__init__()
        SpoolMachine.made += 1
        self.folder = self.root / f"spool-{SpoolMachine.made}"
        self.spool: Spool | None = None
        self.records: dict[int, tuple[str, str, bytes]] = {}  # every record the spool took
        self.unacked: set[int] = set()  # must come back unless the spool counted it lost
        self.acked: set[int] = set()  # delivered
        self.maybe: set[int] = set()  # acknowledged, but the spool could not save that: may come back
        self.in_hand: list[int] = []  # handed out since the last rewind or reopen, not acknowledged
        self.last_read = -1
        self.counted = 0  # losses counted by spools already closed or crashed
        self.refused = 0  # appends refused under drop_newest (counted in `dropped`, never taken)
        self.discovered = 0  # records not acknowledged that did not come back
        self.overcount = 0  # torn records that had been delivered: the spool counts them, rightly not knowing
        self.full = self.read_only = False

    # ---------------------------------------------------------------- opening
    @initialize(policy=st.sampled_from(["drop_oldest", "drop_newest"]), sync_every=st.sampled_from([0.0, 3600.0]))
    def open_first(self, policy, sync_every):
        self.settings = {"max_bytes": MAX_BYTES, "policy": policy, "segment_bytes": SEGMENT_BYTES,
                         "sync_interval_s": sync_every, "memory_bytes": MEMORY_BYTES}
        self.spool = Spool(self.folder, **self.settings)

    def read_all(self) -> list[int]:
        numbers = []
        while True:
            batch = self.read_checked(97)
            numbers += batch
            if len(batch) < 97:
                return numbers

    def spool_counted(self) -> int:
        return self.spool.dropped + sum(self.spool.lost.values())

    def check_accounting(self) -> None:
        counted = self.counted + self.spool_counted() - self.refused
        assert counted == self.discovered + self.overcount, (
            f"{self.discovered} records not delivered are gone, {self.overcount} delivered records counted as torn, "
            f"but the spool counted {counted} (dropped {self.spool.dropped}, lost {self.spool.lost}, "
            f"earlier {self.counted}, refused {self.refused})")

    # ---------------------------------------------------------------- what the publisher does
    @rule(topic=st.sampled_from(TOPICS), key=st.sampled_from(KEYS), size=st.integers(0, 300), n=st.integers(1, 8),
          at_once=st.booleans())
    def append(self, topic, key, size, n, at_once):
        values = [os.urandom(size) for _ in range(n)]
        if at_once:  # a batch's messages (append_many): what each gets must be what append would give it
            outcomes = self.spool.append_many([(topic, key, value) for value in values])
        else:
            outcomes = []
            for value in values:
                try:
                    outcomes.append(self.spool.append(topic, key, value))
                except (SpoolFull, SpoolUnavailable) as exc:
                    outcomes.append(exc)
        for value, number in zip(values, outcomes):
            if isinstance(number, SpoolFull):
                self.refused += 1
                continue
            if isinstance(number, SpoolUnavailable):
                continue  # the disk refused it and memory is full: never taken (the publisher counts it)
            # a number is given again only when nothing left on disk names its first record
            assert number not in self.unacked and number not in self.maybe, f"record number {number} given twice"
            self.seen["append held in memory" if self.spool.fault else "append to disk"] += 1
            self.acked.discard(number)
            self.records[number] = (topic, key, value)
            self.unacked.add(number)

    def read_checked(self, limit: int) -> list[int]:
        got = self.spool.read(limit)
        numbers = [r.number for r in got]
        assert numbers == sorted(set(numbers)) and (not numbers or numbers[0] > self.last_read), numbers
        for record in got:
            assert (record.topic, record.key, record.value) == self.records[record.number], record.number
            assert record.number in self.unacked or record.number in self.maybe, \
                f"record {record.number} was delivered and its delivery saved, yet it was read again"
        # anything not acknowledged that a read stepped over is gone: the spool must have counted it
        end = numbers[-1] if len(numbers) == limit else float("inf")
        skipped = {n for n in self.unacked if self.last_read < n < end} - set(numbers)
        self.unacked -= skipped
        self.discovered += len(skipped)
        gone = {n for n in self.maybe if self.last_read < n < end} - set(numbers)  # delivered, and deleted
        self.maybe -= gone
        self.acked -= gone
        if numbers:
            self.last_read = numbers[-1]
        self.in_hand += numbers
        return numbers

    @rule(limit=st.integers(1, 40))
    def read(self, limit):
        self.read_checked(limit)

    @rule(data=st.data())
    def ack_some(self, data):
        if not self.in_hand:
            return
        chosen = data.draw(st.lists(st.sampled_from(self.in_hand), unique=True, max_size=12))
        for number in chosen:  # any order: another camera's message may get through first
            self.ack(number)

    @rule()
    def ack_all_in_order(self):
        for number in list(self.in_hand):
            self.ack(number)

    def ack(self, number: int) -> None:
        self.spool.ack(number)
        self.in_hand.remove(number)
        self.unacked.discard(number)
        self.maybe.discard(number)
        self.acked.add(number)

    @rule()
    def deliver_everything(self):  # a healthy broker: all read, all acknowledged in order
        self.read_all()
        self.ack_all_in_order()

    @rule()
    def rewind(self):  # a send failed: the publisher waits for the rest, then reads again from the first undelivered
        self.spool.rewind()
        self.in_hand, self.last_read = [], -1

    @rule(data=st.data())
    def rewind_before_the_rest_is_acknowledged(self, data):
        """A sender that does not wait (the spool allows it): acknowledgements of what was in
        flight may still arrive right after the rewind, and those records are not read again.
        The rewind settles the rest: records whose segment was dropped while in flight count as
        lost, and the spool no longer holds anything in flight (a segment dropped later counts
        all its undelivered records at once), so no acknowledgement comes after this step."""
        settled = set(self.spool.dropped_in_hand)
        self.spool.rewind()
        self.in_hand = [n for n in self.in_hand if n not in settled]
        self.last_read = -1
        self.ack_some(data)  # late acknowledgements
        self.in_hand = []  # the rest given up

    @rule()
    def drain(self):
        self.spool.rewind()
        self.in_hand, self.last_read = [], -1
        self.read_all()
        self.check_accounting()
        above_mark = [n for n in self.acked if self.unacked and n > min(self.unacked)]
        if not above_mark and not self.maybe:
            assert self.spool.pending == len(self.unacked), (self.spool.pending, len(self.unacked))
        assert self.spool.unread == 0

    @rule()
    def sync(self):
        self.spool.maintain()  # what the publisher calls every second: fsync, retry the disk, save memory

    # ---------------------------------------------------------------- restarts
    @rule()
    def close_and_reopen(self):
        report = self.spool.close()
        clean = report["unsaved"] == 0 and report["resent_at_start"] == 0 and self.spool.fault is None
        self.forget_unsaved_deliveries()
        self.counted += self.spool_counted()
        self.reopen(clean)

    def reopen(self, clean: bool) -> None:
        """Open the folder again (never raises) and read it all: what is not acknowledged is there
        unless the spool counted it lost; after a clean close, exactly that and nothing delivered."""
        if clean:
            assert not self.maybe, "a clean close left deliveries unsaved"
        self.seen["reopen after a clean close" if clean else "reopen after a crash or a fault"] += 1
        if not self.unacked and any(self.folder.glob("*.seg")):
            self.seen["reopen on a fully delivered spool"] += 1
        if self.read_only or self.full:
            self.seen["reopen on a read-only or full disk"] += 1
        self.spool = Spool(self.folder, **self.settings)
        self.in_hand, self.last_read = [], -1
        got = self.read_all()
        self.spool.rewind()
        self.in_hand, self.last_read = [], -1
        if clean:
            assert set(got) == self.unacked, "after a clean close: exactly the records not acknowledged"
        assert set(got) - self.unacked <= self.maybe, "a delivered record came back though its delivery was saved"
        resent = set(got) & self.maybe  # to be delivered again (the same message: consumers deduplicate)
        self.unacked |= resent
        self.acked -= self.maybe  # sent again, or gone from the disk for good
        self.maybe = set()
        self.check_accounting()

    @rule(crash=st.booleans(), tear=st.booleans(), where=st.floats(0.01, 0.99))
    def deliver_everything_then_restart(self, crash, tear, where):
        """The daemon's most common restart: the broker took everything, then a stop or a kill.
        (Reached by chance only in about one run in ten before this rule: a CI run fell to 54 of 600.)"""
        self.deliver_everything()
        self.crash_and_reopen(tear, where) if crash else self.close_and_reopen()

    @rule(tear=st.booleans(), where=st.floats(0.01, 0.99))
    def crash_and_reopen(self, tear, where):
        spool = self.spool
        in_memory = {n for s in spool._segments if s.records is not None for n in range(s.first, s.end)}
        uncounted = in_memory | set(spool.dropped_in_hand)  # gone with the process, never counted
        self.unacked -= uncounted
        self.maybe -= uncounted
        self.counted += self.spool_counted()
        if spool._reader is not None:  # what the kernel does for a killed process
            spool._reader.close()
        os.close(spool._lock_fd) if spool._lock_fd is not None else None
        spool._lock_fd = None
        self.forget_unsaved_deliveries()
        if tear and not self.read_only:
            self.tear_last_record(where)
        self.spool = None
        self.reopen(False)

    def forget_unsaved_deliveries(self) -> None:
        """Deliveries the `committed` file does not hold may be sent again after the reopen."""
        mark, ranges = saved_acknowledgements(self.folder)
        for number in self.acked:
            if number >= mark and not any(number in r for r in ranges):
                self.maybe.add(number)

    def tear_last_record(self, where: float) -> None:
        """Cut the newest segment file inside its last record, as power loss mid-write would."""
        files = sorted(p for p in self.folder.glob("*.seg") if p.is_file())
        if not files:
            return
        path = files[-1]
        offsets = record_offsets(path)
        if not offsets:
            return
        size = path.stat().st_size
        cut = offsets[-1] + max(1, int((size - offsets[-1]) * where))
        if cut >= size:
            return
        os.truncate(path, cut)
        self.seen["torn tail"] += 1
        number = int(path.name[:16]) + len(offsets) - 1
        mark, ranges = saved_acknowledgements(self.folder)
        if number in self.unacked:
            self.unacked.discard(number)
            self.discovered += 1
        elif number in self.acked and number >= mark and not any(number in r for r in ranges):
            self.overcount += 1  # delivered, but the spool could not know: it counts it as torn
        self.maybe.discard(number)
        self.acked.discard(number)  # gone from the disk: cannot come back

    # ---------------------------------------------------------------- the disk (a real tmpfs, as root)
    @precondition(lambda self: self.disk is not None and not self.read_only)
    @rule(full=st.booleans())
    def disk_fills_or_empties(self, full):
        if full:
            self.disk.fill()
        else:
            for filler in self.disk.path.glob("filler-*"):
                filler.unlink()
        self.full = full

    @precondition(lambda self: self.disk is not None)
    @rule(read_only=st.booleans())
    def remount(self, read_only):
        if read_only != self.read_only:
            self.disk.remount(read_only)
            self.read_only = read_only

    # ---------------------------------------------------------------- always
    @invariant()
    def sizes_match_the_disk(self):
        spool = self.spool
        if spool is None:
            return
        assert spool.bytes <= MAX_BYTES and spool.memory_used <= MEMORY_BYTES
        on_disk = {p.name: p.stat().st_size for p in self.folder.glob("*.seg") if p.is_file()}
        held = sum(on_disk.get(s.path.name, -1 << 40) for s in spool._segments if s.records is None)
        assert spool.bytes == held, (spool.bytes, held)
        assert spool.memory_used == sum(s.size for s in spool._segments if s.records is not None)
        assert spool.pending >= 0 and spool.unread >= 0

    def teardown(self):
        self.seen["records lost and counted"] += self.discovered
        self.seen["records delivered"] += len(self.acked)
        if self.spool is not None:
            self.spool.close()
        if self.disk is not None:
            if self.read_only:
                self.disk.remount(False)
            for filler in self.disk.path.glob("filler-*"):
                filler.unlink()
        shutil.rmtree(self.folder, ignore_errors=True)


def test_the_spool_keeps_its_promises_over_random_runs_restarts_crashes_and_disk_faults(tmp_path, monkeypatch):
    monkeypatch.setattr(spool_module, "_DISK_RETRY_S", 0.0)  # the disk retried at once, not after 1 s
    disk = SmallDisk(tmp_path / "fs", kib=1024) if SmallDisk.unavailable() is None else None
    SpoolMachine.root, SpoolMachine.disk = (disk.path if disk else tmp_path), disk
    clock = SpoolMachine.clock
    clock.update(began=time.monotonic(), disk_s=0.0)
    for name in ("fill", "remount") if disk else ():  # the mount and fill calls, timed
        def timed(*args, _call=getattr(disk, name)):
            began = time.monotonic()
            try:
                return _call(*args)
            finally:
                clock["disk_s"] += time.monotonic() - began
        setattr(disk, name, timed)
    chosen = int(os.environ.get("SPOOL_MODEL_SEED") or random.SystemRandom().randrange(1 << 32))
    ran = 0
    try:
        while ran < EXAMPLES and time.monotonic() - clock["began"] < BUDGET_S:  # in batches: the budget is
            batch = min(BATCH, EXAMPLES - ran)  # checked between hypothesis runs, never inside one
            run_state_machine_as_test(seed((chosen + ran) % (1 << 32))(SpoolMachine), settings=settings(
                max_examples=batch, stateful_step_count=50, deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck),
                phases=[p for p in Phase if p.name != "explain"]))  # explain traces every line (sys.settrace on
            # Python 3.11): a failure took 258 s to report instead of failing fast (seen in CI as a timeout)
            ran += batch
    except BaseException as exc:
        exc.add_note(f"spool model test: rerun with SPOOL_MODEL_SEED={chosen}")
        raise
    finally:
        if disk is not None:
            disk.close()
    took = time.monotonic() - clock["began"]
    print(f"spool model: {ran} of {EXAMPLES} runs in {took:.0f} s (disk fill and remount calls {clock['disk_s']:.1f} s), "
          f"seed {chosen}: " + ", ".join(f"{k} {v}" for k, v in sorted(SpoolMachine.seen.items())))
    assert ran >= EXAMPLES // 6, f"only {ran} of {EXAMPLES} runs within {BUDGET_S:g} s ({clock['disk_s']:.1f} s in disk calls)"
    # the runs went where the bugs live (each of these is found by a mutation in the note of issue 24)
    for event in ("reopen on a fully delivered spool", "torn tail", "reopen after a crash or a fault",
                  "reopen after a clean close"):
        assert SpoolMachine.seen[event] >= ran // 10, (event, SpoolMachine.seen)
    if disk is not None:
        for event in ("append held in memory", "reopen on a read-only or full disk"):
            assert SpoolMachine.seen[event] >= ran // 10, (event, SpoolMachine.seen)
    if disk is None:
        pytest.skip("ran without the disk-fault rules: mounting a tmpfs needs root")
