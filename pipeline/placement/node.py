"""This daemon as a node of its placement group: it joins the group, runs exactly the cameras each
assignment gives it (through the fleet, the one owner of the running cameras), and shows the
group's map (metrics, /readyz, /v1/cameras). The node that made a plan publishes its map on the
control topic and reports the unplaced cameras on the status topic.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from pipeline.config import Config
from pipeline.core import CameraState
from pipeline.fleet import Fleet
from pipeline.kafka_security import security_options
from pipeline.logs import log_event
from pipeline.metrics import Metrics
from pipeline.placement.group import Assignment, GroupMember, control_topic, placement_map
from pipeline.placement.plan import camera_cost, default_capacity

log = logging.getLogger(__name__)

Publish = Callable[[str, str, bytes], None]  # topic, key, value
PublishStatus = Callable[[str, CameraState, str, float], None]  # camera, state, reason, at


class PlacementNode:
    """The node `node` of the group in `config().placement`; `publish` sends the map, and
    `publish_status` a camera's status message."""

    def __init__(self, config: Callable[[], Config], node: str, fleet: Fleet, metrics: Metrics,
                 publish: Publish, publish_status: PublishStatus) -> None:
        self._config, self.node, self._fleet, self._metrics = config, node, fleet, metrics
        self._publish, self._publish_status = publish, publish_status
        self.member: GroupMember | None = None
        self._reported_unplaced: set[str] = set()

    def _costs(self) -> dict[str, float]:
        return {c.id: camera_cost(c.fps, c.cost) for c in self._config().cameras}

    async def start(self, gpus: int, on_gpu: bool) -> None:
        """Join the group (in the background: an unreachable broker is retried, never fatal)."""
        cfg = self._config()
        placement = cfg.placement
        capacity = placement.capacity or default_capacity(gpus, os.cpu_count() or 1, on_gpu)
        self.member = GroupMember(
            bootstrap=cfg.kafka.bootstrap_servers, group=placement.group, node=self.node, capacity=capacity,
            costs=self._costs, apply=self._apply, session_timeout_s=placement.session_timeout_s,
            heartbeat_s=placement.heartbeat_s, rebalance_timeout_s=placement.rebalance_timeout_s,
            client_options=security_options(cfg.kafka))
        self._metrics.placement_capacity.set(capacity)
        await self.member.start()

    async def stop(self) -> None:
        """Leave the group (after the cameras stopped: they start elsewhere only once stopped here)."""
        if self.member is not None:
            await self.member.stop()

    def request_rejoin(self) -> None:
        """Ask for a new plan (the camera list changed)."""
        if self.member is not None:
            self.member.request_rejoin()

    async def _apply(self, assignment: Assignment) -> set[str]:
        """Run exactly the cameras the group gave this node: stop the others (those moving away
        first, so a camera never runs on two nodes), start the new ones; the rest are untouched."""
        known = {c.id: c for c in self._config().cameras}
        for cam in assignment.overlaps:
            if cam in self._fleet:
                self._metrics.placement_overlaps.labels(cam).inc()
                log_event(log, logging.WARNING, "camera ran on another node too while this one was cut off from "
                          "Kafka; stopped here", camera=cam, node=self.node, generation=assignment.generation)
        change = await self._fleet.converge([known[cam] for cam in assignment.cameras if cam in known])
        self._show(assignment)
        log_event(log, logging.INFO, "placement applied", node=self.node, generation=assignment.generation,
                  cameras=sorted(self._fleet), started=change.started, stopped=change.stopped,
                  moving=assignment.moving, unplaced=assignment.unplaced)
        return set(self._fleet)

    def _show(self, assignment: Assignment) -> None:
        """Metrics; and from the plan's maker: the map on the control topic, unplaced cameras on the status topic."""
        costs = self._costs()
        running = list(self._fleet)
        self._metrics.placement_cameras.set(len(running))
        self._metrics.placement_load.set(sum(costs.get(cam, 0) for cam in running))
        self._metrics.placement_unplaced.set(len(assignment.unplaced))
        self._metrics.placement_rebalances.inc()
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

    # ------------------------------------------------------------------ what the node shows
    def placed_elsewhere(self) -> dict[str, str]:
        """Camera -> the node the last plan gave it to."""
        nodes = self.member.view.nodes if self.member is not None else {}
        return {cam: node for node, info in nodes.items() for cam in info.get("cameras", [])}

    def readiness(self) -> tuple[dict, list[str]]:
        """The placement part of /readyz, and what degrades the node."""
        group = self._config().placement.group
        if self.member is None:
            return {"group": group, "node": self.node, "joined": False}, []
        view = self.member.view
        body = {"group": group, "node": self.node, "joined": view.joined, "generation": view.generation,
                "capacity": self.member.capacity, "nodes": view.nodes, "unplaced": view.unplaced,
                "moving": view.moving}
        degraded = []
        if view.unplaced:
            degraded.append(f"{len(view.unplaced)} cameras unplaced ({', '.join(view.unplaced[:10])}): no node of "
                            f"group {group} has room; add a node or raise placement.capacity")
        return body, degraded
