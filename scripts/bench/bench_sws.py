"""Scaling decoded pictures to the detector's input: PyAV's per-frame `to_ndarray(width=...)`
(a new swscale context per picture, automatic threads) against one reused single-threaded
context, as `pipeline.s4_infer.preprocess` now does.

    .venv/bin/python -m scripts.bench.bench_sws [--frames 100] [--rounds 3]

Decodes each source size of an ffmpeg test clip once, then scales every picture to its 320 px
letterbox (wall and CPU time per picture; native threads alive while the pictures are kept).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import av
from av.video.reformatter import VideoReformatter

from scripts.lab.clips import make_clip

SIZES = {"1080p": (1920, 1080, 320, 180), "360p": (640, 360, 320, 180)}


def decode(clip: Path, count: int) -> list[av.VideoFrame]:
    with av.open(str(clip)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame)
            if len(frames) == count:
                return frames
    return frames


def per_frame_context(frames, w, h):
    return [f.to_ndarray(format="rgb24", width=w, height=h, interpolation="FAST_BILINEAR") for f in frames]


def reused_context(frames, w, h, sws=VideoReformatter()):
    return [sws.reformat(f, format="rgb24", width=w, height=h, interpolation="FAST_BILINEAR", threads=1).to_ndarray()
            for f in frames]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, PyAV {av.__version__}, FFmpeg {av.library_versions['libswscale']} (swscale)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (sw, sh, w, h) in SIZES.items():
            clip = make_clip(Path(tmp) / f"{name}.mp4", sw, sh, seconds=args.frames / 25 + 1)
            for way, scale in (("per-frame context, auto threads", per_frame_context),
                               ("one reused context, 1 thread", reused_context)):
                for _ in range(args.rounds):
                    frames = decode(clip, args.frames)  # fresh pictures, as a decoder hands them out
                    base = len(os.listdir("/proc/self/task"))
                    wall, cpu = time.perf_counter(), time.process_time()
                    scale(frames, w, h)
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    threads = len(os.listdir("/proc/self/task")) - base
                    del frames
                print(f"{name} -> {w}x{h}, {way}: {wall / args.frames * 1e3:.2f} ms wall, "
                      f"{cpu / args.frames * 1e3:.2f} ms CPU per picture; {threads} threads added while "
                      f"the {args.frames} pictures are kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
