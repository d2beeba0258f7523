"""This daemon as a node of its placement group: it joins the group, runs exactly the cameras each
assignment gives it (through the fleet, the one owner of the running cameras), and shows the
group's map (metrics, /readyz, /v1/cameras). The node that made a plan publishes its map on the
control topic, straight to Kafka (a map is a snapshot: the newest wins, so it never waits in the
spool behind older ones, and one that cannot be sent is replaced by the next), and reports the
unplaced cameras on the status topic.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable

from pipeline.config import Config, KafkaConfig
from pipeline.core import CameraState
from pipeline.fleet import Fleet
from pipeline.kafka_security import security_options
from pipeline.logs import log_event
from pipeline.metrics import Metrics
from pipeline.placement.group import Applied, Assignment, GroupMember, control_topic, placement_map
from pipeline.placement.plan import camera_cost, default_capacity

log = logging.getLogger(__name__)

Publish = Callable[[str, str, bytes], None]  # topic, key, value
PublishStatus = Callable[[str, CameraState, str, float], None]  # camera, state, reason, at
MAP_SEND_TIMEOUT_S = 10.0


class MapSender:
    """Sends the leader's maps straight to Kafka with a producer of its own: one send at a time,
    and of what waits only the newest (a map is a snapshot; an older one is worth nothing once a
    newer exists). A failed send is logged and dropped: the next plan sends a new map."""

    def __init__(self, kafka: KafkaConfig) -> None:
        self._kafka = kafka
        self._producer = None
        self._next: tuple[str, str, bytes] | None = None
        self._task: asyncio.Task | None = None

    def __call__(self, topic: str, key: str, value: bytes) -> None:
        self._next = (topic, key, value)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="placement-map")

    async def _drain(self) -> None:
        from aiokafka import AIOKafkaProducer

        while self._next is not None:
            (topic, key, value), self._next = self._next, None
            try:
                if self._producer is None:
                    self._producer = AIOKafkaProducer(bootstrap_servers=self._kafka.bootstrap_servers,
                                                      **security_options(self._kafka))
                    await asyncio.wait_for(self._producer.start(), MAP_SEND_TIMEOUT_S)
                await asyncio.wait_for(self._producer.send_and_wait(topic, value, key=key.encode()),
                                       MAP_SEND_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - the map is informational; the next plan sends one
                log_event(log, logging.WARNING, "placement map not published; the next plan's will be",
                          topic=topic, error=repr(exc))
                await self._close_producer()

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), MAP_SEND_TIMEOUT_S)

    async def stop(self) -> None:
        """Send what waits (bounded), then close the producer."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._task), MAP_SEND_TIMEOUT_S)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._close_producer()


class PlacementNode:
    """The node `node` of the group in `config().placement`; `publish_status` sends a camera's
    status message, `publish_map` the leader's map (default: a MapSender)."""

    def __init__(self, config: Callable[[], Config], node: str, fleet: Fleet, metrics: Metrics,
                 publish_status: PublishStatus, publish_map: Publish | None = None,
                 member_options: dict | None = None) -> None:
        self._config, self.node, self._fleet, self._metrics = config, node, fleet, metrics
        self._publish_status = publish_status
        self._map_sender = MapSender(config().kafka) if publish_map is None else None
        self._publish = publish_map or self._map_sender
        self._member_options = member_options or {}  # GroupMember's consumer_factory, own_thread (tests)
        self.member: GroupMember | None = None
        self._reported_unplaced: set[str] = set()
        self._moving_shown: set[str] = set()  # cameras with a placement_moving_seconds child
        self._reported_unknown: set[str] = set()  # cameras said not placed because the leader lacks them
        self._refresher: asyncio.Task | None = None

    def _costs(self) -> dict[str, float]:
        return {c.id: camera_cost(c.fps, c.cost) for c in self._config().cameras}

    async def start(self, gpus: int, on_gpu: bool) -> None:
        """Join the group (in the background: an unreachable broker is retried, never fatal)."""
        cfg = self._config()
        placement = cfg.placement
        capacity = placement.capacity or default_capacity(gpus, os.cpu_count() or 1, on_gpu)
        self.member = GroupMember(
            bootstrap=cfg.kafka.bootstrap_servers, group=placement.group, node=self.node, capacity=capacity,
            costs=self._costs, apply=self._apply, running=lambda: set(self._fleet),
            session_timeout_s=placement.session_timeout_s, heartbeat_s=placement.heartbeat_s,
            rebalance_timeout_s=placement.rebalance_timeout_s, client_options=security_options(cfg.kafka),
            count=self._count, **self._member_options)
        self._metrics.placement_capacity.set(capacity)
        await self.member.start()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_gauges(), name="placement-gauges")

    async def _refresh_gauges(self) -> None:
        while True:
            self.update_gauges()
            await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """Leave the group (after the cameras stopped: they start elsewhere only once stopped here)."""
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        if self.member is not None:
            await self.member.stop()
        if self._map_sender is not None:
            await self._map_sender.stop()

    def request_rejoin(self) -> None:
        """Ask for a new plan (the camera list changed)."""
        if self.member is not None:
            self.member.request_rejoin()

    def _count(self, where: str) -> None:
        """The member's events: a stall, a round-two request, or a failure it survived."""
        if where == "stall":
            self._metrics.placement_stalls.inc()
        elif where == "round_two_ask":
            self._metrics.placement_round_two_asks.inc()
        else:
            self._metrics.placement_errors.labels(where).inc()

    async def _apply(self, assignment: Assignment, cameras: frozenset[str]) -> Applied:
        """Run exactly `cameras` (the assignment's, those this node knows): stop the others (those
        moving away first, so a camera never runs on two nodes), start the new ones; the rest are
        untouched. Cameras no lane can take are refused (the group then plans them elsewhere)."""
        known = {c.id: c for c in self._config().cameras}
        for cam in assignment.overlaps:
            if cam in self._fleet:
                self._metrics.placement_overlaps.labels(cam).inc()
                log_event(log, logging.WARNING, "camera ran on another node too while this one was cut off from "
                          "Kafka; stopped here", camera=cam, node=self.node, generation=assignment.generation)
        change = await self._fleet.converge([known[cam] for cam in sorted(cameras) if cam in known])
        self._show(assignment)
        log_event(log, logging.INFO, "placement applied", node=self.node, generation=assignment.generation,
                  cameras=sorted(self._fleet), started=change.started, stopped=change.stopped,
                  refused=change.refused, moving=assignment.moving, unplaced=assignment.unplaced)
        return Applied(set(change.refused))

    def _show(self, assignment: Assignment) -> None:
        """Metrics; and from the plan's maker: the map on the control topic, unplaced cameras on the status topic."""
        costs = self._costs()
        running = list(self._fleet)
        view = self.member.view
        self._metrics.placement_cameras.set(len(running))
        self._metrics.placement_load.set(sum(costs.get(cam, 0) for cam in running))
        self._metrics.placement_unplaced.set(len(assignment.unplaced))
        self._metrics.placement_rebalances.inc()
        self._metrics.placement_refused.set(len(view.refused))
        self._metrics.placement_lists_differ.set(len(assignment.lists_differ))
        self._metrics.placement_frozen.set(len(assignment.frozen))
        self.update_gauges()
        self._report_unknown_to_the_group(assignment, costs)
        if not assignment.led:
            return
        group = self._config().placement.group
        self._publish(control_topic(group), group, placement_map(assignment, group))
        total = sum(node["capacity"] for node in assignment.nodes.values())
        for cam in sorted(set(assignment.unplaced) - self._reported_unplaced):
            self._publish_status(cam, CameraState.STOPPED, f"unplaced: no node of group {group} has room for it "
                                 f"(cost {costs.get(cam, 0):g} 1080p-frames/s; the group's capacity {total:g}); add a "
                                 "node or raise placement.capacity", time.time())
        self._reported_unplaced = set(assignment.unplaced)

    def _report_unknown_to_the_group(self, assignment: Assignment, costs: dict[str, float]) -> None:
        """Cameras of this node's list that the leader's plan does not have at all (the lists
        differ: a reload that reached only some nodes) run nowhere: each is said once on the
        status topic, by the node that has it."""
        planned = set(assignment.unplaced) | set(assignment.moving)
        for info in assignment.nodes.values():
            planned.update(info.get("cameras", []))
        unknown = set(costs) - planned if assignment.lists_differ else set()
        for cam in sorted(unknown - self._reported_unknown):
            self._publish_status(cam, CameraState.STOPPED, "not placed: the placement group's leader does not have "
                                 f"this camera in its list (camera lists differ on {', '.join(assignment.lists_differ)}); "
                                 "reload every node with the same list", time.time())
        self._reported_unknown = unknown

    def update_gauges(self) -> None:
        """The gauges that change with time: joined, and how long each camera has been moving."""
        if self.member is None:
            return
        view, now = self.member.view, time.monotonic()
        self._metrics.placement_joined.set(1 if view.joined else 0)
        for cam in self._moving_shown - set(view.moving_since):
            self._metrics.placement_moving_seconds.remove(cam)
        for cam, since in view.moving_since.items():
            self._metrics.placement_moving_seconds.labels(cam).set(round(now - since, 3))
        self._moving_shown = set(view.moving_since)

    # ------------------------------------------------------------------ what the node shows
    def placed_elsewhere(self) -> dict[str, str]:
        """Camera -> the node the last plan gave it to."""
        nodes = self.member.view.nodes if self.member is not None else {}
        return {cam: node for node, info in nodes.items() for cam in info.get("cameras", [])}

    def readiness(self) -> tuple[dict, list[str], str | None]:
        """The placement part of /readyz, what degrades the node, and why it is not ready (None:
        placement does not hold it back). Not ready: before its first assignment (a new node is
        ready once it has its share), and while out of the group for longer than
        session_timeout_s + rebalance_timeout_s."""
        placement = self._config().placement
        group, member = placement.group, self.member
        if member is None:
            return {"group": group, "node": self.node, "joined": False}, [], "not in the placement group yet"
        view = member.view
        away = view.unjoined_for()
        body = {"group": group, "node": self.node, "joined": view.joined, "generation": view.generation,
                "applied_generation": view.applied_generation, "capacity": member.capacity, "nodes": view.nodes,
                "unplaced": view.unplaced, "moving": view.moving, "refused": view.refused,
                "lists_differ": view.lists_differ, "frozen": view.frozen, "stalls": view.stalls,
                "unjoined_for_s": round(away, 1)}
        degraded = []
        if view.unplaced:
            degraded.append(f"{len(view.unplaced)} cameras unplaced ({', '.join(view.unplaced[:10])}): no node of "
                            f"group {group} has room; add a node or raise placement.capacity")
        if view.lists_differ:
            degraded.append(f"camera lists differ from the placement leader's on {', '.join(view.lists_differ)}: "
                            "reload every node with the same list")
        if view.frozen:
            degraded.append(f"placement frozen: the leader cannot read {', '.join(view.frozen)} (another wire "
                            "format); nothing is placed or moved until they are upgraded or stopped")
        if view.refused:
            degraded.append(f"{len(view.refused)} cameras given to this node cannot run here "
                            f"({', '.join(view.refused[:10])}): not in its camera list, or no lane for them")
        if away > member.stall_after_s:
            degraded.append(f"the placement group's rebalance has not finished in {away:.0f} s (stalls so far: "
                            f"{view.stalls}); joining again as a new member")
        why = None
        limit = placement.session_timeout_s + placement.rebalance_timeout_s
        if view.applied_generation == 0:
            why = f"no assignment from placement group {group} yet ({away:.0f} s)"
        elif away > limit:
            why = f"out of placement group {group} for {away:.0f} s (more than session + rebalance timeout, {limit:g} s)"
        if why and member.last_error:
            why += f"; last error: {member.last_error}"
        return body, degraded, why
