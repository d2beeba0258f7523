"""POST /v1/detect benchmark: requests/s and latency of 640x480 JPEGs from N concurrent clients,
with no camera and with 4 streaming cameras, and the cameras' rate with and without the requests.

    .venv/bin/python -m scripts.bench.bench_detect [--clients 4] [--seconds 30] [--cameras 4] [--fps 5]

Everything real and local: the GStreamer RTSP test server (generated scenes, 1280x720), the
Tansu broker, the daemon (its CLI) with the shapes detector at 320 px, clients in this process
(one thread each, each waiting for its answer before sending again). Phases, each `--seconds`:
  1. cameras alone (their frames/s);
  2. cameras and the request load;
  3. the request load alone (the daemon's one camera points at a port that refuses).
"""
from __future__ import annotations

import argparse
import io
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from scripts.lab.broker import Broker
from scripts.lab.cameras import RefusingPort, RtspServer
from scripts.lab.common import API_TOKEN, REPO, free_port, wait_for
from scripts.lab.daemons import Daemon, daemon_config, http_get, http_request, metric_values
from scripts.lab.scenes import Scene

MODEL = REPO / "engines" / "shapes-yolov8n.onnx"


def jpeg_640x480(seed: int = 9304) -> bytes:
    out = io.BytesIO()
    Image.fromarray(Scene(seed, 640, 480, frames=1).render(0)[0]).save(out, format="JPEG", quality=90)
    return out.getvalue()


def camera_rates(base: str, seconds: float) -> dict[str, float]:
    def inferred() -> dict[str, float]:
        return metric_values(http_get(f"{base}/metrics")[1], "rtsp_pipeline_frames_inferred_total")
    before, start = inferred(), time.monotonic()
    time.sleep(seconds)
    after, elapsed = inferred(), time.monotonic() - start
    return {cam.split('"')[1]: (after[cam] - before.get(cam, 0)) / elapsed for cam in after}


def load(base: str, clients: int, seconds: float, image: bytes, during=None) -> dict:
    """`clients` threads posting `image` for `seconds`; `during()` runs meanwhile (its result kept)."""
    latencies, statuses, stop, lock = [], {}, threading.Event(), threading.Lock()
    headers = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "image/jpeg"}

    def client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            status = http_request("POST", f"{base}/v1/detect", image, headers, timeout=60)[0]
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(time.monotonic() - started)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(2)  # warm-up
    with lock:
        latencies.clear()
        statuses.clear()
    measured = time.monotonic()
    result = during() if during else time.sleep(seconds)
    elapsed = time.monotonic() - measured
    stop.set()
    for thread in threads:
        thread.join(70)
    with lock:
        lat = np.array(latencies) * 1000
        return {"requests_per_s": len(latencies) / elapsed, "statuses": dict(statuses),
                "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
                "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None, "during": result,
                "seconds": round(time.monotonic() - start, 1)}


def run_daemon(work: Path, broker: Broker, cameras: list[tuple]) -> tuple[Daemon, str]:
    port = free_port()
    config = daemon_config(work / f"bench-{uuid.uuid4().hex[:6]}.yaml",
                           {"path": MODEL, "input_size": 320, "confidence": 0.35}, broker.bootstrap, cameras,
                           topic=f"bench-detect-{uuid.uuid4().hex[:8]}", metrics_port=port)
    daemon = Daemon(config, config.with_suffix(".log"), env={"RTSP_PIPELINE_API_TOKENS": API_TOKEN})
    daemon.start()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_get(f"{base}/healthz")[0] == 200, 90, "the daemon")
    return daemon, base


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--fps", type=float, default=5)
    parser.add_argument("--size", default="640x360", help="the cameras' WIDTHxHEIGHT (25 fps H.264, all frames decoded)")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench-detect")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    image = jpeg_640x480()
    width, height = (int(v) for v in args.size.split("x"))
    clips = {}
    for i in range(args.cameras):
        clip = args.work / f"cam{i}-{args.size}.mp4"
        if not clip.exists():
            Scene(9310 + i, width, height, frames=200).write(clip)
        clips[f"cam{i}"] = clip
    with Broker() as broker, RtspServer(clips) as rtsp:
        daemon, base = run_daemon(args.work, broker, [(c, rtsp.url(c), args.fps) for c in clips])
        try:
            wait_for(lambda: len(camera_rates(base, 1)) == args.cameras, 60, "every camera inferred")
            alone = camera_rates(base, args.seconds)
            loaded = load(base, args.clients, args.seconds, image, lambda: camera_rates(base, args.seconds))
            drops = metric_values(http_get(f"{base}/metrics")[1], "rtsp_pipeline_frames_dropped_total")
        finally:
            daemon.stop()
        refusing = RefusingPort()
        daemon, base = run_daemon(args.work, broker, [("none", f"rtsp://127.0.0.1:{refusing.port}/x", None)])
        try:
            only = load(base, args.clients, args.seconds, image)
        finally:
            daemon.stop()
            refusing.close()
    print(f"- Command: `.venv/bin/python -m scripts.bench.bench_detect --clients {args.clients} --seconds {args.seconds:g} "
          f"--cameras {args.cameras} --fps {args.fps:g} --size {args.size}`")
    print(f"- {args.clients} clients posting one 640x480 JPEG ({len(image) // 1024} KiB) each, waiting for each answer; "
          f"{args.cameras} cameras {args.size} 25 fps H.264 (every frame decoded) sampled at {args.fps:g} fps; "
          "shapes-yolov8n at 320 px")
    print(f"- the cameras' drops over both phases: {({k: int(v) for k, v in drops.items()} or 'none')}\n")
    print("| load | requests/s | p50 / p99 | answers | cameras' frames/s |")
    print("| --- | --- | --- | --- | --- |")

    def rates(r: dict) -> str:
        return " / ".join(f"{v:.2f}" for _, v in sorted(r.items()))
    print(f"| {args.cameras} cameras alone | | | | {rates(alone)} |")
    print(f"| {args.cameras} cameras + requests | {loaded['requests_per_s']:.1f} | {loaded['p50_ms']:.0f} / "
          f"{loaded['p99_ms']:.0f} ms | {loaded['statuses']} | {rates(loaded['during'])} |")
    print(f"| requests alone | {only['requests_per_s']:.1f} | {only['p50_ms']:.0f} / {only['p99_ms']:.0f} ms | "
          f"{only['statuses']} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
