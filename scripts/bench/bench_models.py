"""Several models on one node: what a second model costs when the decode is shared.

    .venv/bin/python -m scripts.bench.bench_models [--cameras 4] [--fps 5] [--seconds 40] [--rounds 2] \\
        [--record docs/BENCHMARKS.md]

N RTSP cameras (one GStreamer server; looping 1080p25 H.264 scenes at 6 Mbit/s, a keyframe every
second, objects the models see), each inferred at `--fps`, a local broker, and four cases run one
after the other (in `--rounds` rounds, so drift shows):
- one: the shapes detector (FP32) on every camera;
- two: the same, and its INT8 version as a second model (`models:`) on the same cameras: one
  decode per camera, two lanes;
- two-daemons: the same two models as two daemons, each decoding every camera itself;
- cascade: the detector, and the colour classifier (engines/colours-cnn.onnx) on its discs and squares.
Over each window (after a warm-up): CPU % and peak RSS of the daemon(s), messages/s per camera and
model from Kafka (`--fps` = keeping up), frames dropped before inference, and the classifier's
time per batch. The machine must be otherwise idle.
"""
from __future__ import annotations

import argparse
import collections
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from scripts.bench.bench_cpu import machine, proc_cpu_seconds, proc_rss_mib, report
from scripts.bench.bench_many import clips
from scripts.lab.broker import Broker, consume
from scripts.lab.cameras import RtspServer
from scripts.lab.common import REPO, free_port, wait_for
from scripts.lab.daemons import Daemon, daemon_config, http_get, metric_values

FP32 = REPO / "engines" / "shapes-yolov8n.onnx"
INT8 = REPO / "engines" / "shapes-yolov8n.int8.onnx"
COLOURS = REPO / "engines" / "colours-cnn.onnx"
CASES = ("one", "two", "two-daemons", "cascade")


def configs(case: str, workdir: Path, broker: Broker, rtsp: RtspServer, cameras: int, fps: float,
            topic: str) -> list[tuple[Path, int]]:
    """(config, metrics port) of each daemon of a case."""
    cams = [(f"cam{i}", rtsp.url(f"cam{i}"), fps) for i in range(cameras)]
    main = {"path": FP32, "input_size": 320, "confidence": 0.35}
    out = []
    if case == "two-daemons":
        for n, model in enumerate((main, {"path": INT8, "confidence": 0.35})):
            port = free_port()
            out.append((daemon_config(workdir / f"{case}-{n}.yaml", model, broker.bootstrap, cams, topic=f"{topic}-{n}",
                                      status_topic=f"{topic}-status-{n}", metrics_port=port), port))
        return out
    extra = {"two": {"models": {"int8": {"path": str(INT8), "confidence": 0.35, "topic": f"{topic}-1"}}},
             "cascade": {"models": {"colour": {"path": str(COLOURS), "kind": "classify",
                                               "on": {"model": "default", "classes": ["disc", "square"]}}}},
             "one": {}}[case]
    if case == "two":
        cams = [(cam, url, rate, {"models": ["default", "int8"]}) for cam, url, rate in cams]
    port = free_port()
    return [(daemon_config(workdir / f"{case}.yaml", main, broker.bootstrap, cams, topic=f"{topic}-0",
                           status_topic=f"{topic}-status", metrics_port=port, **extra), port)]


def run_case(case: str, workdir: Path, broker: Broker, rtsp: RtspServer, args) -> dict:
    topic = f"bm-{case}-{uuid.uuid4().hex[:6]}"
    daemons = []
    for n, (config, port) in enumerate(configs(case, workdir, broker, rtsp, args.cameras, args.fps, topic)):
        daemon = Daemon(config, workdir / f"{case}-{n}.log")
        daemon.start()
        daemons.append((daemon, port))
    received: list = []
    stop = threading.Event()
    topics = [f"{topic}-0", f"{topic}-1"]

    def collect():
        def until(records):
            received[:] = records
            return stop.is_set()
        consume(broker.bootstrap, topics, until, args.seconds + args.warmup + 180, fetch_wait_ms=200)

    consumer = threading.Thread(target=collect, daemon=True)
    consumer.start()
    try:
        for daemon, port in daemons:
            wait_for(lambda: '"running"' in daemon.log_text(), 120, f"{case}: the daemon to run")
        time.sleep(args.warmup)
        pids = [d.proc.pid for d, _ in daemons]
        t0, cpu0 = time.time(), sum(proc_cpu_seconds(p) for p in pids)
        drops0 = [metric_values(http_get(f"http://127.0.0.1:{port}/metrics")[1], "rtsp_pipeline_frames_dropped_total")
                  for _, port in daemons]
        rss = []
        while time.time() - t0 < args.seconds:
            time.sleep(1)
            rss.append(sum(proc_rss_mib(p) for p in pids))
        t1, cpu1 = time.time(), sum(proc_cpu_seconds(p) for p in pids)
        texts = [http_get(f"http://127.0.0.1:{port}/metrics")[1] for _, port in daemons]
        stop.set()
        consumer.join(30)
    finally:
        codes = [daemon.stop() for daemon, _ in daemons]
    per = collections.Counter()
    for r in received:
        if t0 <= r.received_at <= t1:
            per[(r.key, r.value["model"]["name"], r.topic)] += 1
    span = t1 - t0
    dropped = collections.Counter()
    for before, text in zip(drops0, texts):
        for key, value in metric_values(text, "rtsp_pipeline_frames_dropped_total").items():
            dropped[key.split('reason="')[1].split('"')[0]] += value - before.get(key, 0)
    classify = [metric_values(t, "rtsp_pipeline_stage_seconds_sum").get('{stage="classify"}', 0) for t in texts]
    batches = [metric_values(t, "rtsp_pipeline_stage_seconds_count").get('{stage="classify"}', 0) for t in texts]
    return {"case": case, "cpu_percent": round(100 * (cpu1 - cpu0) / span, 1), "rss_mib": round(max(rss)),
            "messages_per_s": {f"{cam} {model}": round(n / span, 2) for (cam, model, _), n in sorted(per.items())},
            "dropped": {k: round(v) for k, v in dropped.items() if v >= 1},
            "classify_ms_per_batch": round(1000 * sum(classify) / sum(batches), 2) if sum(batches) else None,
            "exit_codes": codes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--fps", type=float, default=5)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--warmup", type=float, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--record", type=Path, help="append the result to this markdown file")
    args = parser.parse_args()
    workdir = REPO / ".cache" / "bench-models"
    workdir.mkdir(parents=True, exist_ok=True)
    scenes = clips(REPO / ".cache" / "bench-many")
    results = []
    with RtspServer({f"cam{i}": scenes[i % len(scenes)] for i in range(args.cameras)}) as rtsp, Broker() as broker:
        for _ in range(args.rounds):
            for case in args.cases.split(","):
                result = run_case(case, workdir, broker, rtsp, args)
                print(result, flush=True)
                results.append(result)
    lines = [f"### Several models on one node ({datetime.now(timezone.utc):%Y-%m-%d})", "",
             f"`.venv/bin/python -m scripts.bench.bench_models --cameras {args.cameras} --fps {args.fps:g} "
             f"--seconds {args.seconds:g} --rounds {args.rounds}`; {machine()}; {args.cameras} x 1080p25 "
             f"cameras (6 Mbit/s) inferred at {args.fps:g} fps each; daemons' own CPU (RTSP server and broker apart).", "",
             "| case | daemon CPU % | peak RSS MiB | messages/s per camera and model (min-max) | dropped | classify ms/batch |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        rates = list(r["messages_per_s"].values()) or [0]
        lines.append(f"| {r['case']} | {r['cpu_percent']} | {r['rss_mib']} | {min(rates)}-{max(rates)} "
                     f"({len(rates)} streams) | {r['dropped'] or 'none'} | {r['classify_ms_per_batch'] or ''} |")
    report(lines, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
