"""The host path at a GPU's rate: the daemon's real Runtime (the objects `rtsp-pipeline run` builds:
batcher, preprocess call, postprocess, tracker, metrics, messages, spool, publisher, Kafka) with
two stand-ins, named as such, for the parts a GPU does at no host cost:

- a synthetic source (SyntheticCameras): each camera's decoded pictures handed in at the offered
  rate, as NVDEC would (no decoding here), from one pacing thread;
- a synthetic engine (SyntheticEngine): the model's own metadata (engines/yolov8n.onnx, COCO's 80
  classes, or the shapes detector with --model shapes), its preprocessors on "the device" (they
  only compute each frame's letterbox), and an output of exactly the layout the TensorRT engine
  built from the shipped model emits: with its NMS in the engine (model.nms auto, [B, 300, 6];
  --nms host: the raw heads [B, 4+nc, anchors]), with K objects per frame that move, stop, cross,
  flicker in class and are briefly missed, so postprocessing and tracking do real work.

    .venv/bin/python -m scripts.bench.bench_host --cameras 150 --fps 30 --objects 20 --seconds 20 --sink null
    .venv/bin/python -m scripts.bench.bench_host --cameras 150 --fps 30 --objects 20 --sink kafka
    .venv/bin/python -m scripts.bench.bench_host --cameras 150 --fps 30 --objects 20 --processes 2

--sink null: the publisher's producer acknowledges every message at once (no broker: what the
process itself can carry); --sink kafka: the local Tansu broker, as in the tests (it shares the
machine's cores). The last stdout line is one JSON object: offered, inferred and published per
second, frames dropped by reason, the process's CPU per frame and per thread, capture -> published
latency (p50/p99 from the daemon's own histogram), and the stage times. --processes N runs N
daemons at once, each with its share of the cameras (as a node running several daemons, placed
by the placement group, would): how the host path scales over cores; their figures are summed.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline.app import Runtime
from pipeline.config import load_config
from pipeline.core import CameraState, Frame, FrameMeta
from pipeline.gpu import GPU_MODULES, GpuProbe
from pipeline.logs import setup_logging
from pipeline.s4_infer import nms_graph
from pipeline.s4_infer.engine import describe_onnx
from scripts.lab.broker import Broker
from scripts.lab.common import REPO
from scripts.lab.daemons import daemon_config, metric_values

MODELS = {"coco": REPO / "engines" / "yolov8n.onnx", "shapes": REPO / "engines" / "shapes-yolov8n.onnx"}
WIDTH, HEIGHT = 1920, 1080
TICK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------- the scene
class Scene:
    """K objects per camera, a pure function of (camera, time): each bounces across the frame in
    a straight line (so paths cross), stops for 1 s in every 5, is drawn at its class most of the
    time (5 % of frames another class: flicker) and missing 5 % of frames (a missed detection)."""

    def __init__(self, objects: int, classes: int) -> None:
        self.objects, self.classes = objects, classes
        self._cameras: dict[str, dict] = {}
        self._table: tuple[np.ndarray, ...] | None = None  # prepare()'s frames
        self._row: dict[str, int] = {}
        self._fps = 0.0

    def prepare(self, cameras: list[str], fps: float, seconds: float) -> None:
        """Work out the first `seconds` of each camera's frames at `fps` now, before the run, as
        end2end() gives them: the stand-in for the GPU then costs the host a table lookup a batch
        (what reading a TensorRT engine's few-KB output costs), not the scene's arithmetic; later
        frames are worked out when asked for."""
        frames = int(seconds * fps) + 1
        table = [np.zeros((len(cameras), frames, self.objects, 4), np.float32),
                 np.zeros((len(cameras), frames, self.objects), np.float32),
                 np.zeros((len(cameras), frames, self.objects), np.int16),
                 np.zeros((len(cameras), frames, self.objects), bool)]
        for i, camera in enumerate(cameras):
            for part, values in zip(table, self._seen_first([camera] * frames, np.arange(frames) / fps)):
                part[i] = values
        self._table, self._fps = tuple(table), fps
        self._row = {camera: i for i, camera in enumerate(cameras)}

    def end2end(self, cameras: list[str], times: list[float]) -> tuple[np.ndarray, ...]:
        """The objects of many frames as an end-to-end model's NMS gives its rows, those seen
        first: boxes [frames, K, 4], scores [frames, K], classes [frames, K], kept [frames, K]."""
        if self._table is not None:
            rows = [self._row.get(cam, -1) for cam in cameras]
            frames = np.round(np.asarray(times, np.float64) * self._fps).astype(np.int64)
            if min(rows) >= 0 and 0 <= frames.min(initial=0) and frames.max(initial=0) < self._table[0].shape[1]:
                return tuple(part[rows, frames] for part in self._table)
        return self._seen_first(cameras, times)

    def _seen_first(self, cameras: list[str], times) -> tuple[np.ndarray, ...]:
        boxes, classes, scores, seen = self.arrays(cameras, times)
        order = np.argsort(~seen, axis=1, kind="stable")  # the objects seen first, as NMS's rows
        return (np.take_along_axis(boxes, order[..., None], axis=1), np.take_along_axis(scores, order, axis=1),
                np.take_along_axis(classes, order, axis=1), np.take_along_axis(seen, order, axis=1))

    def _camera(self, camera: str) -> dict:
        if camera not in self._cameras:
            key = int(hashlib.sha256(camera.encode()).hexdigest()[:8], 16)
            rng = np.random.default_rng(key)
            k = self.objects
            size = rng.uniform(40, 220, (k, 2))
            self._cameras[camera] = {
                "start": rng.uniform([0, 0], [WIDTH, HEIGHT], (k, 2)), "speed": rng.uniform(-160, 160, (k, 2)),
                "size": size, "cls": rng.integers(0, self.classes, k), "phase": rng.uniform(0, 5, k), "key": key}
        return self._cameras[camera]

    def boxes(self, camera: str, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xyxy boxes in source pixels [n, 4], classes [n], scores [n]) of the objects seen at `t`."""
        return self.batch([camera], [t])[0]

    def batch(self, cameras: list[str], times: list[float]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """boxes() for many frames."""
        boxes, classes, scores, seen = self.arrays(cameras, times)
        return [(boxes[i][seen[i]], classes[i][seen[i]], scores[i][seen[i]]) for i in range(len(cameras))]

    def arrays(self, cameras: list[str], times: list[float]) -> tuple[np.ndarray, ...]:
        """Every object of many frames with one set of array operations (the stand-in must cost
        the host as little as a GPU engine's output would: no per-frame random generator):
        boxes [frames, K, 4], classes [frames, K], scores [frames, K], seen [frames, K]."""
        c = [self._camera(cam) for cam in cameras]
        start, speed, size = (np.stack([x[k] for x in c]) for k in ("start", "speed", "size"))
        cls = np.stack([x["cls"] for x in c])
        t = np.asarray(times, np.float64)[:, None]
        phase = t + np.stack([x["phase"] for x in c])
        moved = (np.floor(phase / 5) * 4 + np.minimum(np.mod(phase, 5), 4))[..., None]  # stopped 1 s in 5
        span = np.array([WIDTH, HEIGHT]) - size
        pos = np.abs(np.mod(start + speed * moved, 2 * span) - span)  # bounce off the edges
        noise = _uniform(np.array([x["key"] for x in c], np.uint64)[:, None, None],
                         np.round(t * 30).astype(np.uint64)[..., None], pos.shape)
        seen = noise[..., 0] >= 0.05
        classes = np.where(noise[..., 1] < 0.05, (cls + 1) % self.classes, cls)
        boxes = np.concatenate([pos, pos + size], axis=-1)
        scores = 0.55 + 0.4 * noise[..., 1]
        return boxes, classes, scores, seen


def _uniform(key: np.ndarray, frame: np.ndarray, shape: tuple) -> np.ndarray:
    """Uniform [0, 1) numbers, a pure function of (camera key, frame number, place): splitmix64."""
    with np.errstate(over="ignore"):
        x = key * np.uint64(0x9E3779B97F4A7C15) + frame * np.uint64(0xBF58476D1CE4E5B9) + np.arange(
            int(np.prod(shape[1:])), dtype=np.uint64).reshape(shape[1:])
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


# ---------------------------------------------------------------------- the engine stand-in
class _Inputs:
    """What the stand-in's preprocessors hand the engine: each frame's camera, time and letterbox
    (on a GPU the letterboxed pixels stay on the device; nothing to make here)."""

    def __init__(self, frames, letterboxes, width: int, height: int) -> None:
        self.frames, self.letterboxes = frames, letterboxes
        self.shape = (len(frames), 3, height, width)


class SyntheticEngine:
    """The model's metadata and the layout of its output, for the scene's objects: [B, 4+nc, N]
    raw heads (three candidate anchors per object, as a YOLO's neighbouring cells give) or
    [B, N, 6] end to end (NMS in the model)."""

    backend = "tensorrt"
    concurrency = 1
    max_useful_batch = None

    def __init__(self, config, scene: Scene, confidence: float | None = None) -> None:
        self.info = describe_onnx(config)
        self.nms_floor = None
        if nms_graph.in_engine(config, self.backend, self.info.output_shape, self.info.metadata):
            self.info = nms_graph.end2end_info(self.info)  # as the TensorRT engine built with model.nms
            self.nms_floor = config.confidence if confidence is None else confidence
        self._scene = scene
        self.output_shape = self.info.output_shape

    def preprocessors(self, count: int, max_batch: int) -> list:
        spec = self.info.input_spec
        return [_Preprocessor(spec) for _ in range(count)]

    def infer(self, inputs: _Inputs) -> np.ndarray:
        if self.info.metadata.get("end2end", "").lower() == "true":
            return self._end2end(inputs)
        return self._raw_heads(inputs)

    def _raw_heads(self, inputs: _Inputs) -> np.ndarray:
        rows = int(self.output_shape[1])
        height, width = inputs.shape[2:]
        columns = width // 8  # the stride-8 grid; anchors: the grids of strides 8, 16 and 32
        anchors = sum((width // s) * (height // s) for s in (8, 16, 32))
        out = np.zeros((len(inputs.frames), rows, anchors), np.float32)
        seen = self._scene.batch([f.meta.camera_id for f in inputs.frames], [f.meta.pts for f in inputs.frames])
        for i, (lb, (boxes, classes, scores)) in enumerate(zip(inputs.letterboxes, seen)):
            xyxy = boxes * lb.scale + np.array([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y])
            cx, cy = (xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2
            w, h = xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]
            cell = (np.clip((cy // 8).astype(int), 0, height // 8 - 1) * columns
                    + np.clip((cx // 8).astype(int), 0, columns - 1))
            for shift, (jitter, weaker) in enumerate(((0.0, 1.0), (2.0, 0.85), (-3.0, 0.7))):
                a = np.clip(cell + shift, 0, anchors - 1)
                out[i, 0, a], out[i, 1, a] = cx + jitter, cy - jitter
                out[i, 2, a], out[i, 3, a] = w + jitter, h + jitter
                out[i, 4 + classes, a] = scores * weaker
        return out

    def _end2end(self, inputs: _Inputs) -> np.ndarray:
        most = int(self.output_shape[1])
        frames, letterboxes = inputs.frames, inputs.letterboxes
        boxes, scores, classes, kept = self._scene.end2end([f.meta.camera_id for f in frames],
                                                           [f.meta.pts for f in frames])
        scale = np.array([lb.scale for lb in letterboxes])[:, None, None]
        pad = np.array([(lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y) for lb in letterboxes], np.float64)[:, None, :]
        k = min(boxes.shape[1], most)
        out = np.zeros((len(frames), most, 6), np.float32)
        out[:, :k, :4] = ((boxes * scale + pad) * kept[..., None])[:, :k]
        out[:, :k, 4] = (scores * kept)[:, :k]
        out[:, :k, 5] = (classes * kept)[:, :k]
        return out

    def close(self) -> None:
        pass


class _Preprocessor:
    def __init__(self, spec) -> None:
        self._spec = spec

    def __call__(self, batch):
        spec = self._spec
        sizes = [spec.rect_for(f.meta.width, f.meta.height) for f in batch.frames]
        w, h = max(s[0] for s in sizes), max(s[1] for s in sizes)  # one input size per batch, as on the GPU
        boxes = [spec.letterbox(f.meta.width, f.meta.height, w, h) for f in batch.frames]
        return _Inputs(batch.frames, boxes, w, h), boxes


class _Gpu:
    """The GPU the stand-ins run 'on': an index, nothing to free."""

    def __init__(self, index: int, transfers=None) -> None:
        self.index, self.name = index, "synthetic"

    def memory_info(self) -> tuple[int, int]:
        """(free, total): the engines here take none."""
        return 80 << 30, 80 << 30

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------- the source stand-in
class SyntheticCameras:
    """The Runtime's worker factory: one light worker per camera, fed by one pacing thread that
    hands every started camera a frame at its offered rate (fps 0: as fast as the batcher takes
    them, one frame per camera per pass)."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.workers: dict[str, _Camera] = {}
        self.offered = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pace, name="synthetic-source", daemon=True)
        self._thread.start()

    def __call__(self, camera, settings, decoder_factory, deliver, metrics, on_state):
        worker = _Camera(camera, deliver, on_state, self)
        return worker

    def _pace(self) -> None:
        interval = 1 / self.fps if self.fps else 0.0
        started = time.monotonic()
        tick = 0
        while not self._stop.is_set():
            with self._lock:
                cameras = [w for w in self.workers.values() if w.running]
            now = time.time()
            for worker in cameras:
                worker.deliver(now)
            self.offered += len(cameras)
            tick += 1
            if interval:
                delay = started + tick * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -1:  # cannot keep up: do not try to catch up a backlog
                    started, tick = time.monotonic(), 0
            else:
                time.sleep(0.001)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


class _Camera:
    """CameraWorker's surface for the Runtime: start, stop, state and health."""

    def __init__(self, camera, deliver, on_state, source: SyntheticCameras) -> None:
        self.camera, self._deliver, self._on_state, self._source = camera, deliver, on_state, source
        self.state, self.transport, self.running = CameraState.STOPPED, "tcp", False
        self._t0, self._frame = time.monotonic(), 0

    def start(self) -> None:
        with self._source._lock:
            self._source.workers[self.camera.id] = self
        self.running, self.state = True, CameraState.STREAMING
        self._on_state(self.camera.id, CameraState.STREAMING, "synthetic source")

    def deliver(self, now: float) -> None:
        pts = self._frame / (self._source.fps or 30)
        self._frame += 1
        meta = FrameMeta(self.camera.id, pts, now, "receive", WIDTH, HEIGHT)
        self._deliver(Frame(meta, None, time.monotonic()))

    def request_stop(self) -> None:
        self.running = False

    def stop(self, timeout: float) -> bool:
        self.running, self.state = False, CameraState.STOPPED
        with self._source._lock:
            self._source.workers.pop(self.camera.id, None)
        return True

    def health(self) -> dict:
        return {"state": self.state.value, "last_frame_age_s": 0.0}


# ---------------------------------------------------------------------- the null sink
class NullProducer:
    """--sink null: a producer that acknowledges every message at once (what the process itself
    carries, without a broker's CPU beside it)."""

    def __init__(self, config=None) -> None:
        self.sent = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    async def send(self, topic, value=None, key=None, partition=None):
        self.sent += 1
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


# ---------------------------------------------------------------------- measuring
def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of each of this process's threads, by Python thread name with the
    numbers cut off (camera-3 -> camera; native threads: 'other'), same names summed."""
    names = {t.native_id: t.name.rstrip("0123456789-_") or t.name for t in threading.enumerate()}
    out: dict[str, float] = defaultdict(float)
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[names.get(int(task.name), "other (native)")] += (int(fields[11]) + int(fields[12])) / TICK
    return dict(out)


def process_cpu() -> float:
    times = os.times()
    return times.user + times.system


def quantile(text: str, name: str, q: float) -> float | None:
    """A quantile from a Prometheus histogram's cumulative buckets (linear within the bucket)."""
    buckets = sorted((float(key.split('le="')[1].rstrip('"}')), count) for key, count in
                     metric_values(text, name + "_bucket").items() if 'le="+Inf"' not in key)
    total = metric_values(text, name + "_count").get("", 0)
    if not total:
        return None
    low_edge, low_count = 0.0, 0.0
    for edge, count in buckets:
        if count >= q * total:
            share = (q * total - low_count) / max(count - low_count, 1e-9)
            return round(low_edge + share * (edge - low_edge), 4)
        low_edge, low_count = edge, count
    return None


def counter_total(text: str, name: str) -> float:
    return sum(metric_values(text, name).values())


def dropped_by_reason(text: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for key, value in metric_values(text, "rtsp_pipeline_frames_dropped_total").items():
        out[key.split('reason="')[1].split('"')[0]] += value
    return dict(out)


async def run(args, config_path: Path, source: SyntheticCameras, scene: Scene) -> dict:
    config = load_config(config_path)
    runtime = Runtime(
        config, config_path=config_path, api_tokens=[], worker_factory=source,
        engine_loader=lambda model, backend=None, gpu=None, max_batch=8, confidence=None: SyntheticEngine(
            model, scene, confidence),
        gpu_probe=lambda: GpuProbe(1, dict.fromkeys(GPU_MODULES, True)), nvdec_check=lambda: None,
        gpu_factory=_Gpu, producer_factory=NullProducer if args.sink == "null" else None)
    task = asyncio.get_running_loop().create_task(runtime.run())
    await asyncio.sleep(args.warmup)
    text0 = runtime.metrics.render().decode()
    cpu0, threads0, offered0, t0 = process_cpu(), thread_cpu(), source.offered, time.monotonic()
    await asyncio.sleep(args.seconds)
    text1 = runtime.metrics.render().decode()
    cpu1, threads1, offered1, t1 = process_cpu(), thread_cpu(), source.offered, time.monotonic()
    runtime.request_stop()
    await task
    span = t1 - t0
    inferred = counter_total(text1, "rtsp_pipeline_frames_inferred_total") - counter_total(
        text0, "rtsp_pipeline_frames_inferred_total")
    published = counter_total(text1, "rtsp_pipeline_messages_published_total") - counter_total(
        text0, "rtsp_pipeline_messages_published_total")
    drops0, drops1 = dropped_by_reason(text0), dropped_by_reason(text1)
    stages = {}
    for key, total in metric_values(text1, "rtsp_pipeline_stage_seconds_sum").items():
        stage = key.split('stage="')[1].split('"')[0]
        count = metric_values(text1, "rtsp_pipeline_stage_seconds_count").get(key, 0)
        before = metric_values(text0, "rtsp_pipeline_stage_seconds_sum").get(key, 0)
        count0 = metric_values(text0, "rtsp_pipeline_stage_seconds_count").get(key, 0)
        if count > count0:
            stages[stage] = round((total - before) / (count - count0) * 1e6, 1)  # µs per call
    return {
        "cameras": args.cameras, "fps": args.fps, "objects": args.objects, "model": args.model, "sink": args.sink,
        "nms": args.nms,
        "seconds": round(span, 1),
        "offered_per_s": round((offered1 - offered0) / span, 1),
        "inferred_per_s": round(inferred / span, 1),
        "published_per_s": round(published / span, 1),
        "dropped": {r: round(drops1.get(r, 0) - drops0.get(r, 0)) for r in drops1 if drops1.get(r, 0) > drops0.get(r, 0)},
        "cpu_percent": round((cpu1 - cpu0) / span * 100, 1),
        "cpu_us_per_frame": round((cpu1 - cpu0) / max(inferred, 1) * 1e6, 1),
        "cpu_percent_by_thread": {name: round((threads1[name] - threads0.get(name, 0)) / span * 100, 1)
                                  for name in sorted(threads1) if threads1[name] - threads0.get(name, 0) > 0.01 * span},
        "capture_to_published_p50_s": quantile(text1, "rtsp_pipeline_capture_to_ack_seconds", 0.5),
        "capture_to_published_p99_s": quantile(text1, "rtsp_pipeline_capture_to_ack_seconds", 0.99),
        "stage_us_per_call": stages,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=150)
    parser.add_argument("--fps", type=float, default=30.0, help="offered per camera; 0: as fast as it goes")
    parser.add_argument("--objects", type=int, default=20, help="objects per frame")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured, after the warm-up")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--sink", choices=("null", "kafka"), default="null")
    parser.add_argument("--model", choices=sorted(MODELS), default="coco")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--nms", choices=("engine", "host"), default="engine",
                        help="engine: the output a TensorRT engine built with model.nms (auto) gives, at most "
                             "300 boxes an image; host: the raw heads, NMS in Python's process")
    parser.add_argument("--processes", type=int, default=1,
                        help="daemons on this machine, each with its share of the cameras (as the placement "
                             "group spreads them over several daemons of one node); figures are their sums")
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)  # --processes: the parent's broker
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)  # --processes: camera numbering
    args = parser.parse_args()
    setup_logging("warning")
    logging.getLogger("pipeline").setLevel(logging.WARNING)
    broker = Broker() if args.sink == "kafka" and not args.bootstrap else None
    if broker is not None:
        broker.start()
    bootstrap = args.bootstrap or (broker.bootstrap if broker else "127.0.0.1:9")
    try:
        result = one_process(args, bootstrap) if args.processes == 1 else processes(args, bootstrap)
    finally:
        if broker is not None:
            broker.stop()
    print(json.dumps(result))
    return 0


def one_process(args, bootstrap: str) -> dict:
    from pipeline.config import ModelConfig
    from pipeline.s5_match import warm

    warm()  # the tracker's compiled round, read or built before the clock runs (the daemon does it at start)

    work = Path(tempfile.mkdtemp(prefix="bench-host-"))
    scene = Scene(args.objects, len(describe_onnx(ModelConfig(path=MODELS[args.model])).labels))
    names = [f"cam-{i:03d}" for i in range(args.first, args.first + args.cameras)]
    if args.fps:  # the frames the run will ask for (a second more for each 10, and the stop)
        scene.prepare(names, args.fps, (args.warmup + args.seconds) * 1.1 + 5)
    source = SyntheticCameras(args.fps)
    try:
        config = daemon_config(
            work / "host.yaml", {"path": MODELS[args.model], "backend": "tensorrt", "nms": args.nms}, bootstrap,
            [(name, f"rtsp://127.0.0.1:9/{name}", args.fps or None) for name in names],
            batching={"max_batch": args.max_batch}, kafka={"stop_timeout_s": 5})
        return asyncio.run(run(args, config, source, scene))
    finally:
        source.close()


def processes(args, bootstrap: str) -> dict:
    """`args.processes` daemons at once, the cameras split between them; their figures summed (CPU
    per frame: all their CPU over all their frames; latency: the worst process's quantile)."""
    import subprocess
    import sys

    shares = [args.cameras // args.processes + (i < args.cameras % args.processes) for i in range(args.processes)]
    firsts = [sum(shares[:i]) for i in range(args.processes)]
    own = ["--fps", str(args.fps), "--objects", str(args.objects), "--seconds", str(args.seconds), "--warmup",
           str(args.warmup), "--sink", args.sink, "--model", args.model, "--max-batch", str(args.max_batch),
           "--nms", args.nms, "--bootstrap", bootstrap]
    children = [subprocess.Popen([sys.executable, "-m", "scripts.bench.bench_host", "--cameras", str(n),
                                  "--first", str(first), *own], stdout=subprocess.PIPE, text=True)
                for n, first in zip(shares, firsts)]
    results = [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]
    total = {key: round(sum(r[key] for r in results), 1) for key in ("offered_per_s", "inferred_per_s",
                                                                      "published_per_s", "cpu_percent")}
    dropped: dict[str, float] = defaultdict(float)
    for r in results:
        for reason, n in r["dropped"].items():
            dropped[reason] += n
    cpu_us = sum(r["cpu_us_per_frame"] * r["inferred_per_s"] for r in results) / max(total["inferred_per_s"], 1)
    return {"cameras": args.cameras, "fps": args.fps, "objects": args.objects, "model": args.model,
            "sink": args.sink, "nms": args.nms, "processes": args.processes, "seconds": results[0]["seconds"],
            **total, "dropped": dict(dropped), "cpu_us_per_frame": round(cpu_us, 1),
            "cpu_percent_by_thread": [r["cpu_percent_by_thread"] for r in results],
            "capture_to_published_p50_s": max(r["capture_to_published_p50_s"] or 0 for r in results),
            "capture_to_published_p99_s": max(r["capture_to_published_p99_s"] or 0 for r in results),
            "per_process": [{k: r[k] for k in ("cameras", "inferred_per_s", "cpu_percent")} for r in results]}


if __name__ == "__main__":
    raise SystemExit(main())
