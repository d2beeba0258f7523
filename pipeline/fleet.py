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
from pipeline.lanes import Lane, Route
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
    rerouted: list[str] = field(default_factory=list)  # running on, their frames sent to other models


class Fleet:
    """Starts, stops and replaces cameras, one change at a time. `lanes_for` picks a camera's
    lanes, one per model (None: it cannot run here); `make_worker` builds its (unstarted) worker,
    which hands its frames to a Route; `on_stopped` is told of each camera stopped, after its
    thread ended and its lanes forgot it."""

    def __init__(self, lanes_for: Callable[[CameraConfig], list[Lane] | None],
                 make_worker: Callable[[CameraConfig, Route], CameraWorker],
                 on_stopped: Callable[[str], None] = lambda camera_id: None) -> None:
        self._lanes_for, self._make_worker, self._on_stopped = lanes_for, make_worker, on_stopped
        self._workers: dict[str, CameraWorker] = {}
        self._routes: dict[str, Route] = {}
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
    async def converge(self, wanted: Wanted, restart: Iterable[str] = (), reroute: Iterable[str] = ()) -> Change:
        """Run exactly `wanted` (cameras, or a function of the running camera ids that gives
        them): stop the others, and `restart` ids among those that stay; send the frames of
        `reroute` ids that stay to their (new) models' lanes without stopping their decode (a
        camera whose lanes cannot be found keeps its old ones, logged); then start what does not
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
                    if camera.id in reroute and self._reroute(camera):
                        change.rerouted.append(camera.id)
                    continue
                lanes = self._lanes_for(camera)
                if lanes is None:
                    change.refused.append(camera.id)
                else:
                    self._start(camera, lanes)
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
    def _start(self, camera: CameraConfig, lanes: list[Lane]) -> None:
        route = self._routes[camera.id] = Route(lanes)
        worker = self._make_worker(camera, route)
        self._workers[camera.id] = worker
        for lane in lanes:
            if not any(c.id == camera.id for c in lane.cameras):
                lane.cameras.append(camera)
        worker.start()

    def _reroute(self, camera: CameraConfig) -> bool:
        """Send a running camera's frames to the lanes of its models now; the lanes it leaves
        forget it (their waiting frame, tracks and place). False when its new lanes are not all
        here (it keeps its old ones)."""
        route = self._routes[camera.id]
        lanes = self._lanes_for(camera)
        if lanes is None or {id(lane.gpu) for lane in lanes} != {id(lane.gpu) for lane in route.lanes}:
            # a model not loaded here, or on another GPU than its decoder's: only a restart does that
            log_event(log, logging.ERROR, "camera keeps its models until a restart", camera=camera.id,
                      models=[lane.model for lane in route.lanes])
            return False
        for lane in lanes:
            lane.cameras[:] = [camera if c.id == camera.id else c for c in lane.cameras]
            if camera not in lane.cameras:
                lane.cameras.append(camera)
        left = [lane for lane in route.lanes if lane not in lanes]
        route.swap(lanes)
        for lane in left:
            _forget(lane, camera.id)
        return True

    async def _stop(self, camera_ids: list[str]) -> None:
        """Stop these cameras: all are asked at once, then each thread is joined and its lanes
        forget it."""
        for cam in camera_ids:
            self._workers[cam].request_stop()
        for cam in camera_ids:
            worker, route = self._workers.pop(cam), self._routes.pop(cam)
            if not await asyncio.to_thread(worker.stop, CAMERA_JOIN_S):
                log_event(log, logging.WARNING, "camera thread still blocked; abandoning it", camera=cam)
            lanes = route.lanes
            route.swap(())  # an abandoned thread's late frames go nowhere
            for lane in lanes:
                _forget(lane, cam)
            self._on_stopped(cam)


def _forget(lane: Lane, camera_id: str) -> None:
    """A lane no longer serves a camera: its waiting frame, its tracks and its place go."""
    lane.batcher.remove_camera(camera_id)
    lane.trackers.forget(camera_id)
    if lane.cascade is not None:
        lane.cascade.forget(camera_id)
    lane.cameras[:] = [c for c in lane.cameras if c.id != camera_id]
