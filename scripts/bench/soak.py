"""Soak: the daemon on N cameras for a given time with faults injected in turn, sampling RSS,
threads, file descriptors and the spool depth; at the end every message is checked for loss.

    .venv/bin/python -m scripts.bench.soak --minutes 30 --cameras 4 --fault-every 60 --out soak.json

Faults, one every --fault-every seconds, in turn: a camera's RTSP server killed and restarted
5 s later on its port; a camera's stream stalled for 10 s; the Kafka network path cut for 20 s.
Pass criteria (exit 0): no message lost (per camera, within each run_id, frame.seq has no gap
after deduplication) and flat memory (RSS at the end within max(8 MiB, 5%) of the median RSS
of the second fifth of the run, after warm-up).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

from scripts.lab.broker import Broker, consume
from scripts.lab.cameras import RtspServer
from scripts.lab.clips import make_clip
from scripts.lab.common import REPO, free_port
from scripts.lab.daemons import Daemon, daemon_config, http_get, metric_values
from scripts.lab.network import NetworkCut

MODEL = REPO / "engines" / "shapes-yolov8n.onnx"


def sample(pid: int, metrics_port: int) -> dict:
    """One reading of the daemon's process and spool."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    text = http_get(f"http://127.0.0.1:{metrics_port}/metrics")[1]
    return {
        "t": time.time(), "rss_mib": rss_kb / 1024, "threads": len(list(Path(f"/proc/{pid}/task").iterdir())),
        "fds": len(list(Path(f"/proc/{pid}/fd").iterdir())),
        "spooled": metric_values(text, "rtsp_pipeline_publish_queue_depth").get("", 0),
        "inferred": sum(metric_values(text, "rtsp_pipeline_frames_inferred_total").values()),
    }


def inject(fault: str, servers: list[RtspServer], network: NetworkCut, log: list) -> None:
    """Apply one fault and clear it again (blocking for its duration)."""
    started = time.time()
    if fault == "camera_restart":
        servers[0].stop()
        time.sleep(5)
        servers[0].start()
    elif fault == "camera_stall":
        servers[1 % len(servers)].pause()
        time.sleep(10)
        servers[1 % len(servers)].resume()
    else:
        network.cut()
        time.sleep(20)
        network.restore()
    log.append({"fault": fault, "at": started, "seconds": round(time.time() - started, 1)})


def lost_messages(records, topic: str) -> dict:
    """camera -> number of seq gaps (after deduplication on run_id and seq)."""
    seqs: dict[tuple[str, str], set[int]] = defaultdict(set)
    for r in records:
        if r.topic == topic:
            seqs[(r.key, r.value["run_id"])].add(r.value["frame"]["seq"])
    lost: dict[str, int] = defaultdict(int)
    for (cam, _), got in seqs.items():
        lost[cam] += (max(got) + 1) - len(got)  # every seq from 0 to the last must be there
    return dict(lost)


def run(minutes: float, cameras: int, fault_every: float, work: Path) -> dict:
    clip = make_clip(work / "clip.mp4", 1280, 720, seconds=8)
    servers = [RtspServer({"cam": clip}) for _ in range(cameras)]
    for server in servers:
        server.start()
    kafka_port, metrics_port, topic = free_port(), free_port(), f"soak-{uuid.uuid4().hex[:8]}"
    broker = Broker(advertised_port=kafka_port)
    broker.start()
    network = NetworkCut(broker.port, kafka_port)
    config = daemon_config(work / "soak.yaml", {"path": MODEL, "input_size": 320}, broker.bootstrap,
                           [(f"cam{i}", s.url("cam"), 5) for i, s in enumerate(servers)], topic=topic,
                           status_topic=f"{topic}-status", metrics_port=metrics_port,
                           source={"backoff_initial_s": 0.5, "backoff_max_s": 4})
    daemon = Daemon(config, work / "soak.log")
    daemon.start()
    samples, faults = [], []
    kinds = ["camera_restart", "camera_stall", "kafka_cut"]
    end = time.monotonic() + minutes * 60
    next_fault = time.monotonic() + fault_every
    try:
        time.sleep(5)
        while time.monotonic() < end:
            samples.append(sample(daemon.proc.pid, metrics_port))
            if time.monotonic() >= next_fault:
                kind = kinds[len(faults) % len(kinds)]
                threading.Thread(target=inject, args=(kind, servers, network, faults), daemon=True).start()
                next_fault += fault_every
            time.sleep(10)
        time.sleep(25)  # let the last fault clear
        deadline = time.monotonic() + 120
        while sample(daemon.proc.pid, metrics_port)["spooled"] and time.monotonic() < deadline:
            time.sleep(1)
        samples.append(sample(daemon.proc.pid, metrics_port))
        code = daemon.stop()
        expected = samples[-1]["inferred"]
        records = consume(broker.bootstrap, [topic],  # every inferred frame, duplicates counted once
                          lambda rs: len({(r.key, r.value["frame"]["seq"]) for r in rs}) >= expected, 300)
    finally:
        daemon.stop()
        network.close()
        broker.stop()
        for server in servers:
            server.stop()
    return report(samples, faults, lost_messages(records, topic), code, minutes, cameras)


def report(samples: list[dict], faults: list[dict], lost: dict, exit_code, minutes: float, cameras: int) -> dict:
    """Figures and the verdict."""
    fifth = max(1, len(samples) // 5)
    baseline = statistics.median(s["rss_mib"] for s in samples[fifth:2 * fifth] or samples)
    growth = samples[-1]["rss_mib"] - baseline
    flat = growth <= max(8.0, 0.05 * baseline)
    return {
        "minutes": minutes, "cameras": cameras, "faults": faults, "exit_code": exit_code,
        "rss_mib": {"baseline": round(baseline, 1), "end": round(samples[-1]["rss_mib"], 1),
                    "max": round(max(s["rss_mib"] for s in samples), 1), "growth": round(growth, 1)},
        "threads": [min(s["threads"] for s in samples), max(s["threads"] for s in samples)],
        "fds": [min(s["fds"] for s in samples), max(s["fds"] for s in samples)],
        "spooled_max": max(s["spooled"] for s in samples), "inferred": samples[-1]["inferred"],
        "lost": lost, "passed": flat and not any(lost.values()) and exit_code == 0,
        "samples": samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--fault-every", type=float, default=60, help="seconds between faults")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        result = run(args.minutes, args.cameras, args.fault_every, Path(tmp))
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
