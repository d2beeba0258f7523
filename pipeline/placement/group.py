"""A daemon's membership in its placement group: Kafka's group coordinator, through aiokafka, with
a camera assignor of ours (the plan itself: pipeline/placement/plan.py).

The member is an aiokafka consumer of the group's control topic (`<group>.placement`) whose
JoinGroup carries our report (node, capacity, cameras claimed, stopping and refused, the digest
of our camera list) and whose SyncGroup carries the leader's plan. It keeps polling that topic: a
member that stops polling is dropped from the group after max_poll_interval and never rejoins
(aio-libs/aiokafka#1187). The protocol is eager (every rebalance revokes everything), so nothing
is done at a revocation and each assignment is applied as a difference: cameras that stay keep
running, untouched.

What the member promises the group, whatever interleaves:
- A camera is claimed the moment its assignment arrives: the next report lists it, even while it
  is still starting. A camera the node runs (or is starting) that the latest assignment does not
  list is reported as stopping until it has stopped, so no plan gives it to anyone meanwhile.
- Only the newest assignment is applied; one that arrives while another is applied waits, and
  an older one still waiting is skipped. A failure while applying is logged, counted, survived.
- The second round of a move (the node that gave cameras up asks for a new plan once they are
  stopped) is asked for again every ROUND_TWO_ASK_S until a plan no longer lists them as moving:
  a rejoin request can be lost in a rebalance already under way.
- A rebalance that has not finished within rebalance_timeout_s + session_timeout_s + a margin is
  a stall: it is logged, counted and shown in /readyz, and the member leaves and joins again as
  a new member (a fresh consumer). The cameras keep running meanwhile.
- After `stop` begins, assignments are ignored.
- Its heartbeat never waits on the daemon: the member runs on an event loop of its own, in a thread
  (as Kafka's Java clients heartbeat from a background thread since KIP-62). A spool fsync stuck on
  a slow disk, or anything else that holds the daemon's loop, cannot get the node evicted; only
  applying an assignment (starting and stopping cameras) crosses to the daemon's loop, and
  `own_thread=False` runs the member on the caller's loop instead (the deterministic race tests).

One assignor class is made per member, so its class-level state is this member's (aiokafka calls
the assignor's methods on the class). Exactly one assignor is configured (with several, aiokafka
sends a JoinGroup per assignor). An exception in the assignor's callbacks is logged and counted,
never raised into aiokafka (which would end the membership while the cameras run on).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pipeline.logs import log_event
from pipeline.placement.plan import (
    WIRE_VERSION, MemberReport, Plan, camera_list_digest, decode_assignment, plan, plan_keeping_claims,
)

log = logging.getLogger(__name__)
ASSIGNOR_NAME = "rtsp-pipeline-cameras"
ROUND_TWO_ASK_S = 5.0  # how often the second round of a move is asked for again until it happened
STALL_MARGIN_S = 10.0  # beyond rebalance_timeout_s + session_timeout_s: a rebalance this long is stuck
MAP_SCHEMA = "placement/v1"


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
    lists_differ: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)

    @classmethod
    def decode(cls, data: bytes, led_generation: int) -> Assignment | None:
        """The leader's assignment, or None when unreadable (a version this member does not know)."""
        raw = decode_assignment(data)
        if raw is None:
            return None
        generation = int(raw["generation"])
        return cls(generation, list(raw["cameras"]), list(raw["unplaced"]), list(raw["moving"]), dict(raw["nodes"]),
                   list(raw.get("overlaps", [])), generation == led_generation, list(raw.get("lists_differ", [])),
                   list(raw.get("frozen", [])))


@dataclass
class Applied:
    """What applying an assignment did: the cameras this node could not run (no lane for them)."""

    refused: set[str] = field(default_factory=set)


@dataclass
class GroupView:
    """The member's last view of the group, for /readyz, /v1/cameras and metrics."""

    joined: bool = False
    generation: int = 0
    nodes: dict[str, dict] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)
    moving: list[str] = field(default_factory=list)
    lists_differ: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # given to this node, which cannot run them
    moving_since: dict[str, float] = field(default_factory=dict)  # camera -> when it was first seen moving (monotonic)
    applied_generation: int = 0  # of the last assignment applied here (0: none yet)
    unjoined_since: float | None = None  # monotonic; None while joined
    rebalances: int = 0
    stalls: int = 0

    def unjoined_for(self) -> float:
        """Seconds since this member was last in the group with an assignment (0 while it is)."""
        return 0.0 if self.unjoined_since is None else time.monotonic() - self.unjoined_since


class GroupMember:
    """Joins the placement group and hands each assignment to `apply` (an async callable given the
    assignment and the cameras to run, which runs exactly those and says which it could not);
    `running` says which cameras the node runs now; `count(where)` counts survived failures and
    events (stall, round_two_ask, plan, assignment, apply, rejoin)."""

    def __init__(self, *, bootstrap: str, group: str, node: str, capacity: float,
                 costs: Callable[[], dict[str, float]], apply: Callable[[Assignment, frozenset[str]], Awaitable[Applied]],
                 running: Callable[[], set[str]], session_timeout_s: float, heartbeat_s: float,
                 rebalance_timeout_s: float, client_options: dict | None = None,
                 count: Callable[[str], None] = lambda where: None,
                 consumer_factory: Callable[[GroupMember], object] | None = None, own_thread: bool = True) -> None:
        self.group, self.node, self.capacity = group, node, capacity
        self.view = GroupView()
        self._bootstrap, self._costs, self._apply, self._running, self._count = bootstrap, costs, apply, running, count
        self._timeouts = (session_timeout_s, heartbeat_s, rebalance_timeout_s)
        self.stall_after_s = rebalance_timeout_s + session_timeout_s + STALL_MARGIN_S
        self._options = client_options or {}
        self._consumer_factory = consumer_factory or _aiokafka_consumer
        self._claims: dict[str, int] = {}  # camera -> generation of the newest assignment that gave it here
        self._refused: set[str] = set()  # cameras the newest assignment gave here that this node cannot run
        self._applying: frozenset[str] = frozenset()  # the cameras the assignment being applied runs
        self._generation = 0
        self._in_transit: tuple[str, ...] = ()  # the newest plan's moves
        self._latest: Assignment | None = None  # arrived, not yet applied
        self._wake: asyncio.Event | None = None  # made on the member's loop
        self._owed: set[str] = set()  # cameras this node gave up that the group still lists as moving
        self._asked_at = float("-inf")  # monotonic time of the last round-two request
        self._led_generation = -1
        self._closing = False
        self._consumer = None
        self._tasks: list[asyncio.Task] = []
        self._own_thread = own_thread
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the member's loop
        self._home: asyncio.AbstractEventLoop | None = None  # the daemon's loop, where `apply` runs
        self.last_error: str | None = None  # why the last attempt to join failed (None once joined)

    # ------------------------------------------------------------------ what the member says
    def report(self, member_id: str = "") -> MemberReport:
        """This member's JoinGroup report: what it claims, and what it runs or starts beyond that (stopping)."""
        claims = dict(self._claims)
        stopping = (set(self._running()) | self._applying) - set(claims)
        return MemberReport(member_id, self.node, self.capacity, claims, self._generation, tuple(sorted(stopping)),
                            self._in_transit, WIRE_VERSION, camera_list_digest(self._costs()),
                            tuple(sorted(self._refused)))

    def _assignor(self):
        from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
        from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

        member = self

        class CameraAssignor(AbstractPartitionAssignor):
            name = ASSIGNOR_NAME
            version = 0

            @classmethod
            def metadata(cls, topics):
                try:
                    report = member.report()
                except Exception as exc:  # noqa: BLE001 - never into aiokafka; the claims still go out
                    member._failed("report", exc)
                    report = MemberReport("", member.node, member.capacity, dict(member._claims), member._generation)
                return ConsumerProtocolMemberMetadata(cls.version, sorted(topics), report.encode())

            @classmethod
            def assign(cls, cluster, members):
                reports = [MemberReport.decode(mid, meta.user_data) for mid, meta in members.items()]
                generation = 1 + max([r.generation for r in reports] + [member._generation])
                result = member._plan(reports)
                topic = control_topic(member.group)
                partitions = sorted(cluster.partitions_for_topic(topic) or {0})
                member._led_generation = generation
                return {mid: ConsumerProtocolMemberAssignment(
                            cls.version, [(topic, partitions)] if i == 0 else [], result.for_member(mid, generation))
                        for i, mid in enumerate(sorted(members))}

            @classmethod
            def on_assignment(cls, assignment):
                try:
                    member.arrive(assignment.user_data)
                except Exception as exc:  # noqa: BLE001 - never into aiokafka: it would end the membership
                    member._failed("assignment", exc)
        return CameraAssignor

    def _plan(self, reports: list[MemberReport]) -> Plan:
        """The leader's plan; should planning fail, every member keeps what it runs."""
        try:
            costs = self._costs()
            result = plan(costs, reports, camera_list_digest(costs))
        except Exception as exc:  # noqa: BLE001 - a bug in the plan must not end the group
            self._failed("plan", exc)
            result = plan_keeping_claims({cam: 0.0 for r in reports for cam in r.running}, reports)
        _warn_about(result, self.group)
        return result

    # ------------------------------------------------------------------ assignments
    def arrive(self, data: bytes) -> None:
        """An assignment arrived (SyncGroup): claim its cameras now, then apply it in the background."""
        if self._closing:
            return
        assignment = Assignment.decode(data, self._led_generation)
        if assignment is None:
            log_event(log, logging.ERROR, "placement assignment unreadable (a leader of a wire format this node "
                      "does not know); cameras kept as they are", group=self.group, node=self.node)
            self._count("assignment")
            return
        known = set(self._costs())
        before = set(self._claims) | set(self._running()) | self._applying
        self._claims = {cam: assignment.generation for cam in assignment.cameras if cam in known}
        self._refused = {cam for cam in assignment.cameras if cam not in known}
        self._generation, self._in_transit = assignment.generation, tuple(assignment.moving)
        # round two is owed for what this node gave up and the group lists as moving
        self._owed = ((self._owed | before) & set(assignment.moving)) - set(self._claims)
        self._show(assignment)
        self._latest = assignment
        if self._wake is not None:
            self._wake.set()

    def _show(self, assignment: Assignment) -> None:
        view, now = self.view, time.monotonic()
        view.generation, view.nodes = assignment.generation, assignment.nodes
        view.unplaced, view.moving = assignment.unplaced, assignment.moving
        view.lists_differ, view.frozen, view.refused = assignment.lists_differ, assignment.frozen, sorted(self._refused)
        view.moving_since = {cam: view.moving_since.get(cam, now) for cam in assignment.moving}

    async def _apply_newest(self) -> None:
        """Apply assignments one at a time, always the newest that arrived."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            assignment, self._latest = self._latest, None
            if assignment is None or self._closing:
                continue
            self._applying = frozenset(self._claims)
            try:
                applied = await self._on_home(self._apply(assignment, self._applying))
            except Exception as exc:  # noqa: BLE001 - logged and counted; the next assignment applies again
                self._failed("apply", exc)
                continue
            finally:
                self._applying = frozenset()
            self.view.rebalances += 1
            self.view.applied_generation = assignment.generation
            if applied.refused and self._latest is None:  # tell the leader: it plans them elsewhere
                self._claims = {cam: g for cam, g in self._claims.items() if cam not in applied.refused}
                self._refused |= applied.refused
                self.view.refused = sorted(self._refused)
                self.request_rejoin()
            self._ask_round_two(force=True)

    def _ask_round_two(self, force: bool = False) -> None:
        """Ask for the next plan while cameras this node gave up are stopped and still listed as
        moving: at once after stopping them, then every ROUND_TWO_ASK_S."""
        if not self._owed or self._owed & (set(self._running()) | self._applying) or self._latest is not None:
            return
        now = time.monotonic()
        if force or now - self._asked_at >= ROUND_TWO_ASK_S:
            self._asked_at = now
            self._count("round_two_ask")
            log_event(log, logging.INFO, "asking the group for a move's second round", group=self.group,
                      node=self.node, cameras=sorted(self._owed), generation=self._generation)
            self.request_rejoin()

    async def _on_home(self, work: Awaitable):
        """Run `work` on the daemon's loop and wait for it here (shielded: stopping the member does
        not cancel a change of the running cameras half-way)."""
        if self._home is None or self._home is asyncio.get_running_loop():
            return await work
        return await asyncio.shield(asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._home)))

    def request_rejoin(self) -> None:
        """Ask for a new rebalance (a move's second round; a changed camera list); from any thread."""
        loop = self._loop
        if loop is not None and loop.is_running() and threading.current_thread() is not self._thread:
            loop.call_soon_threadsafe(self._request_rejoin_here)
        else:
            self._request_rejoin_here()

    def _request_rejoin_here(self) -> None:
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is None:
            log_event(log, logging.WARNING, "cannot ask the placement group for a new plan yet (not joined); "
                      "asked again later", group=self.group, node=self.node)
            self._count("rejoin")
            return
        coordinator.request_rejoin()

    def _failed(self, where: str, exc: BaseException) -> None:
        log_event(log, logging.ERROR, "placement failure survived", where=where, error=repr(exc), group=self.group,
                  node=self.node)
        self._count(where)

    # ------------------------------------------------------------------ life cycle
    def joined(self, value: bool) -> None:
        """The group's listener: revoked (a rebalance began) or assigned (it ended)."""
        self.view.joined = value
        self.view.unjoined_since = None if value else (self.view.unjoined_since or time.monotonic())

    async def start(self) -> None:
        """Join the group (in the background: an unreachable broker is retried, never fatal), on the
        member's own loop and thread."""
        self.view.unjoined_since = time.monotonic()
        self._home = asyncio.get_running_loop()
        if not self._own_thread:
            self._begin()
            return
        started = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(started,), name="placement-member",
                                        daemon=True)
        self._thread.start()
        await asyncio.to_thread(started.wait, 10)

    def _thread_main(self, started: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self._begin()
            started.set()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            loop.run_until_complete(main())
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    def _begin(self) -> None:
        """Start the member's tasks on the running loop (its own, or the caller's)."""
        self._loop = loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self._latest is not None:
            self._wake.set()
        self._tasks = [loop.create_task(self._membership(), name="placement-member"),
                       loop.create_task(self._apply_newest(), name="placement-apply")]

    async def _membership(self) -> None:
        """Be a member until stopped: a consumer joins and polls; a stalled one is replaced by a fresh
        member; a refused or unreachable one is retried with backoff."""
        delay = 0.5
        # `_closing` is checked as well as cancellation: Python 3.11's wait_for returns the result of
        # a start that completes as the task is cancelled and swallows the cancel; the member then
        # polled for ever and stop() never returned (seen: test_placement_races under load, 2 of 5)
        while not self._closing:
            self._consumer = consumer = self._consumer_factory(self)
            try:
                await asyncio.wait_for(consumer.start(), self.stall_after_s)  # returns once the first assignment came
                log_event(log, logging.INFO, "placement group joined", group=self.group, node=self.node,
                          capacity=self.capacity)
                delay, self.last_error = 0.5, None
                await self._poll(consumer)
                if not self._closing:
                    self._stalled()
            except asyncio.TimeoutError:
                if not self._closing:
                    self._stalled()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - unreachable, refused (session timeout, ACL): retried
                self.last_error = repr(exc)
                log_event(log, logging.WARNING, "placement group unreachable or refused this member; retrying",
                          group=self.group, error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            finally:
                self._consumer = None
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(consumer.stop(), 10)
                self.joined(False)

    async def _poll(self, consumer) -> None:
        """Keep polling the control topic (membership needs it) until the group stalls; ask for a
        move's second round again while it is owed; returns at once when the member is stopping."""
        while not self._closing:
            try:
                await consumer.getmany(timeout_ms=1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the consumer recovers by itself; keep polling
                log_event(log, logging.WARNING, "placement group poll failed", error=repr(exc))
                await asyncio.sleep(1)
            if self.view.unjoined_for() > self.stall_after_s:
                return
            self._ask_round_two()

    def _stalled(self) -> None:
        self.view.stalls += 1
        self._count("stall")
        log_event(log, logging.ERROR, "placement group rebalance did not finish; leaving and joining again as a "
                  "new member (the cameras keep running)", group=self.group, node=self.node,
                  waited_s=round(self.view.unjoined_for(), 1), limit_s=self.stall_after_s)

    async def stop(self) -> None:
        """Leave the group at once (its cameras move to the others without waiting for a timeout);
        assignments that arrive from now on are ignored."""
        self._closing = True
        loop = self._loop
        if loop is None:
            return
        if self._thread is None:
            self._cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            return
        with contextlib.suppress(RuntimeError):  # the member's loop has already ended
            loop.call_soon_threadsafe(self._cancel)
        await asyncio.to_thread(self._thread.join, 20)

    def _cancel(self) -> None:
        for task in self._tasks:
            task.cancel()


def _aiokafka_consumer(member: GroupMember):
    """The member's aiokafka consumer of the control topic, with our assignor and listener."""
    from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

    class Listener(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked) -> None:
            member.joined(False)  # eager: everything is revoked; the cameras keep running

        async def on_partitions_assigned(self, assigned) -> None:
            member.joined(True)  # heartbeats are stopped until this returns: the assignment applies in a task

    session, heartbeat, rebalance = member._timeouts
    consumer = AIOKafkaConsumer(
        bootstrap_servers=member._bootstrap, group_id=member.group, client_id=f"rtsp-pipeline-{member.node}",
        partition_assignment_strategy=(member._assignor(),), enable_auto_commit=False,
        session_timeout_ms=int(session * 1000), heartbeat_interval_ms=int(heartbeat * 1000),
        rebalance_timeout_ms=int(rebalance * 1000), metadata_max_age_ms=10_000, auto_offset_reset="latest",
        **member._options)
    consumer.subscribe([control_topic(member.group)], listener=Listener())
    return consumer


def _warn_about(result: Plan, group: str) -> None:
    """The leader's warnings about its group: nodes sharing an id, lists that differ, a frozen plan."""
    shared = sorted(name for name in result.nodes if name.endswith(")") and " (" in name)
    if shared:
        log_event(log, logging.WARNING, "two members of the placement group share a node id; give each daemon "
                  "its own placement.node_id", group=group, members=shared)
    if result.lists_differ:
        log_event(log, logging.WARNING, "nodes of the placement group have another camera list than the leader; "
                  "reload every node with the same list", group=group, nodes=result.lists_differ)
    if result.frozen:
        log_event(log, logging.ERROR, "placement frozen: the leader cannot read these members' reports (another "
                  "wire format); nothing is placed or moved until they are upgraded or stopped", group=group,
                  members=result.frozen)


def placement_map(assignment: Assignment, group: str) -> bytes:
    """The map the leader publishes on the control topic (read by `rtsp-pipeline placement`)."""
    return json.dumps({"schema": MAP_SCHEMA, "group": group, "generation": assignment.generation,
                       "at": time.time(), "nodes": assignment.nodes, "unplaced": assignment.unplaced,
                       "moving": assignment.moving, "lists_differ": assignment.lists_differ,
                       "frozen": assignment.frozen}).encode()


def newest_map(values: list[bytes], group: str) -> dict | None:
    """The newest of the maps among a control topic's record values, by (generation, time): maps
    of other groups and records that are no map are skipped."""
    maps = []
    for value in values:
        try:
            found = json.loads(value)
        except (TypeError, ValueError):
            continue
        if (isinstance(found, dict) and found.get("schema") == MAP_SCHEMA and found.get("group") == group
                and isinstance(found.get("generation"), int) and isinstance(found.get("at"), (int, float))):
            maps.append(found)
    return max(maps, key=lambda m: (m["generation"], m["at"])) if maps else None


async def read_placement_map(kafka, group: str, timeout: float, tail: int = 50) -> tuple[dict | None, str]:
    """The newest map on the group's control topic (among the last `tail` records of each
    partition), or None and why none came within `timeout` (asked again until then: a map the
    leader has just made may still be on its way)."""
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
                    consumer.seek(tp, max(0, ends[tp] - tail))
                values: list[bytes] = []
                done: set = set()
                until = loop.time() + min(max(deadline - loop.time(), 0.5), 3)
                while len(done) < len(held) and loop.time() < until:  # each partition's tail, to its end
                    batch = await consumer.getmany(*held, timeout_ms=int(max(until - loop.time(), 0.1) * 1000))
                    for tp, records in batch.items():
                        values += [record.value for record in records]
                        if records and records[-1].offset >= ends[tp] - 1:
                            done.add(tp)
                found = newest_map(values, group)
                if found is not None:
                    return found, ""
                why = f"{name} holds records, but no map of group {group} among the last {tail} of each partition"
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
