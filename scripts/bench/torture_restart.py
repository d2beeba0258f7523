"""Crash-restart torture: the daemon killed with SIGKILL at a random moment and started again on
the same state folder, many times, with the broker reachable and cut off in turn.

    .venv/bin/python -m scripts.bench.torture_restart --cycles 20 --out torture.json

Each cycle starts the daemon, waits until it streams (frames inferred by every camera), lets it
run a random 1-6 s (with the Kafka network path cut in every other cycle), kills it with SIGKILL,
and reads what the spool folder holds on disk at that moment: the messages the spool had taken
from the pipeline and not yet delivered. At the end the broker is reachable, the daemon runs once
more until its spool is empty, and stops with SIGTERM. Pass (exit 0) when:
- every start came up and streamed;
- every message the spool held at any kill is in Kafka (nothing it had taken is missing);
- within every run_id, each camera's seqs in Kafka are gap-free from 0 (what a run inferred and
  spooled before its kill arrived whole), and a message seen twice is the same message (only
  re-sends of one (run_id, seq), never two messages under one seq).
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import struct
import sys
import tempfile
import time
import uuid
import zlib
from collections import defaultdict
from pathlib import Path

from scripts.lab.broker import Broker, consume
from scripts.lab.cameras import RtspServer
from scripts.lab.clips import make_clip
from scripts.lab.common import REPO, free_port, wait_for
from scripts.lab.daemons import Daemon, daemon_config, http_get, metric_values
from scripts.lab.network import NetworkCut

MODEL = REPO / "engines" / "shapes-yolov8n.onnx"
_HEAD, _KEYS = struct.Struct(">II"), struct.Struct(">HH")


def held_on_disk(folder: Path) -> set[tuple[str, str, str]]:
    """(topic, key, value) of every whole record at or above the saved commit mark, read from the
    files as they are (nothing is changed: the next start does that)."""
    try:
        mark = int(json.loads((folder / "committed").read_text())["next"])
    except (OSError, ValueError, KeyError):
        mark = 0
    out = set()
    for path in sorted(folder.glob("*.seg")):
        data, at, number = path.read_bytes(), 0, int(path.name[:16])
        while at + _HEAD.size <= len(data):
            length, crc = _HEAD.unpack_from(data, at)
            body = data[at + _HEAD.size:at + _HEAD.size + length]
            if len(body) != length or zlib.crc32(body) != crc:
                break
            if number >= mark:
                tlen, klen = _KEYS.unpack_from(body)
                topic = body[_KEYS.size:_KEYS.size + tlen].decode()
                key = body[_KEYS.size + tlen:_KEYS.size + tlen + klen].decode()
                out.add((topic, key, body[_KEYS.size + tlen + klen:].decode()))
            at += _HEAD.size + length
            number += 1
    return out


def inferred(port: int) -> dict[str, float]:
    values = metric_values(http_get(f"http://127.0.0.1:{port}/metrics")[1], "rtsp_pipeline_frames_inferred_total")
    return {key.split('"')[1]: v for key, v in values.items()}


def run(cycles: int = 20, cameras: int = 2, work: Path | None = None, seed: int | None = None) -> dict:
    """The torture; returns its figures and verdicts."""
    rng = random.Random(seed)
    work = Path(work or tempfile.mkdtemp(prefix="torture-"))
    clips = {f"c{i}": make_clip(work / f"c{i}.mp4", 640, 360) for i in range(cameras)}
    topic, port, kafka_port = f"torture-{uuid.uuid4().hex[:8]}", free_port(), free_port()
    result: dict = {"cycles": [], "seed": seed}
    with RtspServer(clips) as server, Broker(advertised_port=kafka_port) as broker:
        network = NetworkCut(broker.port, kafka_port)
        folder = work / "spool"
        config = daemon_config(work / "torture.yaml", MODEL, f"127.0.0.1:{network.port}",
                               [(name, server.url(name), 5) for name in clips], topic=topic,
                               status_topic=f"{topic}-status", metrics_port=port,
                               kafka={"spool": {"folder": str(folder)}, "stop_timeout_s": 5})
        held: set[tuple[str, str, str]] = set()
        try:
            for cycle in range(cycles):
                cut = cycle % 2 == 1
                daemon = Daemon(config, work / f"run{cycle}.log")
                started = time.monotonic()
                daemon.start()
                try:
                    came_up = _streams(port, clips, daemon)
                    up_s = time.monotonic() - started
                    if cut:
                        network.cut()
                    time.sleep(rng.uniform(1, 6))
                    daemon.proc.send_signal(signal.SIGKILL)
                    daemon.proc.wait(10)
                finally:
                    daemon.stop()
                    network.restore()
                on_disk = held_on_disk(folder)
                held |= on_disk
                result["cycles"].append({"cycle": cycle, "broker": "cut" if cut else "up", "came_up": came_up,
                                         "up_s": round(up_s, 1), "held_at_kill": len(on_disk)})
            final = Daemon(config, work / "final.log")
            final.start()
            try:
                result["final_came_up"] = _streams(port, clips, final)
                wait_for(lambda: metric_values(http_get(f"http://127.0.0.1:{port}/metrics")[1],
                                               "rtsp_pipeline_publish_queue_depth").get("", 1) == 0, 120, "the spool to drain")
                final.proc.send_signal(signal.SIGTERM)
                result["final_exit"] = final.proc.wait(30)
            finally:
                final.stop()
            records = consume(broker.bootstrap, [topic, f"{topic}-status"], lambda rs: False, 15)
        finally:
            network.close()
    return _verdict(result, records, held, topic)


def _streams(port: int, clips: dict, daemon: Daemon, timeout: float = 60) -> bool:
    try:
        wait_for(lambda: daemon.proc.poll() is not None or all(inferred(port).get(c, 0) > 0 for c in clips),
                 timeout, "every camera to stream")
    except TimeoutError:
        return False
    return daemon.proc.poll() is None


def _verdict(result: dict, records: list, held: set, topic: str) -> dict:
    seen: dict[tuple, str] = {}
    conflicts, duplicates = 0, 0
    by_run: dict[tuple[str, str], set[int]] = defaultdict(set)
    for r in records:
        text = json.dumps(r.value, separators=(",", ":"))
        if r.topic == topic:
            key = (r.key, r.value["run_id"], r.value["frame"]["seq"])
            if key in seen:
                duplicates += 1
                conflicts += seen[key] != text
            seen[key] = text
            by_run[key[:2]].add(key[2])
    got = {(r.topic, r.key, json.dumps(r.value)) for r in records}
    missing = [m for m in held if (m[0], m[1], json.dumps(json.loads(m[2]))) not in got]
    gaps = {f"{cam} {run}": sorted(set(range(max(s) + 1)) - s)[:10] for (cam, run), s in by_run.items()
            if s != set(range(max(s) + 1))}
    result.update({
        "starts": len(result["cycles"]) + 1,
        "starts_that_came_up": sum(c["came_up"] for c in result["cycles"]) + bool(result.get("final_came_up")),
        "runs_in_kafka": len({run for _, run in by_run}),
        "messages": len(seen), "duplicates": duplicates, "conflicting_duplicates": conflicts,
        "held_at_kills": len(held), "held_missing_in_kafka": len(missing), "runs_with_gaps": gaps,
    })
    result["passed"] = (result["starts_that_came_up"] == result["starts"] and not missing and not gaps
                        and conflicts == 0 and result.get("final_exit") == 0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.cycles, args.cameras, seed=args.seed)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
