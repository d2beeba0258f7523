"""Recordings at full speed: frames/s of `rtsp-pipeline analyze` on one and on four files.

    .venv/bin/python -m scripts.bench.bench_files [--files 1,4] [--model engines/shapes-yolov8n.onnx] \\
        [--record docs/BENCHMARKS.md]

The files are generated 1080p25 scenes (scripts/lab/scenes.py, 10 s, 6 Mbit/s, a keyframe every
second: the clips scripts/bench/bench_many.py makes), every frame inferred by the shapes detector at
320 px with the daemon's defaults, messages to a local broker. Each run is the real command (a
subprocess) and its own summary gives the figures: frames, seconds of inference (first frame
through to the last), frames/s, and the command's wall time including start and delivery. The
figure to beat is the real-time CPU path's ceiling at 1080p on the same machine
(`scripts.bench.bench_peers --cameras 6`: more than it can take). The machine must be otherwise idle.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from scripts.bench.bench_cpu import machine, report
from scripts.bench.bench_many import clips
from scripts.lab.broker import Broker
from scripts.lab.common import REPO
from scripts.lab.daemons import daemon_config

SUMMARY = re.compile(r"frames: (\d+) in ([\d.]+) s of inference \(([\d.]+) frames/s\)")


def run(files: list[Path], config: Path) -> dict:
    exe = Path(sys.executable).with_name("rtsp-pipeline")
    started = time.monotonic()
    done = subprocess.run([str(exe), "analyze", *map(str, files), "--config", str(config)], capture_output=True,
                          text=True, cwd=REPO, timeout=1800)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"analyze exited {done.returncode}: {done.stderr[-2000:]}")
    found = SUMMARY.search(done.stdout)
    if found is None:
        raise RuntimeError(f"no summary in: {done.stdout}")
    return {"frames": int(found[1]), "seconds": float(found[2]), "rate": float(found[3]), "wall": wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", default="1,4", help="how many files at once, comma-separated")
    parser.add_argument("--model", type=Path, default=REPO / "engines" / "shapes-yolov8n.onnx")
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "bench-files")
    parser.add_argument("--record", type=Path, help="append the result section to this markdown file")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    scenes = clips(args.workdir)
    counts = [int(n) for n in args.files.split(",")]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    rows = []
    with Broker() as broker:
        topic = f"files-{uuid.uuid4().hex[:6]}"
        config = daemon_config(args.workdir / f"{topic}.yaml", {"path": args.model, "input_size": 320,
                                                                "confidence": 0.35},
                               broker.bootstrap, [("unused", "rtsp://127.0.0.1/none", None)], topic=topic,
                               status_topic=f"{topic}-status")
        for n in counts:
            result = run([scenes[i % len(scenes)] for i in range(n)], config)
            rows.append(f"| {n} | {result['frames']} | {result['seconds']:.1f} | **{result['rate']:.1f}** | "
                        f"{result['wall']:.1f} |")
            print(rows[-1], flush=True)
    lines = [f"**Recordings at full speed** (`rtsp-pipeline analyze`), {machine()}, "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, code at `{commit}`: "
             f"`.venv/bin/python -m scripts.bench.bench_files --files {args.files}`", "",
             "| files at once | frames | seconds of inference | frames/s | command's wall time (s) |",
             "| --- | --- | --- | --- | --- |", *rows]
    report(lines, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
