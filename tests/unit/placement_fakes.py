"""Stand-ins for the placement race tests: Kafka's group coordinator played in-process (FakeGroup),
so a test decides exactly when a rebalance happens and whether a rejoin request is heard, and
camera workers whose stop waits until the test lets it (GatedWorker), so an assignment can arrive
exactly while a camera is being stopped. Everything else is the daemon's own code."""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from pipeline.core import CameraState

TOPIC_PARTITIONS = {0}


class _Cluster:
    def partitions_for_topic(self, topic):
        return TOPIC_PARTITIONS


class FakeGroup:
    """A group coordinator: members join (consumer.start) and leave (consumer.stop); `rebalance()`
    revokes every member, asks each for its report (the assignor's metadata), lets the first
    member plan (the leader's assign) and hands every member its assignment. With `auto`,
    joins, leaves and heard rejoin requests rebalance at once; `hear_rejoins=False` loses them
    (as aiokafka can, when a rebalance is already under way)."""

    def __init__(self, auto: bool = True, hear_rejoins: bool = True) -> None:
        self.auto, self.hear_rejoins = auto, hear_rejoins
        self.consumers: list[FakeConsumer] = []
        self.rejoin_requests = 0
        self.rebalances = 0
        self.stalled = False  # a rebalance begins (members revoked) and never ends
        self.unreadable: set[str] = set()  # member ids whose report the leader gets as garbage

    def consumer(self, member) -> FakeConsumer:
        return FakeConsumer(self, member)

    def members(self) -> list:
        return [c for c in self.consumers if c.started]

    async def rebalance(self) -> None:
        """One whole rebalance (or, while `stalled`, only its beginning)."""
        members = self.members()
        for c in members:
            c.member.joined(False)
        if self.stalled or not members:
            return
        self.rebalances += 1
        assignors = {c.member_id: c.assignor for c in members}
        metadata = {c.member_id: (ConsumerProtocolMemberMetadata(0, ["t"], b"\xffgarbage")
                                  if c.member_id in self.unreadable else assignors[c.member_id].metadata(["t"]))
                    for c in members}
        assignments = assignors[members[0].member_id].assign(_Cluster(), metadata)
        for c in members:
            c.assignor.on_assignment(assignments[c.member_id])
            c.member.joined(True)
        await asyncio.sleep(0)

    def heard(self) -> None:
        self.rejoin_requests += 1
        if self.hear_rejoins and self.auto:
            asyncio.get_running_loop().create_task(self.rebalance())


class _Coordinator:
    def __init__(self, group: FakeGroup) -> None:
        self._group = group

    def request_rejoin(self) -> None:
        self._group.heard()


class FakeConsumer:
    """What GroupMember uses of an aiokafka consumer: start (join; returns once assigned), getmany,
    stop (leave), and the coordinator's request_rejoin."""

    _ids = 0

    def __init__(self, group: FakeGroup, member) -> None:
        FakeConsumer._ids += 1
        self.group, self.member, self.member_id = group, member, f"member-{FakeConsumer._ids}"
        self.assignor = member._assignor()
        self.started = self.stopped = False
        self._coordinator = _Coordinator(group)
        group.consumers.append(self)

    async def start(self) -> None:
        self.started = True
        if self.group.auto:
            await self.group.rebalance()
        while not self.member.view.joined:  # as aiokafka's start: until the first assignment
            await asyncio.sleep(0.01)

    async def getmany(self, timeout_ms: int = 0):
        await asyncio.sleep(min(timeout_ms, 50) / 1000)
        return {}

    async def stop(self) -> None:
        self.stopped = True
        if self.started:
            self.started = False
            if self.group.auto and not self.group.stalled:
                await self.group.rebalance()


@dataclass
class GatedWorker:
    """A camera worker (CameraWorker's surface) that streams at once and whose thread ends only
    when `gate` is open: stop() waits for it, as a camera thread blocked in a read would."""

    camera: object
    settings: object = None
    decoder_factory: object = None
    deliver: object = None
    metrics: object = None
    on_state: object = None
    gate: threading.Event = field(default_factory=threading.Event)
    state: CameraState = CameraState.STOPPED
    transport: str | None = None
    started: bool = False
    stopping: bool = False  # stop() was called: its thread is being joined
    ended: bool = False

    def start(self) -> None:
        self.started, self.state = True, CameraState.STREAMING

    def request_stop(self) -> None:
        pass

    def stop(self, timeout: float) -> bool:
        self.stopping = True
        if not self.gate.wait(timeout):
            return False
        self.ended, self.state = True, CameraState.STOPPED
        return True

    def health(self) -> dict:
        return {"state": self.state.value, "last_frame_age_s": 0.0}


class Workers:
    """Makes GatedWorkers (Runtime's worker_factory) and keeps every one made; `gate` opens or
    closes every stop, now and for workers made later."""

    def __init__(self) -> None:
        self.made: list[GatedWorker] = []
        self.open = threading.Event()
        self.open.set()

    def __call__(self, camera, settings, decoder_factory, deliver, metrics, on_state) -> GatedWorker:
        worker = GatedWorker(camera, settings, decoder_factory, deliver, metrics, on_state, gate=self.open)
        self.made.append(worker)
        return worker

    def live(self) -> dict[str, list[GatedWorker]]:
        """camera -> its workers that started and whose thread has not ended."""
        out: dict[str, list[GatedWorker]] = {}
        for w in self.made:
            if w.started and not w.ended:
                out.setdefault(w.camera.id, []).append(w)
        return out


async def eventually(condition, timeout: float = 5.0, what: str = "the condition"):
    """Wait (on the loop) until `condition()` is true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class SimpleNode:
    """A node for member-level tests: its camera list (costs), the cameras it runs, and an apply
    that runs exactly what it is given, after `hold` is set (an asyncio.Event: a slow start/stop)."""

    def __init__(self, name: str, costs: dict[str, float], capacity: float = 100.0) -> None:
        self.name, self.costs, self.capacity = name, dict(costs), capacity
        self.running: set[str] = set()
        self.hold: asyncio.Event | None = None
        self.no_lane: set[str] = set()  # cameras it knows but has no lane for
        self.applied: list[int] = []  # generations applied, in order
        self.events: list[str] = []

    async def apply(self, assignment, cameras):
        from pipeline.placement.group import Applied

        if self.hold is not None:
            await self.hold.wait()
        refused = set(cameras) & self.no_lane
        self.running = set(cameras) - refused
        self.applied.append(assignment.generation)
        return Applied(refused)

    def member(self, group: FakeGroup, **options):
        from pipeline.placement.group import GroupMember

        return GroupMember(bootstrap="unused:9", group="g", node=self.name, capacity=self.capacity,
                           costs=lambda: self.costs, apply=self.apply, running=lambda: set(self.running),
                           session_timeout_s=options.pop("session_timeout_s", 6),
                           heartbeat_s=options.pop("heartbeat_s", 1),
                           rebalance_timeout_s=options.pop("rebalance_timeout_s", 30),
                           count=self.events.append, consumer_factory=group.consumer, own_thread=False, **options)
