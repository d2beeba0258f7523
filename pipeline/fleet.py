"""The running cameras, and their one owner.

Three things change which cameras run: a reload (SIGHUP), the placement group's assignments and
the shutdown. They all go through the Fleet, which makes one change at a time: a change holds
its lock from the moment it reads which cameras run until its last camera started or stopped,
so a change that awaits a camera thread's end cannot be interleaved with another. A change says
what should run (`converge`), not what to do, and is worked out under the lock against what runs
then. After `close` (shutdown), changes start nothing.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from pipeline.config import CameraConfig
from pipeline.lanes import Lane
from pipeline.logs import log_event
from pipeline.s1_source import CameraWorker

log = logging.getLogger(__name__)
CAMERA_JOIN_S = 2.0

Wanted = Iterable[CameraConfig] | Callable[[frozenset[str]], Iterable[CameraConfig]]


@dataclass
class Change:
    """What one change did."""

    started: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # wanted, but no lane could take them


class Fleet:
    """Starts, stops and replaces cameras, one change at a time. `lane_for` picks a camera's lane
    (None: it cannot run here); `make_worker` builds its (unstarted) worker; `on_stopped` is told
    of each camera stopped, after its thread ended and its lane forgot it."""

    def __init__(self, lane_for: Callable[[CameraConfig], Lane | None],
                 make_worker: Callable[[CameraConfig, Lane], CameraWorker],
                 on_stopped: Callable[[str], None] = lambda camera_id: None) -> None:
        self._lane_for, self._make_worker, self._on_stopped = lane_for, make_worker, on_stopped
        self._workers: dict[str, CameraWorker] = {}
        self._lanes: dict[str, Lane] = {}
        self._lock = asyncio.Lock()
        self.closed = False

    # ------------------------------------------------------------------ what runs (read-only views)
    def __contains__(self, camera_id: object) -> bool:
        return camera_id in self._workers

    def __len__(self) -> int:
        return len(self._workers)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._workers))

    def get(self, camera_id: str) -> CameraWorker | None:
        """The worker of a running camera, or None."""
        return self._workers.get(camera_id)

    def items(self) -> list[tuple[str, CameraWorker]]:
        """(camera id, worker) of every running camera, in start order."""
        return list(self._workers.items())

    # ------------------------------------------------------------------ changes
    async def converge(self, wanted: Wanted, restart: Iterable[str] = ()) -> Change:
        """Run exactly `wanted` (cameras, or a function of the running camera ids that gives
        them): stop the others, and `restart` ids among those that stay, then start what does not
        run. Nothing happens once closed."""
        async with self._lock:
            if self.closed:
                return Change()
            desired = list(wanted(frozenset(self._workers)) if callable(wanted) else wanted)
            ids, again = {c.id for c in desired}, set(restart)
            change = Change(stopped=[cam for cam in self._workers if cam not in ids or cam in again])
            await self._stop(change.stopped)
            for camera in desired:
                if camera.id in self._workers:
                    continue
                lane = self._lane_for(camera)
                if lane is None:
                    change.refused.append(camera.id)
                else:
                    self._start(camera, lane)
                    change.started.append(camera.id)
            return change

    async def close(self) -> None:
        """Shutdown: once a change in progress has ended, ask every camera to stop; from now on
        changes do nothing. `join` then waits for the threads."""
        async with self._lock:
            self.closed = True
            for worker in self._workers.values():
                worker.request_stop()

    async def join(self, budget_s: float = CAMERA_JOIN_S) -> list[str]:
        """Wait (in all at most about `budget_s`) for the closed fleet's camera threads; returns
        the cameras whose threads are still blocked (abandoned: they are daemon threads)."""
        workers = list(self._workers.items())
        share = budget_s / max(1, len(workers))
        return [cam for cam, worker in workers if not await asyncio.to_thread(worker.stop, share)]

    # ------------------------------------------------------------------ one camera
    def _start(self, camera: CameraConfig, lane: Lane) -> None:
        worker = self._make_worker(camera, lane)
        self._workers[camera.id] = worker
        self._lanes[camera.id] = lane
        if camera not in lane.cameras:
            lane.cameras.append(camera)
        worker.start()

    async def _stop(self, camera_ids: list[str]) -> None:
        """Stop these cameras: all are asked at once, then each thread is joined and its lane
        forgets it."""
        for cam in camera_ids:
            self._workers[cam].request_stop()
        for cam in camera_ids:
            worker, lane = self._workers.pop(cam), self._lanes.pop(cam)
            if not await asyncio.to_thread(worker.stop, CAMERA_JOIN_S):
                log_event(log, logging.WARNING, "camera thread still blocked; abandoning it", camera=cam)
            lane.batcher.remove_camera(cam)
            lane.trackers.forget(cam)
            lane.cameras[:] = [c for c in lane.cameras if c.id != cam]
            self._on_stopped(cam)
