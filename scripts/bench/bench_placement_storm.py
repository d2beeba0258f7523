"""The long placement storm: daemons of one placement group on a local broker and a real RTSP
server, driven through seeded overlapping operator events (scripts/lab/storm.py), then a quiet
spell and the checks. CI runs a short seed (tests/integration/test_placement_storm.py); this is the
long one, for docs/BENCHMARKS.md.

    .venv/bin/python -m scripts.bench.bench_placement_storm --seed 7 --rounds 12 --out storm.json
    .venv/bin/python -m scripts.bench.bench_placement_storm --seeds 1,2,3,4 --rounds 8 --log-level debug --keep DIR

Prints one line per run and, last, one JSON object: per seed the events, the checks (each a list
of what failed; empty: held), the rebalances and the seconds taken.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from scripts.lab.broker import Broker
from scripts.lab.cameras import RtspServer
from scripts.lab.clips import make_clip
from scripts.lab.daemons import PlacementCluster, http_get, metric_values
from scripts.lab.storm import Storm, check, quiet

NODES = ["n0", "n1", "n2", "n3"]


def rebalances(cluster: PlacementCluster) -> int:
    """placement_rebalances_total summed over the live nodes."""
    total = 0.0
    for node in cluster.alive():
        status, text = http_get(cluster.url(node, "/metrics"))
        if status == 200:
            total += sum(metric_values(text, "rtsp_pipeline_placement_rebalances_total").values())
    return int(total)


def one_storm(seed: int, args, folder: Path, camera_server: RtspServer, broker: Broker) -> dict:
    cameras = {f"cam-{i}": 2.0 for i in range(args.cameras)}
    settings = {"log_level": args.log_level}
    cluster = PlacementCluster(folder, camera_server, broker.bootstrap, cameras, settings=settings)
    started = time.time()
    try:
        storm = Storm(cluster, seed, NODES[:args.nodes], capacity=args.capacity)
        log = storm.run(args.rounds)
        quiet_end = quiet(cluster, args.quiet)
        records = cluster.records(8)
        result = {"seed": seed, "seconds": round(time.time() - started, 1), "rebalances_seen": rebalances(cluster),
                  "events": [what for _, what in log.events], "checks": check(cluster, log, records, quiet_end)}
    finally:
        cluster.stop()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--seeds", help="several seeds, comma-separated (overrides --seed)")
    parser.add_argument("--rounds", type=int, default=12, help="storm steps after the first")
    parser.add_argument("--nodes", type=int, default=4, choices=(3, 4))
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--capacity", type=float, default=12.0, help="each node's, in 1080p-frames/s")
    parser.add_argument("--quiet", type=float, default=60.0, help="seconds of quiet before the checks")
    parser.add_argument("--log-level", default="info", choices=("debug", "info"))
    parser.add_argument("--keep", type=Path, help="keep the nodes' logs and configs here")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    work = Path(tempfile.mkdtemp(prefix="storm-"))
    results = []
    clip = make_clip(work / "small.mp4", 320, 240)
    with RtspServer({"cam": clip}) as camera_server, Broker() as broker:
        for seed in seeds:
            folder = (args.keep or work) / f"seed-{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            result = one_storm(seed, args, folder, camera_server, broker)
            failed = {name: len(items) for name, items in result["checks"].items() if items}
            print(f"seed {seed}: {len(result['events'])} events, {result['seconds']} s, "
                  f"{'all checks held' if not failed else f'FAILED {failed}'}", flush=True)
            results.append(result)
    shutil.rmtree(work, ignore_errors=True)
    summary = {"rounds": args.rounds, "nodes": args.nodes, "cameras": args.cameras, "runs": results,
               "failed_runs": sum(1 for r in results if any(r["checks"].values()))}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 1 if summary["failed_runs"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
