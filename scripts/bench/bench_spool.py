"""Spool append and read cost per message (CPU time on this machine), on a real folder.

    .venv/bin/python -m scripts.bench.bench_spool [--messages 50000] [--size 600] [--folder DIR]

Appends `--messages` records of `--size` bytes (a detections/v1 message is 400-3000 bytes), then
reads and acknowledges them all, as the publisher does; prints microseconds per message for each.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from pipeline.s6_spool import Spool


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=600)
    parser.add_argument("--folder", help="where the spool goes (default: a new folder under /var/tmp)")
    args = parser.parse_args()
    base = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(dir="/var/tmp"))
    spool = Spool(base / "spool", max_bytes=1 << 30)
    value = b"x" * args.size
    started = time.process_time()
    for i in range(args.messages):
        spool.append("detections", f"cam-{i % 40}", value)
    appended = time.process_time()
    while records := spool.read(1000):
        for record in records:
            spool.ack(record.number)
    done = time.process_time()
    spool.close()
    per = 1e6 / args.messages
    print(f"{args.messages} messages of {args.size} B in {base}: append {(appended - started) * per:.1f} us, "
          f"read+ack {(done - appended) * per:.1f} us per message (CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
