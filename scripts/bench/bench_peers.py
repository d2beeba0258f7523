"""The CPU benchmark against what users would otherwise run, one command, same streams and model:

    .venv/bin/python -m scripts.bench.bench_peers [--cameras 2] [--width 1920 --height 1080 --fps 25] \\
        [--seconds 60] [--warmup 20] [--systems daemon,ultralytics,opencv,daemon-int8] \\
        [--daemon-set model.onnxruntime.parallel_runs=3 ...] [--broker-nice 19] [--record docs/BENCHMARKS.md]

It renders N generated scenes with ground truth (scripts/lab/scenes.py, seeds 9401+, used nowhere
else), serves them as looping H.264 RTSP cameras (GStreamer), starts a local broker, then runs one
system after another, each on a freshly started RTSP server (so each is the first client and its
pts start at 0), for a warm-up and a measured window:
  (a) daemon       our daemon (real CLI), every frame offered, FP32 model;
  (b) ultralytics  Ultralytics multi-stream predict (`.streams` source) on the same ONNX model,
                   results published to the same broker (scripts/bench/peers/peer_ultralytics.py);
  (c) opencv       one thread per camera: OpenCV VideoCapture + ONNX Runtime + Kafka
                   (scripts/bench/peers/peer_opencv.py);
  daemon-int8      our daemon with the INT8 model (engines/shapes-yolov8n.int8.onnx), for the record.
Peers run in their own environment (scripts/bench/peers/make_peer_env.sh builds it; the product's
dependencies are untouched). ONNX Runtime alone is measured at the daemon's input shape with the
daemon's session settings.

Measured in the window, the same way for every system, from what reaches Kafka: processed
frames/s (messages per second; total and per camera), frames dropped (offered minus processed),
CPU % and peak RSS of the system's process (/proc), capture->Kafka latency (consumer receive time
minus the message's captured_at) p50/p99 and its drift (p50 of the last third minus the first),
and precision/recall at IoU 0.5 against ground truth (each message matched to the truth frame
at its pts, with one per-camera frame offset searched in +-10 for every system alike).
For our daemon it also prints the mean of each stage from its /metrics (first -> last third), and
for every system the local broker's CPU: the in-memory broker's cost grows with what it holds and
shares the cores, which `--broker-nice 19` keeps out of the system's way in long runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from scripts.bench.bench_cpu import machine, parse_time, percentile, proc_cpu_seconds, proc_rss_mib, report
from scripts.lab.accuracy import best_offset, evaluate
from scripts.lab.broker import Broker, consume
from scripts.lab.cameras import RtspServer
from scripts.lab.common import REPO, free_port
from scripts.lab.daemons import Daemon, daemon_config, http_get, metric_values
from scripts.lab.scenes import Scene, Truth, truth_path

SEEDS = 9401
FP32 = REPO / "engines" / "shapes-yolov8n.onnx"
INT8 = REPO / "engines" / "shapes-yolov8n.int8.onnx"
LABELS = REPO / "engines" / "shapes-yolov8n.labels.txt"
SYSTEMS = ("daemon", "ultralytics", "opencv", "daemon-int8")


# ---------------------------------------------------------------------- the systems
class System:
    """A system under test as a process: started on the cameras, READY when it has begun."""

    def __init__(self, name: str, args, urls: dict[str, str], topic: str, bootstrap: str, workdir: Path) -> None:
        self.name, self.args, self.urls, self.topic = name, args, urls, topic
        self.bootstrap, self.workdir = bootstrap, workdir
        self.proc: subprocess.Popen | None = None
        self._daemon: Daemon | None = None
        self.metrics_port: int | None = None  # our daemon's /metrics

    def start(self, run_seconds: float) -> None:
        if self.name.startswith("daemon"):
            sections = daemon_sections(self.args)
            model = {"path": INT8 if self.name == "daemon-int8" else FP32, "input_size": self.args.input_size,
                     "confidence": self.args.confidence, "labels": str(LABELS), **sections.pop("model", {})}
            config = daemon_config(
                self.workdir / f"{self.topic}.yaml", model,
                self.bootstrap, [(cam, url, None) for cam, url in self.urls.items()], topic=self.topic,
                status_topic=f"{self.topic}-status", metrics_port=(port := free_port()), **sections,
            )
            self.metrics_port = port
            self._daemon = Daemon(config, self.workdir / f"{self.topic}.log")
            self._daemon.start()
            self.proc = self._daemon.proc
            return
        cmd = [str(self.args.peer_env / "bin" / "python"), "-m", f"scripts.bench.peers.peer_{self.name}", "--model", str(FP32),
               "--input-size", str(self.args.input_size), "--confidence", str(self.args.confidence),
               "--bootstrap", self.bootstrap, "--topic", self.topic, "--seconds", str(run_seconds),
               *[f"--camera={cam}={url}" for cam, url in self.urls.items()]]
        self._log = open(self.workdir / f"{self.topic}.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)

    def stop(self) -> int | None:
        if self._daemon is not None:
            return self._daemon.stop()
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)
        finally:
            self._log.close()


def run_system(name: str, args, clips: dict[str, Path], truths: dict[str, Truth], broker: Broker,
               workdir: Path) -> dict:
    """Start `name` on the cameras, measure the window after the warm-up, stop it."""
    topic = f"peers-{name}-{uuid.uuid4().hex[:6]}"
    with RtspServer(clips) as rtsp:
        system = System(name, args, {cam: rtsp.url(cam) for cam in clips}, topic, broker.bootstrap, workdir)
        records: list = []
        stop = threading.Event()
        consumer = threading.Thread(target=lambda: records.extend(consume(
            broker.bootstrap, [topic], lambda _: stop.is_set(), args.warmup + args.seconds + 180, 100)), daemon=True)
        consumer.start()
        system.start(args.warmup + args.seconds + 30)
        try:
            time.sleep(args.warmup)
            pid = system.proc.pid
            t0, wall0, cpu0 = time.monotonic(), time.time(), proc_cpu_seconds(pid)
            rss, samples, broker_cpu = [], [], []
            cpu1 = cpu0
            while time.monotonic() - t0 < args.seconds and system.proc.poll() is None:
                time.sleep(1)
                try:
                    rss.append(proc_rss_mib(pid))
                    cpu1 = proc_cpu_seconds(pid)
                except FileNotFoundError:  # it ended: measured up to its last sample
                    break
                if len(broker_cpu) <= (time.monotonic() - t0) // SAMPLE_S:
                    broker_cpu.append((time.monotonic(), proc_cpu_seconds(broker.proc.pid)))
                    if system.metrics_port:
                        samples.append(daemon_sample(system.metrics_port))
            elapsed = time.monotonic() - t0
            time.sleep(3)  # let what was processed in the window reach the consumer
        finally:
            code = system.stop()
            stop.set()
            consumer.join(60)
    window = [r for r in records if wall0 <= r.received_at <= wall0 + elapsed]
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
        with open(args.dump / f"{name}.jsonl", "w") as out:
            out.writelines(json.dumps(r.value) + "\n" for r in window)
    result = summarise(name, window, truths, elapsed, 100 * (cpu1 - cpu0) / elapsed, max(rss, default=0),
                       args.fps, code, len(clips))
    result["inside"] = where_latency_grows(samples)
    result["broker_cpu"] = first_and_last_third(broker_cpu)
    return result


def thirds(samples: list) -> tuple[tuple, tuple]:
    """The (start, end) samples of the first and of the last third of a window."""
    third = len(samples) // 3
    return (samples[0], samples[third]), (samples[-1 - third], samples[-1])


def first_and_last_third(samples: list[tuple[float, float]]) -> tuple[float, float] | None:
    """CPU % of a helper over the first and the last third of the window, from (time, CPU seconds)
    samples: the in-memory broker's cost grows with what it holds, on the same cores."""
    if len(samples) < 4:
        return None
    return tuple(100 * (b[1] - a[1]) / (b[0] - a[0]) for a, b in thirds(samples))


def nice_process(pid: int, niceness: int) -> None:
    """Renice every thread of a process (Linux niceness is per thread; later threads inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.setpriority(os.PRIO_PROCESS, int(task.name), niceness)


SAMPLE_S = 10  # how often the daemon's /metrics (and the broker's CPU) is read during the window


def _stage(stage: str) -> tuple[str, str]:
    return (f'rtsp_pipeline_stage_seconds_sum{{stage="{stage}"}}', f'rtsp_pipeline_stage_seconds_count{{stage="{stage}"}}')


INSIDE = {  # what the daemon's own metrics say, as means per interval: name -> (sum, count)
    "capture->ack": ("rtsp_pipeline_capture_to_ack_seconds_sum", "rtsp_pipeline_capture_to_ack_seconds_count"),
    "decode": _stage("decode"),
    "frame age at inference": ("rtsp_pipeline_frame_age_seconds_sum", "rtsp_pipeline_frame_age_seconds_count"),
    "preprocess": _stage("preprocess"),
    "infer": _stage("infer"),
    "postprocess": _stage("postprocess"),
    "track (per frame)": _stage("track"),
    "publish": _stage("publish"),
}


def daemon_sample(port: int) -> dict[str, float]:
    """The cumulative sums and counts of INSIDE and the cameras' largest source lag, now."""
    text = http_get(f"http://127.0.0.1:{port}/metrics")[1]

    def value(key: str) -> float:  # 'name' or 'name{labels}'
        name = key.partition("{")[0]
        return metric_values(text, name).get(key[len(name):], 0.0)
    sample = {key: value(key) for pair in INSIDE.values() for key in pair}
    sample["lag"] = max(metric_values(text, "rtsp_pipeline_source_lag_seconds").values(), default=0.0)
    return sample


def where_latency_grows(samples: list[dict[str, float]]) -> str:
    """Mean of each INSIDE quantity over the first and the last third of the window (from the
    daemon's /metrics), and the largest source lag seen then: which stage a drift comes from."""
    if len(samples) < 4:
        return ""
    third = len(samples) // 3

    def mean(a, b, pair):
        count = b[pair[1]] - a[pair[1]]
        return (b[pair[0]] - a[pair[0]]) / count if count else float("nan")
    first, last = thirds(samples)
    parts = [f"{name} {1000 * mean(*first, pair):.1f} -> {1000 * mean(*last, pair):.1f} ms" for name, pair in INSIDE.items()]
    lags = [s["lag"] for s in samples]
    parts.append(f"largest camera lag {1000 * max(lags[:third + 1]):.0f} -> {1000 * max(lags[-1 - third:]):.0f} ms")
    return "; ".join(parts)


def summarise(name, window, truths, seconds, cpu, rss, fps, code, cameras) -> dict:
    per_cam = defaultdict(int)
    for r in window:
        per_cam[r.key] += 1
    latencies = [(r.received_at, r.received_at - parse_time(r.value["frame"]["captured_at"])) for r in window]
    latencies.sort()
    third = max(1, len(latencies) // 3)
    lat = [v for _, v in latencies]
    messages = [r.value for r in window]
    offsets = {cam: best_offset([m for m in messages if m["camera_id"] == cam], truth)
               for cam, truth in truths.items()}
    scored = defaultdict(lambda: None)
    for cam, truth in truths.items():
        own = [m for m in messages if m["camera_id"] == cam]
        scored[cam] = evaluate(own, {cam: truth}, offsets[cam]).get(cam)
    tp = sum(s.tp for s in scored.values() if s)
    fp = sum(s.fp for s in scored.values() if s)
    fn = sum(s.fn for s in scored.values() if s)
    total = sum(per_cam.values()) / seconds
    return {
        "name": name, "fps": total, "per_camera": {c: n / seconds for c, n in sorted(per_cam.items())},
        "dropped": max(0.0, 1 - total / (fps * cameras)), "cpu": cpu, "rss": rss,
        "p50": percentile(lat, 50), "p99": percentile(lat, 99),
        "drift": percentile(lat[-third:], 50) - percentile(lat[:third], 50),
        "precision": tp / max(1, tp + fp), "recall": tp / max(1, tp + fn), "offsets": offsets,
        "messages": len(window), "exit": code,
    }


def ort_alone(args, width: int, height: int, seconds: float = 15) -> float:
    """Images/s of the daemon's engine alone (same session settings, as many concurrent runs as
    the daemon makes) on its input shape for one frame, nothing else running."""
    from pipeline.config import ModelConfig
    from pipeline.s4_infer.loader import load_engine

    engine = load_engine(ModelConfig(path=FP32, input_size=args.input_size))
    w, h = engine.info.input_spec.rect_for(width, height)
    x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    counts = [0] * engine.concurrency
    end = time.monotonic() + 3 + seconds

    def loop(i: int) -> None:
        while time.monotonic() < end - seconds:  # warm-up
            engine.infer(x)
        while time.monotonic() < end:
            engine.infer(x)
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(engine.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.close()
    return sum(counts) / seconds


# ---------------------------------------------------------------------- report
def table(results: list[dict], alone: float, shape: str) -> list[str]:
    base = results[0]
    lines = ["| system | frames/s total (x daemon) | per camera | dropped | CPU (200% = 2 cores) | RSS peak | "
             "capture->Kafka p50 / p99 | p50 drift | precision / recall | messages |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        per_cam = " / ".join(f"{v:.1f}" for v in r["per_camera"].values()) or "-"
        lines.append(
            f"| {r['name']} | {r['fps']:.1f} (x{r['fps'] / base['fps']:.2f}) | {per_cam} | {100 * r['dropped']:.0f}% | "
            f"{r['cpu']:.0f}% | {r['rss']:.0f} MiB | {1000 * r['p50']:.0f} / {1000 * r['p99']:.0f} ms | "
            f"{1000 * r['drift']:+.0f} ms | {r['precision']:.3f} / {r['recall']:.3f} | {r['messages']} |")
    lines.append(f"| ONNX Runtime alone ({shape}, daemon's session settings) | {alone:.1f} img/s "
                 f"(daemon = x{base['fps'] / alone:.2f}) | | | | | | | | |")
    return lines


def versions(peer_env: Path) -> str:
    if not (peer_env / "bin" / "python").exists():  # only our daemon is measured
        return f"not installed ({peer_env})"
    code = ("import importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}' for p in "
            "('ultralytics', 'torch', 'opencv-python-headless', 'onnxruntime')))")
    out = subprocess.run([str(peer_env / "bin" / "python"), "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()[-200:]


def daemon_sections(args) -> dict:
    """Config sections for our daemon: deblocking, then each --daemon-set KEY=VALUE (dotted key,
    YAML value; e.g. model.onnxruntime.parallel_runs=3) merged in."""
    import yaml

    sections: dict = {"source": {"deblock": not args.no_deblock}}
    for item in args.daemon_set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--daemon-set {item!r}: expected KEY=VALUE, e.g. batching.max_wait_ms=10")
        *parents, leaf = key.split(".")
        node = sections
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return sections


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=20)
    parser.add_argument("--input-size", type=int, default=320)
    parser.add_argument("--confidence", type=float, default=0.35)
    parser.add_argument("--bitrate", default="6M", help="H.264 bitrate cap, as a camera's (0: CRF 23, ~20 Mbit/s)")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--no-deblock", action="store_true", help="our daemon skips H.264 deblocking (source.deblock)")
    parser.add_argument("--daemon-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of our daemon's config (dotted key), e.g. model.onnxruntime.parallel_runs=3")
    parser.add_argument("--broker-nice", type=int, default=0,
                        help="niceness of the local broker (19: it takes only CPU the system under test leaves, "
                             "as a broker on another machine would)")
    parser.add_argument("--peer-env", type=Path, default=REPO / ".venv-peers")
    parser.add_argument("--record", type=Path, help="append the results to this markdown file")
    parser.add_argument("--dump", type=Path, help="write each system's measured messages to DIR/<system>.jsonl")
    args = parser.parse_args()
    systems = args.systems.split(",")
    if any(s in ("ultralytics", "opencv") for s in systems):
        subprocess.run(["bash", str(REPO / "scripts" / "bench" / "peers" / "make_peer_env.sh"), str(args.peer_env)], check=True)
    workdir = REPO / ".cache" / "peers"
    workdir.mkdir(parents=True, exist_ok=True)
    clips = {}
    for i in range(args.cameras):
        clip = workdir / f"scene-{SEEDS + i}-{args.width}x{args.height}-{args.fps}-{args.bitrate}-g2.mp4"
        if not clip.exists() or not truth_path(clip).exists():
            Scene(SEEDS + i, args.width, args.height, fps=args.fps, frames=10 * args.fps).write(
                clip, bitrate=None if args.bitrate == "0" else args.bitrate)
        clips[f"cam{i}"] = clip
    truths = {cam: Truth.load(truth_path(clip)) for cam, clip in clips.items()}
    with Broker() as broker:
        if args.broker_nice:
            nice_process(broker.proc.pid, args.broker_nice)
        alone = ort_alone(args, args.width, args.height)
        results = [run_system(name, args, clips, truths, broker, workdir) for name in systems]
    from pipeline.s4_infer.engine import input_spec_from_shape

    w, h = input_spec_from_shape(("b", 3, "h", "w"), args.input_size).rect_for(args.width, args.height)
    lines = [
        f"### CPU path against its peers ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"- Machine: {machine()}; peers: {versions(args.peer_env)}",
        f"- Command: `.venv/bin/python -m scripts.bench.bench_peers --cameras {args.cameras} --width {args.width} "
        f"--height {args.height} --fps {args.fps} --bitrate {args.bitrate} --seconds {args.seconds:g} --warmup {args.warmup:g} "
        f"--systems {args.systems}{' --no-deblock' if args.no_deblock else ''}"
        + "".join(f" --daemon-set {item}" for item in args.daemon_set)
        + (f" --broker-nice {args.broker_nice}" if args.broker_nice else "") + "`",
        f"- Streams: {args.cameras} x {args.width}x{args.height} {args.fps} fps generated scenes (seeds "
        f"{SEEDS}+) as H.264 ({'CRF 23' if args.bitrate == '0' else args.bitrate + 'bit/s'}, GOP 50, no B-frames) "
        f"over RTSP/TCP; every frame offered; model engines/shapes-yolov8n.onnx (FP32 "
        f"unless named) at {args.input_size} px, confidence {args.confidence}",
        "",
        *table(results, alone, f"1x3x{h}x{w}"),
        "",
        "Frame offsets found per camera (pts mapping; 0 = exact): " + "; ".join(
            f"{r['name']} " + ",".join(str(o) for o in r["offsets"].values()) for r in results)
        + ". Exit codes: " + ", ".join(f"{r['name']} {r['exit']}" for r in results) + ".",
        *[f"\nInside {r['name']} (its /metrics, mean over the first -> the last third of the window): {r['inside']}."
          for r in results if r.get("inside")],
        "",
        "The local broker's CPU (Tansu, in memory; 200% = 2 cores), first -> last third of each window"
        + (f", at niceness {args.broker_nice}" if args.broker_nice else "") + ": " + "; ".join(
            f"{r['name']} {r['broker_cpu'][0]:.0f}% -> {r['broker_cpu'][1]:.0f}%" for r in results if r.get("broker_cpu"))
        + ".",
    ]
    report(lines, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
