"""A daemon's membership in its placement group: Kafka's group coordinator, through aiokafka, with
a camera assignor of ours (the plan itself: pipeline/placement/plan.py).

The member is an aiokafka consumer of the group's control topic (`<group>.placement`, one
partition) whose JoinGroup carries our report (node, capacity, cameras running) and whose
SyncGroup carries the leader's plan. It keeps polling that topic: a member that stops polling is
dropped from the group after max_poll_interval and never rejoins (aio-libs/aiokafka#1187). The
protocol is eager (every rebalance revokes everything), so nothing is done at a revocation and
each assignment is applied as a difference: cameras that stay keep running, untouched.

One assignor class is made per member, so its class-level state is this member's (aiokafka calls
the assignor's methods on the class). Exactly one assignor is configured (with several, aiokafka
sends a JoinGroup per assignor). The leader publishes each plan's map on the control topic, where
`rtsp-pipeline placement` reads the latest.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pipeline.logs import log_event
from pipeline.placement.plan import MemberReport, decode_assignment, plan

log = logging.getLogger(__name__)
ASSIGNOR_NAME = "rtsp-pipeline-cameras"


def control_topic(group: str) -> str:
    """The group's control topic: its members poll it; the leader writes each plan's map to it."""
    return f"{group}.placement"


@dataclass
class Assignment:
    """What the leader gave this member in one generation."""

    generation: int
    cameras: list[str]
    unplaced: list[str]
    moving: list[str]
    nodes: dict[str, dict]
    overlaps: list[str]
    led: bool = False  # this member made the plan (it publishes the map and the unplaced cameras)


@dataclass
class GroupView:
    """The member's last view of the group, for /readyz, /v1/cameras and metrics."""

    joined: bool = False
    generation: int = 0
    nodes: dict[str, dict] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)
    moving: list[str] = field(default_factory=list)
    rebalances: int = 0


class GroupMember:
    """Joins the placement group and hands each assignment to `apply` (an async callable that
    starts and stops cameras and returns the cameras it runs afterwards)."""

    def __init__(self, *, bootstrap: str, group: str, node: str, capacity: float,
                 costs: Callable[[], dict[str, float]], apply: Callable[[Assignment], Awaitable[set[str]]],
                 session_timeout_s: float, heartbeat_s: float, rebalance_timeout_s: float,
                 client_options: dict | None = None) -> None:
        self.group, self.node, self.capacity = group, node, capacity
        self.view = GroupView()
        self._bootstrap, self._costs, self._apply = bootstrap, costs, apply
        self._timeouts = (session_timeout_s, heartbeat_s, rebalance_timeout_s)
        self._options = client_options or {}
        self._running: dict[str, int] = {}  # camera -> generation it was assigned in
        self._stopping: set[str] = set()  # taken from this node, being stopped
        self._in_transit: tuple[str, ...] = ()  # the last plan's moves
        self._generation = 0
        self._pending: Assignment | None = None
        self._led_generation = -1
        self._consumer = None
        self._poller: asyncio.Task | None = None
        self._applying: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ what the member says
    def report(self, member_id: str = "") -> MemberReport:
        """This member's JoinGroup report."""
        return MemberReport(member_id, self.node, self.capacity, dict(self._running), self._generation,
                            tuple(sorted(self._stopping)), self._in_transit)

    def _assignor(self):
        from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
        from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

        member = self

        class CameraAssignor(AbstractPartitionAssignor):
            name = ASSIGNOR_NAME
            version = 0

            @classmethod
            def metadata(cls, topics):
                return ConsumerProtocolMemberMetadata(cls.version, sorted(topics), member.report().encode())

            @classmethod
            def assign(cls, cluster, members):
                reports = [MemberReport.decode(mid, meta.user_data) for mid, meta in members.items()]
                generation = 1 + max([r.generation for r in reports] + [member._generation])
                result = plan(member._costs(), reports)
                topic = control_topic(member.group)
                partitions = sorted(cluster.partitions_for_topic(topic) or {0})
                member._led_generation = generation
                _warn_duplicate_nodes(reports)
                return {mid: ConsumerProtocolMemberAssignment(
                            cls.version, [(topic, partitions)] if i == 0 else [], result.for_member(mid, generation))
                        for i, mid in enumerate(sorted(members))}

            @classmethod
            def on_assignment(cls, assignment):
                raw = decode_assignment(assignment.user_data)
                if raw is not None:
                    member._pending = Assignment(int(raw["generation"]), list(raw["cameras"]), list(raw["unplaced"]),
                                                 list(raw["moving"]), dict(raw["nodes"]), list(raw.get("overlaps", [])),
                                                 led=int(raw["generation"]) == member._led_generation)
        return CameraAssignor

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Join the group (in the background: an unreachable broker is retried, never fatal)."""
        from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

        member = self

        class Listener(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked) -> None:
                member.view.joined = False  # eager: everything is revoked; the cameras keep running

            async def on_partitions_assigned(self, assigned) -> None:
                member.view.joined = True  # heartbeats are stopped until this returns: apply in a task
                if member._pending is not None:
                    assignment, member._pending = member._pending, None
                    member._applying = asyncio.get_running_loop().create_task(member._take(assignment))

        session, heartbeat, rebalance = self._timeouts
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, group_id=self.group, client_id=f"rtsp-pipeline-{self.node}",
            partition_assignment_strategy=(self._assignor(),), enable_auto_commit=False,
            session_timeout_ms=int(session * 1000), heartbeat_interval_ms=int(heartbeat * 1000),
            rebalance_timeout_ms=int(rebalance * 1000), metadata_max_age_ms=10_000, auto_offset_reset="latest",
            **self._options)
        self._consumer.subscribe([control_topic(self.group)], listener=Listener())
        self._poller = asyncio.get_running_loop().create_task(self._poll(), name="placement-member")

    async def _poll(self) -> None:
        """Keep polling the control topic (membership needs it); (re)start the consumer until it runs."""
        delay = 0.5
        while True:
            try:
                await self._consumer.start()
                break
            except Exception as exc:  # noqa: BLE001 - an unreachable broker: retried, with backoff
                log_event(log, logging.WARNING, "placement group unreachable; retrying", group=self.group,
                          error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        log_event(log, logging.INFO, "placement group joining", group=self.group, node=self.node,
                  capacity=self.capacity)
        while True:
            try:
                await self._consumer.getmany(timeout_ms=1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the consumer recovers by itself; keep polling
                log_event(log, logging.WARNING, "placement group poll failed", error=repr(exc))
                await asyncio.sleep(1)

    async def _take(self, assignment: Assignment) -> None:
        async with self._lock:
            self.view.rebalances += 1
            before = set(self._running)
            # what is taken away is no longer ours to report as running, but still running until
            # stopped: a rebalance that comes meanwhile must give it to no one
            self._stopping = before - set(assignment.cameras)
            self._running = {c: g for c, g in self._running.items() if c not in self._stopping}
            try:
                running = await self._apply(assignment)
            finally:
                self._stopping = set()
            self._running = {c: assignment.generation for c in running}
            self._generation, self._in_transit = assignment.generation, tuple(assignment.moving)
            self.view.generation, self.view.nodes = assignment.generation, assignment.nodes
            self.view.unplaced, self.view.moving = assignment.unplaced, assignment.moving
        # round two of a move: only the node that gave the cameras up asks for it, once they are
        # stopped (every member asking again at every generation starves slower joiners: seen)
        if before - running and self._consumer is not None:
            self.request_rejoin()

    def request_rejoin(self) -> None:
        """Ask for a new rebalance (a move's second round; a changed camera list)."""
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is not None:
            coordinator.request_rejoin()

    async def stop(self) -> None:
        """Leave the group at once (its cameras move to the others without waiting for a timeout)."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        if self._applying is not None:
            await asyncio.gather(self._applying, return_exceptions=True)
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._consumer.stop(), 10)


def _warn_duplicate_nodes(reports: list[MemberReport]) -> None:
    seen: dict[str, int] = {}
    for report in reports:
        seen[report.node] = seen.get(report.node, 0) + 1
    twice = sorted(node for node, n in seen.items() if n > 1)
    if twice:
        log_event(log, logging.WARNING, "two members of the placement group share a node id; give each daemon "
                  "its own placement.node_id", nodes=twice)


def placement_map(assignment: Assignment, group: str) -> bytes:
    """The map the leader publishes on the control topic (read by `rtsp-pipeline placement`)."""
    return json.dumps({"schema": "placement/v1", "group": group, "generation": assignment.generation,
                       "at": time.time(), "nodes": assignment.nodes, "unplaced": assignment.unplaced,
                       "moving": assignment.moving}).encode()


async def read_placement_map(kafka, group: str, timeout: float) -> tuple[dict | None, str]:
    """The latest map on the group's control topic, or None and why none came within `timeout`
    (asked again until then: a map the leader has just made may still be on its way)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    from pipeline.kafka_security import security_options

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False,
                                **security_options(kafka))
    name = control_topic(group)
    why = "no node has joined, or none has led a rebalance"
    try:
        await asyncio.wait_for(consumer.start(), timeout)
        while True:
            await consumer.topics()  # fresh metadata: the topic may have just been made
            parts = [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or ())]
            ends = await consumer.end_offsets(parts) if parts else {}
            held = [tp for tp in parts if ends[tp] > 0]  # the map goes to the partition its key hashes to
            if held:
                consumer.assign(held)
                for tp in held:
                    consumer.seek(tp, ends[tp] - 1)
                last: dict = {}
                until = loop.time() + min(max(deadline - loop.time(), 0.5), 3)
                while len(last) < len(held) and loop.time() < until:  # the last map of each partition
                    batch = await consumer.getmany(*held, timeout_ms=int(max(until - loop.time(), 0.1) * 1000))
                    last.update({tp: records[-1] for tp, records in batch.items() if records})
                maps = [json.loads(record.value) for record in last.values()]
                if maps:
                    return max(maps, key=lambda m: m.get("generation", 0)), ""
                why = f"{name} holds maps, but the last could not be read"
            if loop.time() >= deadline:
                return None, why
            await asyncio.sleep(0.5)
    except asyncio.TimeoutError:
        return None, f"Kafka at {kafka.bootstrap_servers} did not answer"
    except (OSError, KafkaError) as exc:
        return None, f"Kafka at {kafka.bootstrap_servers}: {exc or type(exc).__name__}"
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
