"""What RTP over UDP costs against TCP: CPU per camera of reading (and decoding) N cameras with the
daemon's own options for each transport (pipeline.s1_source), from one GStreamer RTSP server
that offers both.

    .venv/bin/python -m scripts.bench.bench_transport --cameras 4 --seconds 30

The clip is a scene at 1920x1080, 25 fps, capped at 6 Mbit/s as a camera's encoder is. Each
transport runs alone, one after the other; CPU is this process's (every thread), so the
server's own cost is not in it. Packet loss over UDP is reported too (none is expected on
loopback with the default 4 MiB buffers).
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import av

from pipeline.config import SourceConfig
from pipeline.s1_source import ffmpeg_warnings_on, rtp_losses, rtsp_options
from scripts.lab.cameras import RtspServer
from scripts.lab.scenes import Scene

REPO = Path(__file__).resolve().parents[2]


def read(url: str, transport: str, decode: bool, until: float, counts: dict, key: str) -> None:
    options = rtsp_options(transport, SourceConfig())
    with av.logging.Capture(local=True) as logs, av.open(url, options=options, timeout=10) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = packets = lost = 0
        for packet in container.demux(stream):
            if time.monotonic() > until:
                break
            packets += 1
            if decode:
                frames += len(packet.decode())
            if logs:
                lost += sum(rtp_losses(logs))
        counts[key] = (packets, frames, lost)


def run(url: str, transport: str, cameras: int, seconds: float, decode: bool) -> dict:
    counts: dict = {}
    until = time.monotonic() + seconds + 3  # 3 s to connect and settle are not measured
    threads = [threading.Thread(target=read, args=(url, transport, decode, until, counts, str(i)))
               for i in range(cameras)]
    for t in threads:
        t.start()
    time.sleep(3)
    cpu0, wall0 = time.process_time(), time.monotonic()
    for t in threads:
        t.join()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    packets = sum(c[0] for c in counts.values())
    return {"cpu_pct_per_camera": 100 * cpu / wall / cameras, "packets": packets,
            "frames": sum(c[1] for c in counts.values()), "lost": sum(c[2] for c in counts.values()),
            "cameras_done": len(counts)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench-transport")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    clip = args.work / "scene-1080p-6M.mp4"
    if not clip.exists():
        Scene(9400, 1920, 1080, frames=150).write(clip, bitrate="6M")
    ffmpeg_warnings_on()
    print(f"{args.cameras} cameras, 1920x1080 25 fps 6 Mbit/s, {args.seconds:g} s each")
    print("| read | transport | CPU % per camera | frames read | pictures decoded | RTP packets lost |")
    print("| --- | --- | --- | --- | --- | --- |")
    with RtspServer({"cam": clip}) as server:
        for decode in (False, True):
            for transport in ("tcp", "udp"):
                r = run(server.url("cam"), transport, args.cameras, args.seconds, decode)
                print(f"| {'demux + decode' if decode else 'demux'} | {transport} | {r['cpu_pct_per_camera']:.1f} | "
                      f"{r['packets']} | {r['frames']} | {r['lost']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
