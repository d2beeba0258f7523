"""Many low-rate cameras: how many 1080p25 cameras sampled at 1 fps the daemon keeps up with.

    .venv/bin/python -m scripts.bench.bench_many [--counts 8,16,32,48] [--seconds 60] [--model ...] \\
        [--record docs/BENCHMARKS.md]

For each count N: N RTSP cameras (one GStreamer server, each mount its own looping 1080p25 H.264
scene at 6 Mbit/s, a keyframe every second), the daemon with `fps: 1` on every camera (so it decodes
keyframes only), a local broker. After a warm-up it measures, over the window: messages per
camera per second from Kafka (1.0 = keeping up), frames dropped before inference by reason
(/metrics), capture->Kafka latency p50/p99, daemon CPU and RSS, and the RTSP server's CPU (it
shares the 2 cores). "Sustained" means every camera at >= 0.95 messages/s and no drop.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from scripts.bench.bench_cpu import machine, parse_time, percentile, proc_cpu_seconds, proc_rss_mib, report
from scripts.lab.broker import Broker, consume
from scripts.lab.cameras import RtspServer
from scripts.lab.common import REPO, free_port, wait_for
from scripts.lab.daemons import Daemon, daemon_config, http_get, metric_values
from scripts.lab.scenes import Scene

LABELS = REPO / "engines" / "shapes-yolov8n.labels.txt"
SCENES = 4  # distinct scenes, shared round-robin by the mounts


def clips(workdir: Path) -> list[Path]:
    out = []
    for i in range(SCENES):
        clip = workdir / f"many-{9501 + i}-1080p25-gop25-6M-g2.mp4"
        if not clip.exists():
            Scene(9501 + i, 1920, 1080, fps=25, frames=250).write(clip, gop=25, bitrate="6M")
        out.append(clip)
    return out


def run(n: int, args, scene_clips: list[Path], broker: Broker, workdir: Path) -> dict:
    mounts = {f"cam{i:02d}": scene_clips[i % len(scene_clips)] for i in range(n)}
    topic = f"many-{n}-{uuid.uuid4().hex[:6]}"
    port = free_port()
    with RtspServer(mounts) as rtsp:
        config = daemon_config(
            workdir / f"{topic}.yaml", {"path": args.model, "input_size": 320, "confidence": 0.35,
                                        "labels": str(LABELS)},
            broker.bootstrap, [(cam, rtsp.url(cam), 1) for cam in mounts], topic=topic,
            status_topic=f"{topic}-status", metrics_port=port,
        )
        daemon = Daemon(config, workdir / f"{topic}.log")
        records: list = []
        stop = threading.Event()
        consumer = threading.Thread(target=lambda: records.extend(consume(
            broker.bootstrap, [topic], lambda _: stop.is_set(), args.warmup + args.seconds + 120, 200)),
            daemon=True)
        consumer.start()
        daemon.start()
        try:
            def inferring() -> int:
                text = http_get(f"http://127.0.0.1:{port}/metrics")[1]
                return len(metric_values(text, "rtsp_pipeline_frames_inferred_total"))
            wait_for(lambda: inferring() == n, 120, f"all {n} cameras to infer")
            time.sleep(args.warmup)
            dropped0 = metric_values(http_get(f"http://127.0.0.1:{port}/metrics")[1],
                                     "rtsp_pipeline_frames_dropped_total")
            pid, server = daemon.proc.pid, rtsp.proc.pid
            t0, wall0 = time.monotonic(), time.time()
            cpu0, server0 = proc_cpu_seconds(pid), proc_cpu_seconds(server)
            rss = []
            while time.monotonic() - t0 < args.seconds:
                time.sleep(1)
                rss.append(proc_rss_mib(pid))
            elapsed = time.monotonic() - t0
            cpu, server_cpu = proc_cpu_seconds(pid) - cpu0, proc_cpu_seconds(server) - server0
            dropped1 = metric_values(http_get(f"http://127.0.0.1:{port}/metrics")[1],
                                     "rtsp_pipeline_frames_dropped_total")
            time.sleep(3)
        finally:
            code = daemon.stop()
            stop.set()
            consumer.join(60)
    window = [r for r in records if wall0 <= r.received_at <= wall0 + elapsed]
    rates = Counter(r.key for r in window)
    lat = [r.received_at - parse_time(r.value["frame"]["captured_at"]) for r in window]
    drops: Counter = Counter()  # by reason, summed over cameras
    for key, value in dropped1.items():
        if value - dropped0.get(key, 0) > 0:
            drops[key.split('reason="')[1].rstrip('"}')] += value - dropped0.get(key, 0)
    per_cam = [rates.get(cam, 0) / elapsed for cam in mounts]
    return {"n": n, "min_rate": min(per_cam), "mean_rate": sum(per_cam) / n, "drops": drops,
            "p50": percentile(lat, 50), "p99": percentile(lat, 99), "cpu": 100 * cpu / elapsed,
            "server_cpu": 100 * server_cpu / elapsed, "rss": max(rss, default=0), "exit": code,
            "sustained": min(per_cam) >= 0.95 and not drops}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="8,16,32,48")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=15)
    parser.add_argument("--model", type=Path, default=REPO / "engines" / "shapes-yolov8n.onnx")
    parser.add_argument("--record", type=Path)
    args = parser.parse_args()
    workdir = REPO / ".cache" / "many"
    workdir.mkdir(parents=True, exist_ok=True)
    scene_clips = clips(workdir)
    results = []
    with Broker() as broker:
        for n in (int(c) for c in args.counts.split(",")):
            results.append(run(n, args, scene_clips, broker, workdir))
            r = results[-1]
            print(f"{n} cameras: min {r['min_rate']:.2f} msg/s, drops {r['drops'] or 0}, "
                  f"CPU {r['cpu']:.0f}%", flush=True)
    lines = [
        f"### Many 1080p25 cameras at 1 fps ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"- Machine: {machine()}",
        f"- Command: `.venv/bin/python -m scripts.bench.bench_many --counts {args.counts} --seconds {args.seconds:g} "
        f"--model {args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model}`",
        "- Cameras: 1920x1080 25 fps H.264 at 6 Mbit/s, a keyframe every second, `fps: 1` each (keyframe-only decode); "
        "the RTSP server runs on the same 2 cores",
        "",
        "| cameras | messages/s per camera (min / mean) | drops before inference | capture->Kafka p50 / p99 | "
        "daemon CPU (200% = 2 cores) | RTSP server CPU | daemon RSS | sustained |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *[f"| {r['n']} | {r['min_rate']:.2f} / {r['mean_rate']:.2f} | "
          f"{', '.join(f'{k} {v:.0f}' for k, v in r['drops'].items()) or 'none'} | {1000 * r['p50']:.0f} / "
          f"{1000 * r['p99']:.0f} ms | {r['cpu']:.0f}% | {r['server_cpu']:.0f}% | {r['rss']:.0f} MiB | "
          f"{'yes' if r['sustained'] else 'no'} |" for r in results],
    ]
    report(lines, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
