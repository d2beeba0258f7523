"""Run the daemon on three demo cameras served locally, with a local broker, and print detections.

    bash scripts/demo.sh [--seconds N] [--restart-after S]     (or .venv/bin/python -m scripts.demo ...)

Starts GStreamer's RTSP server with three generated scenes (scripts/lab/scenes.py: discs, squares,
triangles and crosses moving over noisy backgrounds; 1080p, 720p and 4:3), a Tansu Kafka-protocol
broker, and `rtsp-pipeline run --config configs/demo.yaml` with the shapes detector; then reads the
detections and camera-status topics and prints a line per message. Ctrl-C (or --seconds) stops
everything. --restart-after S stops the daemon with SIGTERM after S seconds and starts it again
on the same spool folder, as an operator restarting it would; the summary then says whether every
camera's messages of each run arrived whole (seq from 0, no gap).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time

from scripts.lab.broker import Broker, consume
from scripts.lab.cameras import RtspServer
from scripts.lab.common import REPO, free_port
from scripts.lab.daemons import Daemon
from scripts.lab.scenes import GENERATOR_VERSION, Scene

CLIPS = {"lobby": (42, 1920, 1080), "yard": (43, 1280, 720), "dock": (44, 1024, 768)}  # seed, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until Ctrl-C)")
    parser.add_argument("--restart-after", type=float, default=0,
                        help="restart the daemon once after this many seconds (SIGTERM, then start again)")
    args = parser.parse_args()
    work = REPO / "demo"
    clips = {}
    for name, (seed, w, h) in CLIPS.items():
        clip = work / f"{name}-{seed}-g{GENERATOR_VERSION}-fixed-gop.mp4"
        if not clip.exists():
            print(f"rendering demo scene {name} ({w}x{h}) ...", flush=True)
            Scene(seed, w, h, frames=250).write(clip)
        clips[name] = clip
    shutil.rmtree(work / "spool", ignore_errors=True)  # messages for an earlier demo's broker
    metrics_port = free_port()
    with RtspServer(clips) as rtsp, Broker() as broker:
        env = {"DEMO_RTSP": f"127.0.0.1:{rtsp.port}", "DEMO_KAFKA": broker.bootstrap,
               "DEMO_METRICS_PORT": str(metrics_port), "DEMO_CAMERA_PASSWORD": "demo-secret"}
        daemon = Daemon(REPO / "configs" / "demo.yaml", work / "daemon.log", env)
        daemon.start()
        print(f"daemon started (log: {daemon.log_path}); metrics: http://127.0.0.1:{metrics_port}/metrics")
        print(f"consuming 'detections' and 'camera-status' from {broker.bootstrap} ...\n")
        started = time.monotonic()
        deadline = started + args.seconds if args.seconds else float("inf")
        restart_at = started + args.restart_after if args.restart_after else float("inf")
        printed, codes = 0, []

        def show_new(records) -> bool:
            nonlocal printed, daemon, restart_at
            for record in records[printed:]:
                print(describe(record.value), flush=True)
            printed = len(records)
            if time.monotonic() >= restart_at:
                restart_at = float("inf")
                print("\n[demo] restarting the daemon: SIGTERM, then the same command on the same spool folder\n",
                      flush=True)
                codes.append(daemon.stop())
                daemon = Daemon(REPO / "configs" / "demo.yaml", work / "daemon-2.log", env)
                daemon.start()
            return time.monotonic() >= deadline or daemon.proc.poll() is not None

        records = []
        try:
            records = consume(broker.bootstrap, ["detections", "camera-status"], show_new,
                              timeout=args.seconds or 1e9)
        except KeyboardInterrupt:
            pass
        codes.append(daemon.stop())
        runs = runs_whole(records)
        print(f"\ndaemon exited with {', then '.join(map(str, codes))}; {printed} messages seen from {len(runs)} "
              f"run(s); every camera's messages of every run whole (seq from 0, no gap): "
              f"{'yes' if all(runs.values()) else 'no'}")
        return 0 if all(code == 0 for code in codes) and all(runs.values()) else 1


def runs_whole(records) -> dict[str, bool]:
    """run_id -> whether each camera's detection seqs of that run came from 0 with no gap."""
    seqs: dict[tuple[str, str], set[int]] = {}
    for r in records:
        if r.value.get("schema") == "detections/v1":
            seqs.setdefault((r.value["run_id"], r.key), set()).add(r.value["frame"]["seq"])
    whole: dict[str, bool] = {}
    for (run, _), got in seqs.items():
        whole[run] = whole.get(run, True) and got == set(range(max(got) + 1))
    return whole


def describe(message: dict) -> str:
    """One readable line per message."""
    if message.get("schema") == "camera-status/v1":
        return f"[status] {message['camera_id']:<12} {message['status']:<12} {message['reason']}"
    frame = message["frame"]
    boxes = ", ".join(
        f"{d['label']} {d['confidence']:.2f} [{', '.join(f'{v:.0f}' for v in d['bbox'])}]"
        for d in message["detections"][:3]
    )
    more = f" (+{len(message['detections']) - 3})" if len(message["detections"]) > 3 else ""
    return (f"[detect] {message['camera_id']:<12} seq={frame['seq']:<5} {frame['width']}x{frame['height']} "
            f"{frame['captured_at']} {len(message['detections'])} objects: {boxes}{more}")


if __name__ == "__main__":
    sys.exit(main())
