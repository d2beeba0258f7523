"""Run the daemon on three demo cameras served locally, with a local broker, and print detections.

    .venv/bin/python scripts/demo.py [--seconds N]

Starts GStreamer's RTSP server with three generated scenes (scripts/scenes.py: discs, squares,
triangles and crosses moving over noisy backgrounds; 1080p, 720p and 4:3), a Tansu Kafka-protocol
broker, and `rtsp-pipeline run --config configs/demo.yaml` with the shapes detector; then reads the
detections and camera-status topics and prints a line per message. Ctrl-C (or --seconds) stops
everything.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts.scenes import GENERATOR_VERSION, Scene  # noqa: E402
from scripts.testbed import REPO, Broker, Daemon, RtspServer, consume, free_port  # noqa: E402


CLIPS = {"lobby": (42, 1920, 1080), "yard": (43, 1280, 720), "dock": (44, 1024, 768)}  # seed, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until Ctrl-C)")
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
        deadline = time.monotonic() + args.seconds if args.seconds else float("inf")
        printed = 0

        def show_new(records) -> bool:
            nonlocal printed
            for record in records[printed:]:
                print(describe(record.value), flush=True)
            printed = len(records)
            return time.monotonic() >= deadline or daemon.proc.poll() is not None

        try:
            consume(broker.bootstrap, ["detections", "camera-status"], show_new, timeout=args.seconds or 1e9)
        except KeyboardInterrupt:
            pass
        code = daemon.stop()
        print(f"\ndaemon exited with {code}; {printed} messages seen")
        return 0 if code == 0 else 1


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
