"""Stress the test RTSP server the way the test suite uses it: clients that connect, read for a
random while and leave, on the clips the suite serves (an MP4, an MPEG-TS whose resolution changes
and a damaged copy of it). Stops at the first client that cannot read, or that waits more than
--max-gap seconds for a packet, and prints the server's native stacks (gdb, where installed).

    .venv/bin/python -m scripts.lab.rtsp_server_stress [--rounds 30] [--clients 4] [--stay 0.2,9]

`--stay 30,60` keeps each client across many loops of the 4 s clips (where a server that loops by
seeking stalled). Exit status 0 when every round of every client read packets without a gap.
"""
from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av

from scripts.lab.cameras import RtspServer
from scripts.lab.clips import corrupt_ts, make_clip, ts_clip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="connections per client")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--stay", default="0.2,9", help="MIN,MAX seconds each connection reads")
    parser.add_argument("--max-gap", type=float, default=2.0, help="longest wait for a packet, seconds")
    args = parser.parse_args()
    stay_min, stay_max = (float(x) for x in args.stay.split(","))
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        resize = ts_clip(Path(tmp) / "resize.ts", [(640, 360, 1), (1280, 720, 2), (640, 360, 1)])
        clips = {"classic": make_clip(Path(tmp) / "classic.mp4", 640, 480), "resize": resize,
                 "corrupt": corrupt_ts(resize, Path(tmp) / "corrupt.ts")}
        with RtspServer(clips) as server:
            def client(index: int) -> None:
                rnd, name = random.Random(index), list(clips)[index % len(clips)]
                for round_ in range(args.rounds):
                    if failures:
                        return
                    started, packets = time.monotonic(), 0
                    try:
                        with av.open(server.url(name), options={"rtsp_transport": "tcp"}, timeout=(5, 5)) as c:
                            stay, last = rnd.uniform(stay_min, stay_max), None
                            for _ in c.demux(video=0):
                                packets, now = packets + 1, time.monotonic()
                                if last is not None and now - last > args.max_gap:
                                    failures.append(f"client {index} ({name}), round {round_}: no packet for "
                                                    f"{now - last:.1f} s after {packets - 1} packets")
                                    break
                                last = now
                                if now - started > stay:
                                    break
                    except av.error.FFmpegError as exc:
                        failures.append(f"client {index} ({name}), round {round_}: {packets} packets, then {exc}")
                    time.sleep(rnd.uniform(0, 0.5))

            threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
            started = time.monotonic()
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads) and not failures:
                time.sleep(0.2)
            print(f"{args.clients} clients x {args.rounds} rounds: {len(failures)} failed "
                  f"in {time.monotonic() - started:.0f} s")
            if failures:
                print("\n".join(failures))
                print(f"server answers DESCRIBE on {next(iter(clips))}: {server.answers(next(iter(clips)))}")
                if shutil.which("gdb"):
                    print(subprocess.run(["gdb", "-p", str(server.proc.pid), "-batch", "-ex", "thread apply all bt 20"],
                                         capture_output=True, text=True).stdout)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
