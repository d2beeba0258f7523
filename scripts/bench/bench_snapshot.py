"""What a snapshot of an alerted track costs: decoding its picture from the camera's clip ring and
writing the two JPEGs, for 1080p25 H.264 at 4 Mbit/s with a keyframe every 2 s.

    .venv/bin/python -m scripts.bench.bench_snapshot [--pictures 50]

A snapshot is made on the clip writer's thread from the ring's compressed packets (the same on the
CPU and the GPU path): the packets from the keyframe at or before the picture through the next GOP
are remuxed in memory and decoded until the picture comes out, so its cost grows with how far into
its GOP the picture is. Reported: CPU seconds per snapshot (decode, and the two JPEGs), for pictures
spread over the GOP, median and worst. The machine must be otherwise idle.
"""
from __future__ import annotations

import argparse
import statistics
import time

import av

from pipeline.clips import EncodedPacket, PacketRing, Sighting, StreamInfo, decode_picture, snapshot_jpegs
from scripts.bench.bench_cpu import machine
from scripts.bench.bench_ring import camera_clip
from scripts.lab.common import REPO


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pictures", type=int, default=50, help="snapshots made, spread over 2 GOPs")
    args = parser.parse_args()
    clip = camera_clip(REPO / ".cache" / "bench-ring" / "camera-1080p25-4M-gop2s.mp4")
    ring = PacketRing(30.0, 256 << 20)
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        ring.reset(stream.time_base, lambda keyframe: StreamInfo.of(stream, keyframe))
        for packet in container.demux(stream):
            if packet.size:
                ring.add(EncodedPacket(bytes(packet), packet.pts, packet.dts, packet.is_keyframe))
    decode, jpeg = [], []
    for k in range(args.pictures):
        pts = 6.0 + (k * 4.0 / args.pictures)  # over two GOPs, from their keyframes to their last pictures
        pts = round(pts * 25) / 25
        info, packets = ring.around(pts)
        started = time.process_time()
        picture = decode_picture(info, packets, pts)
        decode.append(time.process_time() - started)
        started = time.process_time()
        snapshot_jpegs(picture, Sighting(1, "person", 0.9, (800.0, 400.0, 1000.0, 800.0), pts, 0.0, 1.0))
        jpeg.append(time.process_time() - started)
    total = [d + j for d, j in zip(decode, jpeg)]
    print(f"machine: {machine()}")
    print(f"snapshot of 1080p25 H.264 4 Mbit/s, GOP 2 s, {args.pictures} pictures over two GOPs (CPU seconds):")
    print(f"  decode from the ring: median {statistics.median(decode):.3f}, worst {max(decode):.3f}")
    print(f"  two JPEGs:            median {statistics.median(jpeg):.3f}, worst {max(jpeg):.3f}")
    print(f"  in all:               median {statistics.median(total):.3f}, worst {max(total):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
