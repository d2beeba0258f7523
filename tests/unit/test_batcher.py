"""The deadline batcher: full batches go at once, partial ones at the deadline, stale and
superseded frames are dropped and counted, and a slow camera never holds the others up."""
import threading
import time
from collections import Counter

from pipeline.core import Frame, FrameMeta
from pipeline.s3_batch import DeadlineBatcher


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def frame(cam: str, ready_at: float, pts: float = 0.0) -> Frame:
    return Frame(FrameMeta(cam, pts, 0.0, "receive", 64, 48), image=None, ready_at=ready_at)


def make(max_batch=4, wait=0.05, age=1.0, clock=time.monotonic):
    drops = Counter()
    batcher = DeadlineBatcher(max_batch, wait, age, lambda cam, reason: drops.update([(cam, reason)]), clock)
    return batcher, drops


def test_full_batch_is_returned_without_waiting_for_the_deadline():
    batcher, _ = make(max_batch=3, wait=60)
    now = time.monotonic()
    for cam in "abc":
        batcher.put(frame(cam, now))
    started = time.monotonic()
    batch = batcher.next_batch(timeout=5)
    assert [f.meta.camera_id for f in batch.frames] == ["a", "b", "c"]
    assert time.monotonic() - started < 1  # far below the 60 s max_wait


def test_partial_batch_goes_at_the_deadline_without_waiting_for_silent_cameras():
    batcher, _ = make(max_batch=8, wait=0.05)
    batcher.put(frame("fast", time.monotonic()))
    started = time.monotonic()
    batch = batcher.next_batch(timeout=5)
    waited = time.monotonic() - started
    assert [f.meta.camera_id for f in batch.frames] == ["fast"]
    assert 0.03 <= waited < 1.0


def test_no_frames_times_out_with_none():
    batcher, _ = make()
    assert batcher.next_batch(timeout=0.05) is None


def test_newer_frame_supersedes_unread_one_and_is_counted():
    clock = Clock()
    batcher, drops = make(max_batch=4, wait=0, clock=clock)
    batcher.put(frame("a", clock.now, pts=1))
    batcher.put(frame("a", clock.now, pts=2))
    batch = batcher.next_batch(timeout=1)
    assert [f.meta.pts for f in batch.frames] == [2]
    assert drops == {("a", "superseded"): 1}


def test_stale_frames_are_dropped_and_counted():
    clock = Clock()
    batcher, drops = make(max_batch=4, wait=0, age=0.5, clock=clock)
    batcher.put(frame("old", clock.now - 2))
    batcher.put(frame("new", clock.now))
    batch = batcher.next_batch(timeout=1)
    assert [f.meta.camera_id for f in batch.frames] == ["new"]
    assert drops == {("old", "stale"): 1}


def test_cameras_get_equal_shares_under_overload_however_often_they_deliver():
    """Three cameras, one batch slot per round; "busy" delivers three frames a round, the others
    one. Every camera is served once every three rounds."""
    clock = Clock()
    batcher, drops = make(max_batch=1, wait=0, clock=clock)
    served = Counter()
    for _ in range(30):
        for cam in ("busy", "a", "busy", "b", "busy"):
            clock.now += 0.001
            batcher.put(frame(cam, clock.now))
        served.update(f.meta.camera_id for f in batcher.next_batch(timeout=1).frames)
    assert served == {"busy": 10, "a": 10, "b": 10}, served
    assert drops[("busy", "superseded")] > 0  # what it delivered beyond its share


def test_oldest_cameras_are_served_first_when_more_cameras_than_batch():
    clock = Clock()
    batcher, _ = make(max_batch=2, wait=0, clock=clock)
    for i, cam in enumerate("abcd"):
        batcher.put(frame(cam, clock.now + i * 0.001))
    batcher.put(frame("a", clock.now + 0.01))  # a's newer frame moves a to the back
    first = batcher.next_batch(timeout=1)
    second = batcher.next_batch(timeout=1)
    assert [f.meta.camera_id for f in first.frames] == ["b", "c"]
    assert [f.meta.camera_id for f in second.frames] == ["d", "a"]


def test_close_wakes_a_waiting_reader_and_counts_waiting_frames():
    batcher, drops = make()
    batcher.put(frame("waiting", time.monotonic() + 60))  # not due yet: stays in its slot
    result = []
    reader = threading.Thread(target=lambda: result.append(batcher.next_batch(timeout=30)))
    reader.start()
    batcher.close()
    reader.join(5)
    assert not reader.is_alive() and result == [None]
    assert drops == {("waiting", "shutdown"): 1}
    batcher.put(frame("a", time.monotonic()))  # ignored after close
    assert batcher.pending() == 0


def test_producer_thread_wakes_reader():
    batcher, _ = make(max_batch=1, wait=10)
    got = []
    reader = threading.Thread(target=lambda: got.append(batcher.next_batch(timeout=10)))
    reader.start()
    batcher.put(frame("x", time.monotonic()))
    reader.join(5)
    assert got and got[0].frames[0].meta.camera_id == "x"


def request(ready_at: float, answers: list) -> Frame:
    from pipeline.core import DetectReply

    return Frame(FrameMeta("@detect", 0.0, 0.0, "receive", 64, 48), None, ready_at,
                 DetectReply(0.25, None, answers.append))


def test_a_flood_of_requests_takes_one_turn_in_n_plus_1_from_cameras_with_frames_waiting():
    clock = Clock()
    batcher, _ = make(max_batch=1, wait=0, clock=clock)  # ONNX Runtime on the CPU: batches of one
    batcher._request_queue = 100
    answers, served = [], Counter()
    for _ in range(30):
        for cam in "ab":  # both cameras always have a frame waiting...
            batcher.put(frame(cam, clock.now))
        while batcher.requests_waiting() < 5:  # ...and so do requests
            assert batcher.put_request(request(clock.now, answers), deadline=clock.now + 60)
        (taken,) = batcher.next_batch(timeout=0).frames
        served[taken.meta.camera_id] += 1
        clock.now += 0.01
    assert served == {"a": 10, "b": 10, "@detect": 10}


def test_requests_fill_the_places_no_camera_frame_wants():
    clock = Clock()
    batcher, _ = make(max_batch=8, wait=0, clock=clock)
    answers = []
    batcher.put(frame("a", clock.now))
    batcher.put(frame("b", clock.now))
    for _ in range(8):
        assert batcher.put_request(request(clock.now, answers), deadline=clock.now + 60)
    assert not batcher.put_request(request(clock.now, answers), deadline=clock.now + 60)  # queue (8) full: 503
    ids = [f.meta.camera_id for f in batcher.next_batch(timeout=0).frames]
    assert sorted(ids) == ["@detect"] * 6 + ["a", "b"] and batcher.requests_waiting() == 2


def test_a_request_past_its_deadline_is_given_up_and_close_answers_the_rest():
    clock = Clock()
    batcher, _ = make(max_batch=4, wait=0, clock=clock)
    answers = []
    batcher.put_request(request(clock.now, answers), deadline=clock.now + 1)
    clock.now += 2
    assert batcher.next_batch(timeout=0) is None and batcher.requests_waiting() == 0
    batcher.put_request(request(clock.now, answers), deadline=clock.now + 1)
    batcher.close()
    assert len(answers) == 1 and isinstance(answers[0], RuntimeError)


def test_a_recording_waits_for_its_slot_and_loses_no_frame_to_a_slow_reader():
    """A file:// camera puts through Route with its stop event: every frame is read by the
    batcher, in order, however slowly batches are taken; none is superseded or stale."""
    from types import SimpleNamespace

    from pipeline.lanes import Route

    batcher, drops = make(max_batch=2, wait=0.001, age=0.01)
    route, stop = Route([SimpleNamespace(batcher=batcher)]), threading.Event()
    sent = []

    def producer():
        for i in range(40):
            sent.append(route.put(frame("file", time.monotonic(), pts=i), stop))

    thread = threading.Thread(target=producer)
    thread.start()
    got = []
    while len(got) < 40:
        batch = batcher.next_batch(timeout=2)
        assert batch is not None, f"the recording's thread stopped putting after {len(got)} frames"
        got += [f.meta.pts for f in batch.frames]
        time.sleep(0.02)  # slower than the producer, and past max_frame_age: nothing may be dropped
    thread.join(2)
    assert got == list(range(40))
    assert all(sent) and not drops


def test_a_waiting_recording_gives_up_when_stopped_and_a_live_camera_keeps_its_turns():
    from types import SimpleNamespace

    from pipeline.lanes import Route

    batcher, drops = make(max_batch=1, wait=0)
    route, stop = Route([SimpleNamespace(batcher=batcher)]), threading.Event()
    assert route.put(frame("file", time.monotonic(), pts=0), stop)
    result = []
    waiting = threading.Thread(target=lambda: result.append(route.put(frame("file", time.monotonic(), pts=1), stop)))
    waiting.start()
    time.sleep(0.2)
    assert waiting.is_alive()  # the slot is full: it waits (back-pressure) ...
    route.put(frame("live", time.monotonic()))  # ... while a live camera's frame still goes in
    assert batcher.next_batch(timeout=1).frames[0].meta.camera_id == "file"
    assert batcher.next_batch(timeout=1).frames[0].meta.camera_id == "live"  # the live camera's turn comes
    waiting.join(1)
    assert result == [True]  # its frame (pts 1) now waits in the slot
    late = threading.Thread(target=lambda: result.append(route.put(frame("file", time.monotonic(), pts=2), stop)))
    late.start()
    time.sleep(0.2)
    stop.set()  # the camera is stopped while it waits
    late.join(1)
    assert not late.is_alive() and result == [True, False]
    assert [f.meta.pts for f in batcher.next_batch(timeout=1).frames] == [1]  # pts 2 never went in
    assert not drops
