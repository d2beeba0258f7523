"""Placement figures: 3 nodes and 24 cameras (small streams, the stub engine) on one machine.

    .venv/bin/python -m scripts.bench.bench_placement --cameras 24 --out placement.json

Measures, on a real broker (Tansu) and RTSP server:
- failover time after kill -9 of a node (until every camera runs again, on one node each), and
  frames lost per moved camera (its fps x the gap in Kafka between its last message from the dead
  node and its first from the new one);
- cameras moved when the node comes back (join) and when another leaves with SIGTERM, against the
  minimum a placement could move (the joiner's fair share; the leaver's cameras), and the time to
  settle after SIGTERM;
- the CPU cost of membership: a node the group gives no camera (its capacity below any camera's
  cost): its CPU time over a minute (the whole idle daemon: heartbeats, polling, its HTTP server).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from scripts.lab.broker import Broker
from scripts.lab.cameras import RtspServer
from scripts.lab.clips import make_clip
from scripts.lab.common import wait_for
from scripts.lab.daemons import PlacementCluster, placed_runs

FPS = 1.0  # per camera: 24 cameras of 320x240 at 1 fps keep two cores free enough to time the group


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def moved(before: dict[str, str], after: dict[str, str]) -> int:
    return sum(1 for cam, node in after.items() if before.get(cam) not in (None, node))


def run(cameras: int, session_s: float, work: Path) -> dict:
    clip = make_clip(work / "small.mp4", 320, 240)
    out: dict = {"cameras": cameras, "nodes": 3, "session_timeout_s": session_s}
    with RtspServer({"cam": clip}) as rtsp, Broker() as broker:
        cluster = PlacementCluster(work, rtsp, broker.bootstrap, {f"cam-{i:02d}": FPS for i in range(cameras)},
                                   session_s=session_s, heartbeat_s=max(1.0, session_s / 6))
        try:
            for node in ("node-a", "node-b", "node-c"):
                cluster.start(node, 100)
            first = cluster.wait_placed(120, "every camera placed")
            out["initial_per_node"] = {n: sum(1 for v in first.values() if v == n) for n in ("node-a", "node-b", "node-c")}
            time.sleep(5)

            dead = [c for c, n in first.items() if n == "node-a"]
            killed = cluster.kill("node-a")
            after_kill = cluster.wait_placed(session_s + 60, "failover")
            out["failover_after_kill_9_s"] = round(time.time() - killed, 1)
            out["moved_on_kill"] = {"moved": moved(first, after_kill), "minimum": len(dead)}
            time.sleep(5)
            by_cam = placed_runs(cluster.records())
            gaps = []
            for cam in dead:
                old = [at for node, _, _, at in by_cam[cam] if node == "node-a"]
                new = [at for node, _, _, at in by_cam[cam] if node != "node-a"]
                if old and new:
                    gaps.append(min(new) - max(old))
            out["frames_lost_per_failover_per_camera"] = round(sum(gaps) / len(gaps) * FPS, 1) if gaps else None

            cluster.start("node-a", 100)
            wait_for(lambda: "node-a" in cluster.placed().values(), 120, "node-a to take a share")
            joined = cluster.wait_settled(60, "settled after the join")
            time.sleep(5)
            joined = cluster.placed() or joined
            out["moved_on_join"] = {"moved": moved(after_kill, joined), "minimum": cameras // 3}

            leaving = sum(1 for n in joined.values() if n == "node-b")
            termed = cluster.kill("node-b", signal.SIGTERM)
            left = wait_for(lambda: (lambda p: p if p and "node-b" not in p.values() else None)(cluster.placed()),
                            60, "node-b's cameras to move")
            out["moved_after_sigterm_s"] = round(time.time() - termed, 1)
            out["moved_on_leave"] = {"moved": moved(joined, left), "minimum": leaving}

            cluster.start("node-idle", 0.5)  # smaller than any camera: the group gives it none
            time.sleep(15)
            pid = cluster.nodes["node-idle"][0].proc.pid
            begin, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(60)
            out["idle_member_cpu_percent_of_a_core"] = round(100 * (cpu_seconds(pid) - begin) / (time.monotonic() - t0), 2)
            out["idle_member_cameras"] = len(cluster.running("node-idle"))
        finally:
            cluster.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=24)
    parser.add_argument("--session-timeout", type=float, default=10)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-placement-") as work:
        result = run(args.cameras, args.session_timeout, Path(work))
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
