"""ONNX Runtime thread placement on this CPU: one multi-threaded run vs parallel 1-thread runs,
idle and while camera-like decode threads load the cores.

    .venv/bin/python -m scripts.bench.bench_ort_threads [--seconds 12] [--decoders 2]

The decoders decode a looping 1080p25 H.264 clip (made by ffmpeg) in real time, one thread each,
as the daemon's camera threads do.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import onnxruntime as ort

from scripts.lab.clips import make_clip
from scripts.lab.common import REPO

MODEL = REPO / "engines" / "yolov8n.onnx"


def decode_in_real_time(clip: Path, stop: threading.Event) -> None:
    """Decode the clip at its frame rate, over and over, on one thread."""
    while not stop.is_set():
        with av.open(str(clip)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            start = time.monotonic()
            for n, _frame in enumerate(container.decode(stream), 1):
                if stop.is_set():
                    return
                delay = start + n / 25 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)


def session(threads: int, spinning: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])


def images_per_second(sessions: list[ort.InferenceSession], seconds: float) -> float:
    """Run each session in its own thread (a session listed twice runs twice at once)."""
    x = np.random.default_rng(0).random((1, 3, 384, 640), dtype=np.float32)
    for s in sessions:
        s.run(None, {"images": x})
    counts = [0] * len(sessions)
    end = time.monotonic() + seconds

    def loop(i: int) -> None:
        while time.monotonic() < end:
            sessions[i].run(None, {"images": x})
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--decoders", type=int, default=2)
    args = parser.parse_args()
    clip = make_clip(REPO / ".cache" / "bench" / "bench-1080p25.mp4", 1920, 1080, seconds=10)
    one = session(1, False)
    setups = {
        "1 run x 2 threads, spinning": lambda: [session(2, True)],
        "1 run x 2 threads, no spinning": lambda: [session(2, False)],
        "2 parallel runs x 1 thread (2 sessions)": lambda: [session(1, False), session(1, False)],
        "2 concurrent runs x 1 thread (1 session)": lambda: [one, one],
    }
    print("| setup | idle | while %d threads decode 1080p25 |\n| --- | --- | --- |" % args.decoders)
    for name, make in setups.items():
        idle = images_per_second(make(), args.seconds)
        stop = threading.Event()
        decoders = [threading.Thread(target=decode_in_real_time, args=(clip, stop), daemon=True)
                    for _ in range(args.decoders)]
        for d in decoders:
            d.start()
        time.sleep(1)
        loaded = images_per_second(make(), args.seconds)
        stop.set()
        for d in decoders:
            d.join(5)
        print(f"| {name} | {idle:.1f} img/s | {loaded:.1f} img/s |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
