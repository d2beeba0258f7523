"""`rtsp-pipeline analyze FILE... [--config FILE]`: recordings through the configured models,
tracking and publishing, at full speed, then a summary.

Each file becomes a file:// camera of the daemon's own Runtime (its id from the file's name), so
the frames go exactly the way a live camera's do (batched across the files, every frame inferred:
back-pressure, not dropping), and the messages are the daemon's, to the config's Kafka. The
config's cameras, placement and canary are left out; its HTTP endpoints listen on a free local
port (a daemon on this box keeps its own), and its spool is a folder of its own beside the
daemon's (`--spool`), so messages Kafka has not taken yet are kept for the next analyze run.

It ends when every file is read, its frames are through every model, and Kafka has acknowledged
every message (or `--deliver-timeout` passed). Exit 0: every file done and delivered; 1: a file
could not be read, messages wait in the spool, or it was interrupted; 2: a bad config or file.
The progress line (stderr, on a terminal only) is written here rather than with a progress-bar
library: it is one line, and the daemon's dependencies stay as they are.
"""
from __future__ import annotations

import asyncio
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import av

from pipeline.config import CameraConfig, Config
from pipeline.core import CameraState, FrameResult

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
POLL_S = 0.25


@dataclass
class Recording:
    """One file to analyse, as a camera."""

    camera: CameraConfig
    frames: int | None  # expected at its sampling (None: the file does not say)


def recordings(files: list[str], fps: float | None, models: list[str] | None) -> tuple[list[Recording], list[str]]:
    """The files as cameras (ids from their names, made unique), and a problem line per file that
    cannot be analysed."""
    found, problems, taken = [], [], set()
    for name in files:
        path = Path(name).expanduser().resolve()
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise ValueError("no video track")
                total = _frames_at(container, container.streams.video[0], fps)
        except (OSError, av.error.FFmpegError, ValueError) as exc:
            problems.append(f"{name}: cannot be analysed: {getattr(exc, 'strerror', None) or exc}")
            continue
        base = re.sub(r"[^A-Za-z0-9._-]", "-", path.stem).lstrip("._-")[:60] or "file"
        cam, n = base, 1
        while cam in taken:
            n += 1
            cam = f"{base}-{n}"
        taken.add(cam)
        found.append(Recording(CameraConfig(id=cam, url="file://" + quote(str(path)), fps=fps, models=models), total))
    return found, problems


def _frames_at(container, stream, fps: float | None) -> int | None:
    """Frames the file holds (its header's count, else duration x rate), at most duration x fps."""
    rate = float(stream.average_rate or stream.guessed_rate or 0)
    duration = (float(stream.duration * stream.time_base) if stream.duration
                else container.duration / av.time_base if container.duration else None)
    total = stream.frames or (round(duration * rate) if duration and rate else None)
    if fps and duration:
        total = min(total or 10**12, round(duration * fps + 0.5))
    return total


def analysis_config(config: Config, cameras: list[CameraConfig], spool: Path | None) -> Config:
    """The config analyze runs: the files as its cameras, no placement or canary, HTTP on a free
    local port without the preview, a spool of its own."""
    kafka = config.kafka
    folder = spool or kafka.spool.folder.with_name(kafka.spool.folder.name + "-analyze")
    return config.model_copy(update={
        "cameras": cameras,
        "canary": None,
        "placement": config.placement.model_copy(update={"mode": "all"}),
        "metrics": config.metrics.model_copy(update={"listen": "127.0.0.1:0", "preview": False}),
        "kafka": kafka.model_copy(update={"spool": kafka.spool.model_copy(update={"folder": folder})}),
    })


class Tally:
    """Detections per class, summed from every lane's results (on their inference threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.classes: Counter[str] = Counter()

    def add(self, results: list[FrameResult]) -> None:
        with self._lock:
            for result in results:
                self.classes.update(d.track_label or d.label for d in result.detections)


class Progress:
    """Where the analysis stands, from the Runtime's cameras and metrics."""

    def __init__(self, runtime, config: Config, files: list[Recording]) -> None:
        self._runtime, self._config, self.files = runtime, config, files
        self.failed: dict[str, str] = {}  # camera -> why
        self.read: set[str] = set()  # cameras whose file was read to its end
        self.started: float | None = None  # monotonic, first frame through

    def done_frames(self) -> int:
        """Frames through all of their models (a frame counts once)."""
        per_model = self.per_camera("rtsp_pipeline_model_frames_total")
        return sum(per_model.get(r.camera.id, 0) // len(self._config.models_of(r.camera)) for r in self.files)

    def finished(self) -> bool:
        """Every file read to its end (or failed), and each frame handed out is through every model
        (or dropped, counted)."""
        states = self._runtime.camera_states()
        per_model = self.per_camera("rtsp_pipeline_model_frames_total")
        dropped = self.per_camera("rtsp_pipeline_frames_dropped_total")
        for rec in self.files:
            cam = rec.camera.id
            if cam in self.failed:
                continue
            state = states.get(cam)
            if state in (CameraState.BACKING_OFF.value, CameraState.STALLED.value):
                self.failed[cam] = self._runtime.camera_reason(cam)
                worker = self._runtime.camera_worker(cam)
                if worker is not None:  # not read again from its start while the other files go on
                    worker.request_stop()
                continue
            if state != CameraState.FINISHED.value:
                return False
            self.read.add(cam)
            worker = self._runtime.camera_worker(cam)
            models = len(self._config.models_of(rec.camera))
            if per_model.get(cam, 0) + dropped.get(cam, 0) * models < worker.delivered * models:
                return False
        return True

    def per_camera(self, name: str) -> Counter[str]:
        """A counter's value per camera, summed over its other labels."""
        found: Counter[str] = Counter()
        for family in self._runtime.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == name:
                    found[sample.labels.get("camera", "")] += int(sample.value)
        return found

    def line(self, now: float) -> str:
        done = self.done_frames()
        total = sum(r.frames or 0 for r in self.files)
        rate = done / (now - self.started) if self.started and now > self.started else 0.0
        finished = sum(1 for s in self._runtime.camera_states().values() if s == CameraState.FINISHED.value)
        share = f" ({done / total:.0%})" if total else ""
        return (f"analyze: {done}/{total or '?'} frames{share}, {rate:.1f} frames/s, "
                f"{finished}/{len(self.files)} files read")


async def _watch(runtime, progress: Progress, deliver_timeout: float, tty: bool, outcome: dict) -> None:
    """Stop the Runtime once every file is through and delivered (or the delivery timed out)."""
    while runtime.camera_states() == {} and not outcome.get("stopped"):
        await asyncio.sleep(POLL_S)
    shown = 0.0
    while not progress.finished():
        now = time.monotonic()
        if progress.started is None and progress.done_frames():
            progress.started = now
        if tty and now - shown >= 0.5:
            print("\r" + progress.line(now), end="", file=sys.stderr, flush=True)
            shown = now
        await asyncio.sleep(POLL_S)
    outcome["through"] = time.monotonic()
    give_up = time.monotonic() + deliver_timeout
    while runtime.queued() and time.monotonic() < give_up:
        await asyncio.sleep(POLL_S)
    if tty:
        print("\r" + progress.line(outcome["through"]), file=sys.stderr, flush=True)
    outcome["undelivered"] = runtime.queued()
    runtime.request_stop()


def run_analysis(config: Config, files: list[Recording], deliver_timeout: float,
                 stop_requested: threading.Event) -> int:
    """Run the Runtime on the files; print the summary; the exit code."""
    from pipeline.app import Runtime

    tally = Tally()
    runtime = Runtime(config, on_results=tally.add)
    progress = Progress(runtime, config, files)
    outcome: dict = {}
    began = time.monotonic()

    async def main() -> int:
        watcher = asyncio.get_running_loop().create_task(
            _watch(runtime, progress, deliver_timeout, sys.stderr.isatty(), outcome))
        try:
            return await runtime.run(stop_requested.is_set)
        finally:
            outcome["stopped"] = True
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    code = asyncio.run(main())
    seconds = time.monotonic() - began
    frames = progress.done_frames()
    inferring = (outcome.get("through", time.monotonic()) - progress.started) if progress.started else 0.0
    published = sum(v for v in progress.per_camera("rtsp_pipeline_messages_published_total").values())
    print(f"files: {len(files)} ({len(progress.read)} read to the end)")
    print(f"frames: {frames} in {inferring:.1f} s of inference ({frames / inferring if inferring else 0:.1f} frames/s)")
    detections = ", ".join(f"{label} {n}" for label, n in sorted(tally.classes.items())) or "none"
    print(f"detections: {sum(tally.classes.values())} ({detections})")
    print(f"messages published: {published} (acknowledged by Kafka)")
    print(f"seconds: {seconds:.1f}")
    for cam, why in progress.failed.items():
        print(f"file {cam}: not read to its end: {why}", file=sys.stderr)
    if "through" not in outcome:
        print("interrupted before every file was through", file=sys.stderr)
        return EXIT_FAILURE
    if outcome.get("undelivered"):
        print(f"{outcome['undelivered']} messages not yet acknowledged by Kafka after {deliver_timeout:g} s; "
              f"kept in {config.kafka.spool.folder} for the next analyze run", file=sys.stderr)
        return EXIT_FAILURE
    return code if code else (EXIT_FAILURE if progress.failed else EXIT_OK)
