"""Which node runs which camera, when several daemons share one camera list (`placement.mode:
kafka-group`). Kafka's group coordinator does the membership (who is alive, failure detection,
one leader per generation), as it does for Kafka Connect's workers; this module is the plan the
leader makes from what every member reports, as pure functions, and the member's wire format.

Each member reports its node id, its capacity (in 1080p-frames/s: one 1080p camera inferred at 5
frames/s costs 5) and the cameras it runs now, with the generation of the assignment that gave
them. The leader plans:

1. **Sticky**: a camera stays where it runs, as long as that node is still a member and has room.
   When two members claim one camera (a node cut off from Kafka kept it while the group moved
   it), the claim from the newer generation keeps it; the other gives it up (an overlap, counted).
2. **Fill**: cameras nobody runs go, largest first, to the member that is least full after taking
   them, and only where they fit: never past a node's capacity. What fits nowhere is unplaced
   (reported, never dropped: the next plan tries again).
3. **Spread**: while moving one camera from the fullest member (relative to its fair share of the
   total, by capacity) to the emptiest makes the largest relative load smaller, it is moved. A
   node that joins takes its share; a rebalance with the same members moves nothing. Not in a
   plan that placed cameras nobody ran (a node died, cameras were added): those go where there is
   room and every other camera stays put, uninterrupted; a later join evens the load out.
   Cameras on their way between nodes (members report the last plan's moves) do not count as
   lost: a join whose rounds were split by a member that missed one (Tansu completes a
   generation with whoever joined within 3 s: seen) still ends balanced.
4. **Two rounds for a move** (eager rebalancing revokes everything at once; Kafka Connect's
   incremental protocol is copied by hand): a camera that moves from a live member is first
   taken from it and given to nobody; the member stops it and asks for a new rebalance, and the
   next plan gives it to its new node. A member reports what it is still stopping, and no plan
   gives those to anyone (another rebalance can come before it finishes). So a camera never runs
   on two nodes at once. A camera whose node is gone goes to its new node at once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

WIRE_VERSION = 1
FULL_HD = 1920 * 1080


@dataclass(frozen=True)
class MemberReport:
    """What a member tells the leader when it joins (JoinGroup's user data)."""

    member_id: str
    node: str
    capacity: float
    running: dict[str, int] = field(default_factory=dict)  # camera -> generation it was assigned in
    generation: int = 0  # of the last assignment this member applied
    stopping: tuple[str, ...] = ()  # taken from it, not stopped yet: no one else may start them
    in_transit: tuple[str, ...] = ()  # the last plan it applied was moving these (planned, not lost)

    def encode(self) -> bytes:
        return json.dumps({"v": WIRE_VERSION, "node": self.node, "capacity": self.capacity,
                           "running": self.running, "generation": self.generation,
                           "stopping": list(self.stopping), "in_transit": list(self.in_transit)}).encode()

    @classmethod
    def decode(cls, member_id: str, data: bytes) -> MemberReport:
        """A member's report; an unreadable one is a member with no capacity and nothing running."""
        try:
            raw = json.loads(data or b"{}")
            running = {str(k): int(v) for k, v in dict(raw.get("running", {})).items()}
            return cls(member_id, str(raw.get("node") or member_id), max(0.0, float(raw.get("capacity", 0))),
                       running, int(raw.get("generation", 0)), tuple(str(c) for c in raw.get("stopping", [])),
                       tuple(str(c) for c in raw.get("in_transit", [])))
        except (ValueError, TypeError, AttributeError):
            return cls(member_id, member_id, 0.0)


@dataclass(frozen=True)
class Plan:
    """The leader's answer for one generation: cameras per member, what fits nowhere, what is on
    its way between nodes (taken this round, given next), and the whole map for everyone to show."""

    assigned: dict[str, list[str]]  # member id -> cameras
    unplaced: list[str]
    moving: list[str]
    nodes: dict[str, dict]  # node -> {"cameras": [...], "capacity": c, "load": l}
    overlaps: dict[str, list[str]] = field(default_factory=dict)  # member id -> cameras it must give up

    def for_member(self, member_id: str, generation: int) -> bytes:
        """One member's assignment (SyncGroup's user data)."""
        return json.dumps({"v": WIRE_VERSION, "generation": generation,
                           "cameras": self.assigned.get(member_id, []), "unplaced": self.unplaced,
                           "moving": self.moving, "nodes": self.nodes,
                           "overlaps": self.overlaps.get(member_id, [])}).encode()


def decode_assignment(data: bytes) -> dict | None:
    """A member's assignment as the leader wrote it; None when unreadable (an older leader)."""
    try:
        raw = json.loads(data or b"")
    except ValueError:
        return None
    return raw if isinstance(raw, dict) and raw.get("v") == WIRE_VERSION else None


def plan(costs: dict[str, float], members: list[MemberReport]) -> Plan:
    """The placement of `costs` (camera -> cost) on `members` (see the module docstring)."""
    live = sorted(members, key=lambda m: (m.node, m.member_id))
    load = {m.member_id: 0.0 for m in live}
    capacity = {m.member_id: m.capacity for m in live}
    owner, overlaps = _owners(costs, live)
    stopping = {c for m in live for c in m.stopping if c in costs and c not in owner}  # still running somewhere
    in_transit = {c for m in live for c in m.in_transit}
    target: dict[str, str] = {}
    for camera in sorted(owner, key=lambda c: (-costs[c], c)):  # 1. sticky, while it fits
        member = owner[camera]
        if load[member] + costs[camera] <= capacity[member] + 1e-9:
            target[camera] = member
            load[member] += costs[camera]
    unplaced, filled = [], False
    for camera in sorted((c for c in costs if c not in target and c not in stopping), key=lambda c: (-costs[c], c)):
        fits = [m for m in load if load[m] + costs[camera] <= capacity[m] + 1e-9]
        if not fits:
            unplaced.append(camera)
            continue
        best = min(fits, key=lambda m: ((load[m] + costs[camera]) / capacity[m], m))
        target[camera] = best
        load[best] += costs[camera]
        filled = filled or camera not in in_transit  # lost with a node, or new: not a planned move
    if not filled:
        _spread(target, load, capacity, costs)  # 3.
    assigned: dict[str, list[str]] = {m.member_id: [] for m in live}
    moving = sorted(stopping)  # given to no one until the node stopping them says they stopped
    for camera, member in sorted(target.items()):  # 4. a move from a live member takes two rounds
        if camera in owner and owner[camera] != member:
            moving.append(camera)
        else:
            assigned[member].append(camera)
    nodes = {m.node: {"cameras": assigned[m.member_id], "capacity": m.capacity,
                      "load": round(sum(costs[c] for c in assigned[m.member_id]), 3)} for m in live}
    return Plan(assigned, sorted(unplaced), moving, nodes, overlaps)


def _owners(costs: dict[str, float], live: list[MemberReport]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """camera -> the member running it now (the newest generation's claim wins), and what each
    other claimant must give up."""
    owner: dict[str, str] = {}
    generation: dict[str, int] = {}
    overlaps: dict[str, list[str]] = {}
    for member in live:
        for camera, gen in member.running.items():
            if camera not in costs:
                continue
            if camera not in owner or gen > generation[camera]:
                if camera in owner:
                    overlaps.setdefault(owner[camera], []).append(camera)
                owner[camera], generation[camera] = member.member_id, gen
            else:
                overlaps.setdefault(member.member_id, []).append(camera)
    return owner, overlaps


def _spread(target: dict[str, str], load: dict[str, float], capacity: dict[str, float],
            costs: dict[str, float]) -> None:
    """Move cameras from the relatively fullest member to the emptiest while that lowers the
    fullest relative load (bounded: each camera moves at most once)."""
    usable = [m for m in load if capacity[m] > 0]
    moved: set[str] = set()
    while len(usable) > 1:
        ratio = {m: load[m] / capacity[m] for m in usable}
        fullest, emptiest = max(usable, key=lambda m: (ratio[m], m)), min(usable, key=lambda m: (ratio[m], m))
        candidates = [c for c, m in target.items() if m == fullest and c not in moved
                      and load[emptiest] + costs[c] <= capacity[emptiest] + 1e-9
                      and max((load[fullest] - costs[c]) / capacity[fullest],
                              (load[emptiest] + costs[c]) / capacity[emptiest]) < ratio[fullest] - 1e-9]
        if not candidates:
            return
        camera = min(candidates, key=lambda c: (abs((load[emptiest] + costs[c]) / capacity[emptiest]
                                                    - (load[fullest] - costs[c]) / capacity[fullest]), c))
        target[camera] = emptiest
        load[fullest] -= costs[camera]
        load[emptiest] += costs[camera]
        moved.add(camera)


def camera_cost(fps: float | None, cost: float | None, every_frame_fps: float = 25.0) -> float:
    """A camera's cost in 1080p-frames/s: its own `cost` when set, else its sampled fps (every
    frame counts as `every_frame_fps`) as if it were 1080p."""
    if cost is not None:
        return float(cost)
    return float(fps if fps is not None else every_frame_fps)


def default_capacity(gpus: int, cores: int, on_gpu: bool) -> float:
    """A node's capacity when placement.capacity is not set, in 1080p-frames/s: 400 per GPU on the
    GPU path (an NVDEC engine decodes ~770 1080p frames/s; the engine and the Python per frame are
    the limit), 25 per CPU core otherwise (measured: 2 vCPUs inferred ~50 1080p frames/s with the
    shapes detector at 320 px, fewer at 640). Rough: measure a node and set it."""
    return 400.0 * max(1, gpus) if on_gpu else 25.0 * max(1, cores)
