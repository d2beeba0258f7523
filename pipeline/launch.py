"""The command's first step, before anything heavy is imported: from here on SIGTERM and SIGINT are
noted, not fatal, so a daemon stopped while it starts (an autoscaler or a rollout can stop a pod a
second after starting it) stops in order and exits 0 instead of dying of the signal's default
action. The Runtime then stops at once (pipeline.cli hands it the note); every other command
gets the default handlers back and, if a signal came meanwhile, acts on it as it would have."""
from __future__ import annotations

import signal
import sys
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `rtsp-pipeline` console script and `python -m pipeline`."""
    requested = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: requested.set()) for sig in STOP_SIGNALS}
    from pipeline.cli import main as command  # the heavy imports begin here

    return command(argv, stop_requested=requested, handlers=previous)


if __name__ == "__main__":  # pragma: no cover - `python -m pipeline` goes through __main__.py
    sys.exit(main())
