"""What the evidence-clip ring costs: 40 cameras of 1080p25 H.264 at 4 Mbit/s, `clips.pre_s` 10.

    .venv/bin/python -m scripts.bench.bench_ring [--cameras 40] [--seconds 60] [--pre-s 10] [--record FILE]

One 1080p25 clip is made with ffmpeg (4 Mbit/s capped, a keyframe every 2 s, as cameras send) and
its packets read once; then each of N rings (pipeline.clips.PacketRing) is fed `--seconds` of
them, interleaved as N cameras deliver them, each packet copied out of a PyAV packet first as the
camera's thread will do. Reported: CPU per packet and per camera (of one core), the bytes each
ring holds at the end and in all, and the process's RSS growth. The machine must be otherwise idle.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import av

from pipeline.clips import EncodedPacket, PacketRing, StreamInfo
from scripts.bench.bench_cpu import machine, report
from scripts.lab.common import REPO


def camera_clip(path: Path) -> Path:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=25", "-t", "20",
                        "-c:v", "libx264", "-preset", "veryfast", "-b:v", "4M", "-maxrate", "4M", "-bufsize", "8M",
                        "-g", "50", "-bf", "0", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cameras", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--pre-s", type=float, default=10)
    parser.add_argument("--ring-mb", type=float, default=16)
    parser.add_argument("--record", type=Path)
    args = parser.parse_args()
    clip = camera_clip(REPO / ".cache" / "bench-ring" / "camera-1080p25-4M-gop2s.mp4")
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        tb, clip_s = stream.time_base, float(stream.duration * stream.time_base)
        info = StreamInfo.of(stream, EncodedPacket(bytes(packets[0]), packets[0].pts, packets[0].dts, True))
        rate = sum(p.size for p in packets) * 8 / clip_s / 1e6
        loops = int(args.seconds // clip_s) + 1
        rings = [PacketRing(args.pre_s, int(args.ring_mb * 2**20)) for _ in range(args.cameras)]
        for ring in rings:
            ring.reset(tb, lambda keyframe: info)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        shift = round(clip_s / tb)  # each loop of the clip goes on in media time
        fed, cpu = 0, time.process_time()
        for loop in range(loops):
            for packet in packets:
                if float(packet.dts * tb) + loop * clip_s > args.seconds:
                    break
                for ring in rings:  # what each camera's thread does with each packet
                    ring.add(EncodedPacket(bytes(packet), packet.pts + loop * shift, packet.dts + loop * shift,
                                           packet.is_keyframe))
                fed += len(rings)
        cpu = time.process_time() - cpu
    rss_growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    held = [ring.bytes for ring in rings]
    spans = [ring.span() for ring in rings]
    per_packet_us = cpu / fed * 1e6
    per_camera = cpu / args.seconds / args.cameras * 100
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    lines = [f"**The clip ring**, {machine()}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, code at `{commit}`: "
             f"`.venv/bin/python -m scripts.bench.bench_ring --cameras {args.cameras} --seconds {args.seconds:g} "
             f"--pre-s {args.pre_s:g}`", "",
             f"{args.cameras} cameras × 1080p25 H.264 at {rate:.2f} Mbit/s (a keyframe every 2 s), {args.seconds:g} s "
             f"each, `clips.pre_s` {args.pre_s:g}: {fed} packets in {cpu:.2f} s of CPU, **{per_packet_us:.1f} µs a "
             f"packet** (its copy out of PyAV's packet included), **{per_camera:.3f} % of a core per camera**; each "
             f"ring holds {min(held) / 2**20:.1f}–{max(held) / 2**20:.1f} MiB "
             f"({min(s[1] - s[0] for s in spans):.1f}–{max(s[1] - s[0] for s in spans):.1f} s, from a keyframe), "
             f"**{sum(held) / 2**20:.0f} MiB for all {args.cameras}**; the process's peak RSS grew "
             f"{rss_growth:.0f} MiB."]
    report(lines, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
