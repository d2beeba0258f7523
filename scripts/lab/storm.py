"""A storm of overlapping operator events on a placement group, and the checks that must hold after
it. Operators overlap events: a ConfigMap change reaches every pod at once while an autoscaler
adds pods and a rollout stops old ones. The storm runs real daemons (a PlacementCluster) through a
seeded sequence of such events:

- `stall`: a node starts, another stops with SIGTERM 1.5 s later and starts again 1 s after that
  (the step every stalled run of issue 33 began with);
- `hup_join_leave`: SIGHUP to every node at once with a changed camera list (one camera's fps
  changed, one added, one removed) while a node joins or leaves;
- `kill_in_reload`: SIGHUP to every node, then kill -9 of one of them within a second, and its
  restart;
- `term_in_assignment`: a node joins and, while the group rebalances, another stops with SIGTERM;
- `join_leave_then_every_fps`: a node joins or leaves, and 2-5.5 s later every camera's fps changes
  (so every camera restarts) with SIGHUP to every node (the sequence issue 33's stalls were seen in).

Then a quiet spell, and the checks over what reached Kafka and what the nodes say (`check`): no
camera served by two runs at once, every camera served by exactly one node after the quiet, each
removed camera gone within 20 s, every SIGTERM exiting 0 and no traceback in any log.
"""
from __future__ import annotations

import random
import signal
import time
from collections import defaultdict
from dataclasses import dataclass, field

from scripts.lab.common import wait_for
from scripts.lab.daemons import PlacementCluster, captured

REMOVED_BOUND_S = 20.0


@dataclass
class StormLog:
    """What the storm did, for the checks and the report."""

    events: list[tuple[float, str]] = field(default_factory=list)  # (wall time, what)
    removed: dict[str, float] = field(default_factory=dict)  # camera -> when the SIGHUP removing it was sent
    exits: list[tuple[str, int | None]] = field(default_factory=list)  # (node, exit code) of every SIGTERM
    added = 0

    def note(self, what: str) -> None:
        self.events.append((time.time(), what))


class Storm:
    """Drives `cluster` (nodes `nodes`, each of `capacity`) through seeded overlapping events."""

    STEPS = ("hup_join_leave", "kill_in_reload", "term_in_assignment", "stall", "join_leave_then_every_fps")

    def __init__(self, cluster: PlacementCluster, seed: int, nodes: list[str], capacity: float,
                 spare: int = 1) -> None:
        self.cluster, self.rng, self.capacity = cluster, random.Random(seed), capacity
        self.nodes = list(nodes)
        self.spare = spare  # nodes not started at first: they join during the storm
        self.log = StormLog()
        self._next_camera = len(cluster.cameras)
        self._stalls = 0

    # ------------------------------------------------------------------ nodes
    def running(self) -> list[str]:
        return [n for n in self.nodes if n in self.cluster.nodes and self.cluster.nodes[n][0].proc.poll() is None]

    def stopped(self) -> list[str]:
        return [n for n in self.nodes if n not in self.running()]

    def start(self, node: str) -> None:
        self.cluster.start(node, self.capacity)
        self.log.note(f"start {node}")

    def term(self, node: str) -> None:
        """SIGTERM and wait for the exit; its code is kept (every one must be 0)."""
        daemon = self.cluster.nodes[node][0]
        self.log.note(f"SIGTERM {node}")
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            code = daemon.proc.wait(30)
        except Exception:  # noqa: BLE001 - a node that does not stop: recorded, then killed
            code = None
            daemon.proc.kill()
            daemon.proc.wait(10)
        self.log.exits.append((node, code))

    def kill(self, node: str) -> None:
        self.log.note(f"kill -9 {node}")
        self.cluster.kill(node)

    def pause(self, low: float, high: float) -> None:
        time.sleep(self.rng.uniform(low, high))

    # ------------------------------------------------------------------ the camera list
    def changed_list(self) -> tuple[dict[str, float], str]:
        """The current list with one camera's fps changed, one camera added and one removed (named)."""
        cameras = dict(self.cluster.cameras)
        changed = self.rng.choice(sorted(cameras))
        cameras[changed] = 3.0 if cameras[changed] != 3.0 else 2.0
        removed = self.rng.choice(sorted(c for c in cameras if c != changed))
        del cameras[removed]
        cameras[f"cam-{self._next_camera}"] = 2.0
        self._next_camera += 1
        return cameras, removed

    def reload_all(self) -> None:
        cameras, removed = self.changed_list()
        self.log.removed[removed] = self.cluster.reload_all(cameras)
        self.log.added += 1
        self.log.note(f"SIGHUP all ({len(cameras)} cameras, {removed} removed)")

    # ------------------------------------------------------------------ the steps
    def stall(self) -> None:
        """A node starts, another stops with SIGTERM 1.5 s later (the first time; then 1-5 s later, to
        sweep the rebalance the join starts), and starts again 1 s after it exited."""
        newcomer = self.stopped()[0] if self.stopped() else None
        if newcomer is None:
            self.term(self.rng.choice(self.running()))
            newcomer = self.stopped()[0]
        self.start(newcomer)
        time.sleep(1.5 if not self._stalls else self.rng.uniform(1.0, 5.0))
        self._stalls += 1
        leaver = self.rng.choice([n for n in self.running() if n != newcomer])
        self.term(leaver)
        time.sleep(1.0)
        self.start(leaver)

    def hup_join_leave(self) -> None:
        self.reload_all()
        self.pause(0, 2)
        if self.stopped() and (len(self.running()) < 3 or self.rng.random() < 0.5):
            self.start(self.rng.choice(self.stopped()))
        else:
            self.term(self.rng.choice(self.running()))

    def kill_in_reload(self) -> None:
        self.reload_all()
        self.pause(0.1, 1.0)
        victim = self.rng.choice(self.running())
        self.kill(victim)
        self.pause(1, 3)
        self.start(victim)

    def term_in_assignment(self) -> None:
        if not self.stopped():
            self.term(self.rng.choice(self.running()))
            self.pause(1, 3)
        self.start(self.rng.choice(self.stopped()))
        self.pause(0.5, 2.5)  # the group is rebalancing for the join
        self.term(self.rng.choice(self.running()))

    def join_leave_then_every_fps(self) -> None:
        if self.stopped() and (len(self.running()) < 3 or self.rng.random() < 0.5):
            self.start(self.rng.choice(self.stopped()))
        else:
            self.term(self.rng.choice(self.running()))
        self.pause(2, 5.5)
        cameras = {cam: (3.0 if fps != 3.0 else 2.0) for cam, fps in self.cluster.cameras.items()}
        self.cluster.reload_all(cameras)
        self.log.note(f"SIGHUP all (every fps changed, {len(cameras)} cameras)")

    def run(self, rounds: int, first: str | None = "stall") -> StormLog:
        """Start the first nodes, wait until placed, then `rounds` steps (`first`, then seeded
        choices), 2-5.5 s apart, and bring every node back up at the end."""
        for node in self.nodes[:len(self.nodes) - self.spare]:
            self.start(node)
        self.cluster.wait_placed(120, "the first placement")
        self.log.note("placed")
        steps = ([first] if first else []) + [self.rng.choice(self.STEPS) for _ in range(rounds - bool(first))]
        for step in steps:
            self.log.note(f"step {step}")
            getattr(self, step)()
            self.pause(2, 5.5)
        for node in self.stopped():
            self.start(node)
        self.log.note("storm over")
        return self.log


# ---------------------------------------------------------------------- the checks
STINT_GAP_S = 2.5  # a camera's frames from one daemon run this far apart belong to two stints (it moved away and back)


def run_intervals(records, gap_s: float = STINT_GAP_S) -> dict[str, list[tuple[float, float, tuple[str, str]]]]:
    """camera -> [(first capture, last capture, (node, run_id))] of every stint that served it: a
    run's frames of one camera, split where they pause for more than `gap_s` (a node can run a
    camera, give it up, and get it back: two stints of one run, with another node's between)."""
    times: dict[tuple[str, str, str], list[float]] = {}
    for r in records:
        times.setdefault((r.key, r.value.get("node"), r.value["run_id"]), []).append(captured(r))
    out: dict[str, list] = defaultdict(list)
    for (cam, node, run), seen in times.items():
        seen.sort()
        start = seen[0]
        for before, after in zip(seen, seen[1:]):
            if after - before > gap_s:
                out[cam].append((start, before, (node, run)))
                start = after
        out[cam].append((start, seen[-1], (node, run)))
    return {cam: sorted(stints) for cam, stints in out.items()}


def overlaps(records) -> list[str]:
    """Cameras served by two runs at once: a stint that began before another run's stint ended."""
    found = []
    for cam, runs in run_intervals(records).items():
        latest_end, latest = runs[0][1], runs[0][2]
        for low, high, who in runs[1:]:
            if low <= latest_end and who != latest:
                found.append(f"{cam}: {who} began at {low:.3f}, before {latest} ended at {latest_end:.3f}")
            if high > latest_end:
                latest_end, latest = high, who
    return found


def removed_late(records, removed: dict[str, float], bound: float = REMOVED_BOUND_S) -> list[str]:
    """Removed cameras still served more than `bound` s after the SIGHUP that removed them."""
    last: dict[str, float] = {}
    for r in records:
        last[r.key] = max(last.get(r.key, 0.0), captured(r))
    return [f"{cam}: last frame {last[cam] - at:.1f} s after its removal" for cam, at in removed.items()
            if cam in last and last[cam] - at > bound]


def served_once(records, cameras, since: float) -> list[str]:
    """Cameras not served by exactly one (node, run) since `since` (the end of the quiet)."""
    runs: dict[str, set] = defaultdict(set)
    for r in records:
        if captured(r) >= since:
            runs[r.key].add((r.value.get("node"), r.value["run_id"]))
    return [f"{cam}: {sorted(runs.get(cam, ()))}" for cam in sorted(cameras) if len(runs.get(cam, ())) != 1]


def tracebacks(cluster: PlacementCluster) -> list[str]:
    """Log files (of every run of every node) with a Python traceback."""
    return [log.name for log in sorted(cluster.folder.glob("*.log")) if "Traceback" in log.read_text(errors="replace")]


def check(cluster: PlacementCluster, log: StormLog, records, quiet_end: float) -> dict:
    """Every check of the storm, as lists of what failed (empty: held)."""
    return {
        "overlaps": overlaps(records),
        "removed_late": removed_late(records, log.removed),
        "not_served_once": served_once(records, cluster.cameras, quiet_end - 10),
        "placed_now": [] if cluster.placed() else [f"nodes say {dict(cluster.where())}"],
        "sigterm_exit_not_0": [f"{node}: {code}" for node, code in log.exits if code != 0],
        "tracebacks": tracebacks(cluster),
    }


def quiet(cluster: PlacementCluster, seconds: float) -> float:
    """Let the group settle for `seconds` (at least until placed, at most twice as long); returns the end."""
    started = time.time()
    try:
        wait_for(cluster.placed, seconds * 2, "the group to place every camera", interval=1)
    except TimeoutError:
        pass
    time.sleep(max(0.0, started + seconds - time.time()))
    return time.time()
