"""Batch: per-camera latest-frame slots and a deadline batcher across cameras.

Hand-over policy "latest wins": each camera has one slot; a new frame replaces an unread one,
which is counted as dropped with reason "superseded". The batcher forms a batch as soon as
`max_batch` frames are waiting, or `max_wait_ms` after the oldest waiting frame arrived, whichever
comes first, so it never waits for a slow or dead camera. Frames older than `max_frame_age_ms`
when a batch forms are dropped with reason "stale".

With more cameras waiting than `max_batch`, the cameras served longest ago go first (then the
oldest frame), so under overload every camera gets the same share. Serving the oldest frame first
did not: a camera's newer frame moved it to the back, so a camera that delivered more often was
served less (8 x 360p: 3.5 to 11.7 frames/s per camera).

A recording (file:// camera) is patient: its thread waits for its slot to be free (`wait_free`)
before it puts the next frame (`put(..., patient=True)`), so none is superseded, and a patient
frame is never dropped as stale: back-pressure in place of dropping. Waiting takes no place in the
fairness order, so live cameras keep their share while files fill the rest of each batch.

Images of POST /v1/detect wait in their own bounded queue (`put_request` refuses when it is full:
the caller answers 503). In the fairness order the queue is one more camera: a batch takes one
request when the queue's turn comes, and fills places no camera frame wants with more. So a
flood of requests takes at most one place in N + 1 from N cameras that all have frames waiting
(with batches of 1, as ONNX Runtime on the CPU runs them: one batch in N + 1), and cameras never
starve the requests either. A request whose deadline passed while it waited is given up (its
caller has answered 504), never inferred.
"""
from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable

from pipeline.core import Batch, Frame

DropCounter = Callable[[str, str], None]  # (camera_id, reason)
_REQUESTS = "@requests"  # the request queue's place in the fairness order (camera ids start alphanumeric)


class DeadlineBatcher:
    """Latest-frame slots for every camera, read as batches by one inference thread."""

    def __init__(
        self,
        max_batch: int,
        max_wait_s: float,
        max_age_s: float,
        on_drop: DropCounter,
        clock: Callable[[], float] = time.monotonic,
        request_queue: int = 8,
    ) -> None:
        self.max_batch = max_batch
        self._max_wait = max_wait_s
        self._max_age = max_age_s
        self._on_drop = on_drop
        self._clock = clock
        self._slots: dict[str, Frame] = {}  # insertion order = arrival order
        self._served: dict[str, int] = {}  # camera -> turn when it was last served
        self._turn = 0
        self._requests: deque[tuple[Frame, float]] = deque()  # (image of a /v1/detect request, its deadline)
        self._request_queue = request_queue
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # the inference thread waits here for frames
        self._free = threading.Condition(self._lock)  # recordings' threads wait here for their slot
        self._patient: set[str] = set()  # cameras whose waiting frame is a recording's (never stale)
        self._closed = False

    def put(self, frame: Frame, patient: bool = False) -> None:
        """Offer a camera's newest frame; replaces (and counts) an unread older one. A `patient`
        frame (a recording's, put once `wait_free` said its slot is free) is never dropped as stale."""
        cam = frame.meta.camera_id
        with self._cond:
            if self._closed:
                return
            if self._slots.pop(cam, None) is not None:
                self._on_drop(cam, "superseded")
            self._slots[cam] = frame
            if patient:
                self._patient.add(cam)
            else:
                self._patient.discard(cam)
            if len(self._slots) == 1 or len(self._slots) >= self.max_batch:
                self._cond.notify()

    def wait_free(self, camera_id: str, timeout: float) -> bool:
        """Wait up to `timeout` s until the camera's slot holds no unread frame; True when it is
        free (or the batcher closed: a put then does nothing)."""
        with self._lock:
            return self._free.wait_for(lambda: self._closed or camera_id not in self._slots, timeout)

    def put_request(self, frame: Frame, deadline: float) -> bool:
        """Queue a /v1/detect image (inferred before monotonic `deadline`, or given up); False when
        the request queue is full."""
        with self._cond:
            if self._closed or len(self._requests) >= self._request_queue:
                return False
            self._requests.append((frame, deadline))
            self._cond.notify()
            return True

    def requests_waiting(self) -> int:
        """Images of /v1/detect requests in the queue."""
        with self._cond:
            return len(self._requests)

    def next_batch(self, timeout: float) -> Batch | None:
        """Wait up to `timeout` s for a batch; None on timeout or after close()."""
        give_up = self._clock() + timeout
        with self._cond:
            while True:
                if self._closed:
                    return None
                now = self._clock()
                self._give_up_late_requests(now)
                if self._slots or self._requests:
                    deadline = self._oldest_arrival() + self._max_wait
                    if len(self._slots) + len(self._requests) >= self.max_batch or now >= deadline:
                        batch = self._take(now)
                        if batch is not None:
                            return batch
                        continue
                    wait_until = min(deadline, give_up)
                else:
                    wait_until = give_up
                if now >= give_up:
                    return None
                self._cond.wait(max(0.0, wait_until - now))

    def _take(self, now: float) -> Batch | None:
        frames = []
        served = self._served.get
        # the least lately served first, then the longest waiting (the place breaks ties: arrival
        # order); a heap, not a sort: a batch takes a few of the many cameras waiting
        waiting = [(served(cam, -1), frame.ready_at, i, cam) for i, (cam, frame) in enumerate(self._slots.items())]
        if self._requests:
            waiting.append((served(_REQUESTS, -1), self._requests[0][0].ready_at, len(waiting), _REQUESTS))
        heapq.heapify(waiting)
        while waiting and len(frames) < self.max_batch:
            cam = heapq.heappop(waiting)[3]
            if cam == _REQUESTS:
                frames.append(self._requests.popleft()[0])
            else:
                frame = self._slots.pop(cam)
                if now - frame.ready_at > self._max_age and cam not in self._patient:
                    self._on_drop(cam, "stale")
                    continue
                frames.append(frame)
            self._turn += 1
            self._served[cam] = self._turn
        while self._requests and len(frames) < self.max_batch:  # places no camera frame wants
            frames.append(self._requests.popleft()[0])
        if self._patient:
            self._free.notify_all()  # a recording's slot may be free
        return Batch(tuple(frames)) if frames else None

    def _oldest_arrival(self) -> float:
        """When the longest-waiting frame or request arrived (slots and requests are in arrival order)."""
        first = [next(iter(self._slots.values())).ready_at] if self._slots else []
        return min(first + ([self._requests[0][0].ready_at] if self._requests else []))

    def _give_up_late_requests(self, now: float) -> None:
        while self._requests and self._requests[0][1] <= now:  # FIFO: the first has the earliest deadline
            self._requests.popleft()

    def remove_camera(self, camera_id: str) -> None:
        """Forget a camera's waiting frame (the camera was removed)."""
        with self._cond:
            self._slots.pop(camera_id, None)
            self._served.pop(camera_id, None)
            self._patient.discard(camera_id)
            self._free.notify_all()

    def pending(self) -> int:
        """Frames waiting in slots."""
        with self._cond:
            return len(self._slots)

    def close(self) -> None:
        """Wake the reader and refuse further frames; waiting frames count as dropped ("shutdown")."""
        with self._cond:
            self._closed = True
            for cam in self._slots:
                self._on_drop(cam, "shutdown")
            self._slots.clear()
            for frame, _ in self._requests:
                frame.reply.deliver(RuntimeError("the daemon is stopping"))
            self._requests.clear()
            self._cond.notify_all()
            self._free.notify_all()
