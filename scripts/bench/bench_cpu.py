"""CPU benchmark: the daemon on N x 1080p25 RTSP cameras next to ONNX Runtime alone, same run.

    .venv/bin/python -m scripts.bench.bench_cpu [--cameras 2] [--seconds 60] [--record docs/BENCHMARKS.md]

1. ONNX Runtime alone: the same model, session settings and input shape the daemon uses
   (1920x1080 letterboxed to 640x384), batch 1 and batch N, on random input.
2. The daemon (real CLI) reading N looping 1080p25 H.264 cameras from GStreamer's RTSP server,
   every frame offered to inference, publishing to a local broker. After a warm-up, it measures
   frames inferred per camera (/metrics), CPU % and RSS of the daemon (/proc), and capture->Kafka
   latency (consumer receive time minus frame.captured_at), per 10 s window to show drift.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from scripts.bench.bench_ort_threads import images_per_second, session
from scripts.lab.broker import Broker, consume
from scripts.lab.cameras import RtspServer
from scripts.lab.clips import make_clip
from scripts.lab.common import REPO, free_port, wait_for
from scripts.lab.daemons import Daemon, daemon_config, http_get, metric_values

MODEL = REPO / "engines" / "yolov8n.onnx"
TICK = os.sysconf("SC_CLK_TCK")


def ort_alone(threads: int, runs: int, seconds: float) -> float:
    """Images per second of ONNX Runtime on [1, 3, 384, 640]: one session, `runs` concurrent
    runs of `threads` threads each (idle threads spin, ORT's default, when one run)."""
    shared = session(threads, spinning=runs == 1)
    return images_per_second([shared] * runs, seconds)


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def inferred_per_camera(port: int) -> dict[str, float]:
    text = http_get(f"http://127.0.0.1:{port}/metrics")[1]
    return {k.split('"')[1]: v for k, v in metric_values(text, "rtsp_pipeline_frames_inferred_total").items()}


def parse_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def histogram_quantile(text: str, name: str, q: float) -> float:
    """Quantile from a Prometheus histogram's cumulative buckets (linear within a bucket)."""
    buckets = sorted(
        (float("inf") if k.split('"')[1] == "+Inf" else float(k.split('"')[1]), v)
        for k, v in metric_values(text, name + "_bucket").items()
    )
    total = buckets[-1][1] if buckets else 0
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= q * total and total:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (q * total - lower_count) / max(count - lower_count, 1)
        lower_bound, lower_count = bound, count
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_daemon(rtsp: RtspServer, broker: Broker, cameras: int, seconds: float, warmup: float,
               workdir: Path, profile: bool = False) -> dict:
    port = free_port()
    config = daemon_config(  # default ONNX Runtime settings
        workdir / "bench.yaml", MODEL, broker.bootstrap, [(f"cam{i}", rtsp.url(f"cam{i}"), None) for i in range(cameras)],
        topic="bench", metrics_port=port, batching={"max_batch": cameras, "max_wait_ms": 20},
    )
    daemon = Daemon(config, workdir / "bench-daemon.log")
    daemon.start()
    try:
        wait_for(lambda: len(inferred_per_camera(port)) == cameras, 60, "every camera to infer")
        latencies: list[tuple[float, float]] = []  # (received_at, seconds)
        stop = threading.Event()

        def collect():
            def until(records):
                for r in records[len(latencies):]:  # one latency per record, in order
                    latencies.append((r.received_at, r.received_at - parse_time(r.value["frame"]["captured_at"])))
                return stop.is_set()
            consume(broker.bootstrap, ["bench"], until, seconds + warmup + 120, fetch_wait_ms=200)

        consumer = threading.Thread(target=collect, daemon=True)
        consumer.start()
        time.sleep(warmup)
        pid = daemon.proc.pid
        helpers = [rtsp.proc.pid, broker.proc.pid, os.getpid()]
        helpers0 = sum(proc_cpu_seconds(h) for h in helpers)
        t0, cpu0, inf0 = time.monotonic(), proc_cpu_seconds(pid), inferred_per_camera(port)
        rss = []
        if profile:
            subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", "20", "-r", "25", "--native",
                              "--threads", "-f", "raw", "-o", str(workdir / "profile.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while time.monotonic() - t0 < seconds:
            time.sleep(1)
            rss.append(proc_rss_mib(pid))
        t1, cpu1, inf1 = time.monotonic(), proc_cpu_seconds(pid), inferred_per_camera(port)
        helpers_cpu = 100 * (sum(proc_cpu_seconds(h) for h in helpers) - helpers0) / (t1 - t0)
        stop.set()
        consumer.join(30)
        metrics_text = http_get(f"http://127.0.0.1:{port}/metrics")[1]
    finally:
        code = daemon.stop()
    elapsed = t1 - t0
    window_start = time.time() - (time.monotonic() - t0)
    in_window = [(at, lat) for at, lat in latencies if window_start <= at <= window_start + elapsed]
    per_window = []
    for k in range(int(elapsed // 10)):
        chunk = [lat for at, lat in in_window if window_start + 10 * k <= at < window_start + 10 * (k + 1)]
        per_window.append((percentile(chunk, 50), percentile(chunk, 99)))
    dropped = metric_values(metrics_text, "rtsp_pipeline_frames_dropped_total")
    sums = metric_values(metrics_text, "rtsp_pipeline_stage_seconds_sum")
    counts = metric_values(metrics_text, "rtsp_pipeline_stage_seconds_count")
    stages = {k.split('"')[1]: 1000 * sums[k] / counts[k] for k in sums if counts.get(k)}
    batches = metric_values(metrics_text, "rtsp_pipeline_batch_size_sum")[""] / max(
        1, metric_values(metrics_text, "rtsp_pipeline_batch_size_count")[""])
    return {
        "per_camera_fps": {cam: (inf1[cam] - inf0.get(cam, 0)) / elapsed for cam in inf1},
        "cpu_percent": 100 * (cpu1 - cpu0) / elapsed,
        "helpers_cpu_percent": helpers_cpu,
        "rss_mib": (min(rss), max(rss)),
        "latency": [lat for _, lat in in_window],
        "latency_windows": per_window,
        "dropped": dropped,
        "stages_ms": stages,
        "ack_p50_p99": tuple(histogram_quantile(metrics_text, "rtsp_pipeline_capture_to_ack_seconds", q)
                             for q in (0.5, 0.99)),
        "mean_batch": batches,
        "exit_code": code,
        "seconds": elapsed,
    }


def report(lines: list[str], record: Path | None) -> None:
    """Print a result section and, when asked, append it to a markdown file."""
    print("\n".join(lines))
    if record:
        with open(record, "a") as fh:
            fh.write("\n" + "\n".join(lines) + "\n")


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import onnxruntime

    return (f"{os.cpu_count()} vCPU ({cpu}), {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=10)
    parser.add_argument("--profile", action="store_true", help="py-spy the daemon for 20 s (.cache/bench)")
    parser.add_argument("--record", type=Path, help="append the result to this markdown file")
    args = parser.parse_args()
    workdir = REPO / ".cache" / "bench"
    workdir.mkdir(parents=True, exist_ok=True)

    clip = make_clip(workdir / "bench-1080p25.mp4", 1920, 1080, seconds=10)
    with RtspServer({f"cam{i}": clip for i in range(args.cameras)}) as rtsp, Broker() as broker:
        cores = os.cpu_count() or 1
        settings = [(cores, 1), (1, cores)]  # (threads per run, parallel runs)
        before = {k: ort_alone(*k, 15) for k in settings}
        result = run_daemon(rtsp, broker, args.cameras, args.seconds, args.warmup, workdir, args.profile)
        after = {k: ort_alone(*k, 15) for k in settings}
    alone = {k: (before[k] + after[k]) / 2 for k in settings}
    total = sum(result["per_camera_fps"].values())
    best_alone = max(alone.values())
    lat = result["latency"]
    lines = [
        f"### CPU pipeline vs ONNX Runtime alone ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"- Machine: {machine()}",
        f"- Command: `.venv/bin/python -m scripts.bench.bench_cpu --cameras {args.cameras} --seconds {args.seconds:g}`",
        f"- Streams: {args.cameras} x 1920x1080 25 fps H.264 (GOP 50, no B-frames) over RTSP/TCP from "
        "GStreamer's RTSP server; every frame offered to inference (no fps limit)",
        "- Model: engines/yolov8n.onnx, input 640x384 (rectangular letterbox); daemon with default "
        "settings (ONNX Runtime: parallel 1-thread runs, one per core)",
        "- ONNX Runtime alone runs in the same process setup, with the RTSP server and broker up but idle, "
        "15 s before and 15 s after the daemon phase; the mean is shown (before / after in brackets)",
        "",
        "| measure | value |",
        "| --- | --- |",
        *[f"| ONNX Runtime alone, 640x384, {runs} run(s) x {threads} thread(s) | {alone[(threads, runs)]:.1f} img/s "
          f"({before[(threads, runs)]:.1f} / {after[(threads, runs)]:.1f}) |" for threads, runs in settings],
        f"| daemon total inferred frames/s | {total:.1f} = {total / best_alone:.2f} x the best ORT-alone figure |",
        *[f"| daemon {cam} fps | {fps:.1f} |" for cam, fps in sorted(result["per_camera_fps"].items())],
        "| mean ms per batch: " + ", ".join(result["stages_ms"]) + " | " + ", ".join(
            f"{v:.1f}" for v in result["stages_ms"].values()) + f" (mean batch {result['mean_batch']:.2f}) |",
        f"| daemon CPU (2 cores = 200%) | {result['cpu_percent']:.0f}% |",
        f"| RTSP server + broker + benchmark consumer CPU | {result['helpers_cpu_percent']:.0f}% |",
        f"| daemon RSS min / max | {result['rss_mib'][0]:.0f} / {result['rss_mib'][1]:.0f} MiB |",
        f"| capture->Kafka consumer latency p50 / p99 | {percentile(lat, 50) * 1000:.0f} / "
        f"{percentile(lat, 99) * 1000:.0f} ms ({len(lat)} messages) |",
        f"| capture->Kafka ack (daemon histogram, whole run incl. warm-up) p50 / p99 | "
        f"{result['ack_p50_p99'][0] * 1000:.0f} / {result['ack_p50_p99'][1] * 1000:.0f} ms |",
        "| consumer p50 / p99 per 10 s window (ms) | " + ", ".join(
            f"{a * 1000:.0f}/{b * 1000:.0f}" for a, b in result["latency_windows"]) + " |",
        "| frames dropped before inference | " + (", ".join(
            f"{k} {v:.0f}" for k, v in sorted(result["dropped"].items())) or "none") + " |",
        f"| daemon exit code after SIGTERM | {result['exit_code']} |",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.record:
        with open(args.record, "a") as fh:
            fh.write("\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
