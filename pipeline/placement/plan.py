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
5. **Refused**: a camera a member cannot run (not in its camera list, or no lane for it) is
   reported back as refused and given to another member, never to that one again while it
   refuses it; a camera nobody can take is unplaced.

The wire format is versioned (`v` in every report and assignment). A member reads reports and
assignments of every version it knows (1 and 2); the leader writes assignments in the lowest
version any member speaks, so a rolling upgrade's old members read what the new leader writes
(fields they do not know are ignored). A report the leader cannot read at all (a member of a
format it does not know, or garbage) freezes the plan: every readable member keeps what it runs,
nothing is placed or moved (the unreadable member may run any camera: giving one to someone else
could run it twice), and the plan says why (`frozen`), for /readyz and the map. Each report also
carries a digest of the member's camera list: members whose list differs from the leader's are
named in the plan (`lists_differ`), as a SIGHUP that reached only some nodes leaves them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

WIRE_VERSION = 2  # 2: digest, refused and version in reports; lists_differ and frozen in assignments
READABLE_VERSIONS = (1, 2)  # assignments of these versions are read; reports of any version are, if they parse
FULL_HD = 1920 * 1080


def camera_list_digest(costs: dict[str, float]) -> str:
    """A short digest of a camera list (ids and costs): equal on nodes with the same list."""
    return hashlib.sha256(json.dumps(sorted(costs.items())).encode()).hexdigest()[:16]


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
    version: int = WIRE_VERSION  # of the member's wire format
    digest: str = ""  # of its camera list (camera_list_digest); "" from a version 1 member
    refused: tuple[str, ...] = ()  # given to it, but it cannot run them (not in its list, no lane)
    readable: bool = True  # False: the leader could not read this report

    def encode(self) -> bytes:
        return json.dumps({"v": self.version, "node": self.node, "capacity": self.capacity,
                           "running": self.running, "generation": self.generation,
                           "stopping": list(self.stopping), "in_transit": list(self.in_transit),
                           "digest": self.digest, "refused": list(self.refused)}).encode()

    @classmethod
    def decode(cls, member_id: str, data: bytes) -> MemberReport:
        """A member's report, of any version that carries the fields above (unknown ones are
        ignored); one that cannot be read is `readable=False` (and then freezes the plan)."""
        try:
            raw = json.loads(data or b"{}")
            version = raw["v"]
            if not isinstance(version, int) or version < 1 or not isinstance(raw["node"], str):
                raise ValueError(f"version {version!r}")
            running = {str(k): int(v) for k, v in dict(raw.get("running", {})).items()}
            return cls(member_id, raw["node"] or member_id, max(0.0, float(raw.get("capacity", 0))),
                       running, int(raw.get("generation", 0)), tuple(str(c) for c in raw.get("stopping", [])),
                       tuple(str(c) for c in raw.get("in_transit", [])), version, str(raw.get("digest", "")),
                       tuple(str(c) for c in raw.get("refused", [])))
        except (ValueError, TypeError, AttributeError, KeyError):
            return cls(member_id, member_id, 0.0, readable=False)


@dataclass(frozen=True)
class Plan:
    """The leader's answer for one generation: cameras per member, what fits nowhere, what is on
    its way between nodes (taken this round, given next), and the whole map for everyone to show."""

    assigned: dict[str, list[str]]  # member id -> cameras
    unplaced: list[str]
    moving: list[str]
    nodes: dict[str, dict]  # node -> {"cameras": [...], "capacity": c, "load": l}
    overlaps: dict[str, list[str]] = field(default_factory=dict)  # member id -> cameras it must give up
    version: int = WIRE_VERSION  # the lowest version any member speaks: what assignments are written in
    lists_differ: list[str] = field(default_factory=list)  # nodes whose camera list is not the leader's
    frozen: list[str] = field(default_factory=list)  # members whose report could not be read

    def for_member(self, member_id: str, generation: int) -> bytes:
        """One member's assignment (SyncGroup's user data), in the group's lowest version."""
        return json.dumps({"v": self.version, "generation": generation,
                           "cameras": self.assigned.get(member_id, []), "unplaced": self.unplaced,
                           "moving": self.moving, "nodes": self.nodes,
                           "overlaps": self.overlaps.get(member_id, []), "lists_differ": self.lists_differ,
                           "frozen": self.frozen}).encode()


def decode_assignment(data: bytes) -> dict | None:
    """A member's assignment as the leader wrote it; None when unreadable (a version this member
    does not know, or garbage)."""
    try:
        raw = json.loads(data or b"")
    except ValueError:
        return None
    return raw if isinstance(raw, dict) and raw.get("v") in READABLE_VERSIONS else None


def plan(costs: dict[str, float], members: list[MemberReport], digest: str = "") -> Plan:
    """The placement of `costs` (camera -> cost) on `members` (see the module docstring); `digest`:
    the leader's own camera list's (members with another are named in `lists_differ`)."""
    if not all(m.readable for m in members):
        return plan_keeping_claims(costs, members)
    live = sorted(members, key=lambda m: (m.node, m.member_id))
    load = {m.member_id: 0.0 for m in live}
    capacity = {m.member_id: m.capacity for m in live}
    refused = {m.member_id: set(m.refused) for m in live}
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
        fits = [m for m in load if load[m] + costs[camera] <= capacity[m] + 1e-9 and camera not in refused[m]]
        if not fits:
            unplaced.append(camera)
            continue
        best = min(fits, key=lambda m: ((load[m] + costs[camera]) / capacity[m], m))
        target[camera] = best
        load[best] += costs[camera]
        filled = filled or camera not in in_transit  # lost with a node, or new: not a planned move
    if not filled:
        _spread(target, load, capacity, costs, refused)  # 3.
    assigned: dict[str, list[str]] = {m.member_id: [] for m in live}
    moving = sorted(stopping)  # given to no one until the node stopping them says they stopped
    for camera, member in sorted(target.items()):  # 4. a move from a live member takes two rounds
        if camera in owner and owner[camera] != member:
            moving.append(camera)
        else:
            assigned[member].append(camera)
    names = _node_names(live)
    nodes = {names[m.member_id]: {"cameras": assigned[m.member_id], "capacity": m.capacity,
                                  "load": round(sum(costs[c] for c in assigned[m.member_id]), 3)} for m in live}
    differ = sorted(names[m.member_id] for m in live if digest and m.digest and m.digest != digest)
    return Plan(assigned, sorted(unplaced), moving, nodes, overlaps, min(m.version for m in live) if live else WIRE_VERSION,
                differ)


def plan_keeping_claims(costs: dict[str, float], members: list[MemberReport]) -> Plan:
    """Every readable member keeps what it runs (the newer claim, where two claim a camera) and
    nothing else is placed or moved: the plan when a member's report cannot be read (it may be
    running any camera; those members are named in `frozen`), and the leader's fallback should
    its plan fail."""
    readable = sorted((m for m in members if m.readable), key=lambda m: (m.node, m.member_id))
    owner, overlaps = _owners(costs, readable)
    assigned = {m.member_id: sorted(c for c, o in owner.items() if o == m.member_id) for m in members}
    names = _node_names(sorted(members, key=lambda m: (m.node, m.member_id)))
    nodes = {names[m.member_id]: {"cameras": assigned[m.member_id], "capacity": m.capacity,
                                  "load": round(sum(costs[c] for c in assigned[m.member_id]), 3),
                                  **({} if m.readable else {"readable": False})} for m in members}
    versions = [m.version for m in readable]
    return Plan(assigned, [], [], nodes, overlaps, min(versions) if versions else 1,
                frozen=sorted(names[m.member_id] for m in members if not m.readable))


def _node_names(members: list[MemberReport]) -> dict[str, str]:
    """member id -> its name in the map: its node id, made unique when two members share one (a
    copied config): both then show, with their member ids, instead of one hiding the other."""
    count: dict[str, int] = {}
    for m in members:
        count[m.node] = count.get(m.node, 0) + 1
    return {m.member_id: m.node if count[m.node] == 1 else f"{m.node} ({m.member_id})" for m in members}


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
            costs: dict[str, float], refused: dict[str, set[str]]) -> None:
    """Move cameras from the relatively fullest member to the emptiest while that lowers the
    fullest relative load (bounded: each camera moves at most once)."""
    usable = [m for m in load if capacity[m] > 0]
    moved: set[str] = set()
    while len(usable) > 1:
        ratio = {m: load[m] / capacity[m] for m in usable}
        fullest, emptiest = max(usable, key=lambda m: (ratio[m], m)), min(usable, key=lambda m: (ratio[m], m))
        candidates = [c for c, m in target.items() if m == fullest and c not in moved
                      and c not in refused[emptiest] and load[emptiest] + costs[c] <= capacity[emptiest] + 1e-9
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
