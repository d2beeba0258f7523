"""Lanes: one engine with its batcher, trackers and inference pipeline, and the cameras it serves.

One lane per GPU (cameras put on GPUs by their `gpu:` or evenly; the CPU is one "GPU") and model:
the top-level model's (`default`), each of `models:` that a camera names, and a canary's for the
cameras `canary:` sends to it instead of the default. A camera is decoded once, on one GPU, and
each decoded frame goes to the lane of each of its models there (`Route`): each model batches
across its cameras with its own deadline, tracks on its own and numbers its own messages. Lanes
are built here from the config, once, at start; the fleet puts cameras on them (`lanes_for`),
and the Runtime starts and stops them.

Between the models of one GPU (or the CPU) there is no priority: each lane has its own batcher,
threads and engine, and they share the device as its scheduler (the OS's on the CPU, CUDA's
streams on a GPU) shares it. A model that cannot keep up drops its own stale or superseded
frames, counted per camera, and the other models' batchers do not wait for it.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.api.detect import DetectTarget
from pipeline.config import CANARY_MODEL, DEFAULT_MODEL, CameraConfig, Config, ModelConfig
from pipeline.core import EngineError, FrameResult, ModelRef
from pipeline.gpu import PathChoice, TransferCounter, assign_gpus
from pipeline.inference_worker import InferenceWorker
from pipeline.logs import log_event
from pipeline.memory import MemoryBudget
from pipeline.metrics import Metrics
from pipeline.preview import PreviewHub
from pipeline.s2_nvdec import nvdec_decoder
from pipeline.s3_batch import DeadlineBatcher
from pipeline.s4_infer import Engine
from pipeline.s4_infer.preprocess import CpuPreprocessor
from pipeline.s5_postprocess import detect_layout, detections_for_batch, detections_for_image
from pipeline.s5_classify import Cascade, Classifier
from pipeline.s5_looks import DeviceSampler
from pipeline.s5_track import Trackers, TrackSettings

log = logging.getLogger(__name__)
INFERENCE_JOIN_S = 5.0

# Called on a lane's inference thread with its model, a label naming it in metrics, its topic and the results.
Emit = Callable[[ModelRef, str, str, list[FrameResult]], None]


@dataclass
class Lane:
    """One engine with its batcher and inference pipeline, and the cameras it serves."""

    gpu: Any  # pipeline.gpu.Gpu, or None on the CPU path
    cameras: list[CameraConfig]
    engine: Engine
    batcher: DeadlineBatcher
    inference: InferenceWorker
    trackers: Trackers
    detect: DetectTarget  # what /v1/detect sends this lane's images through
    model: str = DEFAULT_MODEL  # which model: `default`, a name of `models`, or `canary`
    cascade: Cascade | None = None  # the classifiers on this model's detections

    @property
    def name(self) -> str:
        """"cpu" or the GPU index, with "-" and the model's name for any but the top-level model."""
        return f"{'cpu' if self.gpu is None else self.gpu.index}{'' if self.model == DEFAULT_MODEL else '-' + self.model}"


class Route:
    """Where one camera's decoded frames go: the batcher of each of its models' lanes. A reload
    that changes only the camera's models swaps the lanes (its decode goes on)."""

    def __init__(self, lanes: list[Lane]) -> None:
        self.lanes = tuple(lanes)
        self._lock = threading.Lock()  # a frame is offered to the old lanes or the new, never after a swap

    def put(self, frame, stop: threading.Event | None = None) -> bool:
        """On the camera's thread: offer the frame to each model (each keeps its latest only).
        With `stop` (a recording: back-pressure), first wait until every model took the previous
        frame, then put it; False if stopped first. Waiting holds no lock: a swap goes ahead and
        the frame goes to the new lanes."""
        if stop is None:
            with self._lock:
                for lane in self.lanes:
                    lane.batcher.put(frame)
            return True
        cam = frame.meta.camera_id
        while not stop.is_set():
            lanes = self.lanes
            if all(lane.batcher.wait_free(cam, 0.1) for lane in lanes):
                with self._lock:
                    if self.lanes is lanes:  # only this camera's thread fills its slots: still free
                        for lane in lanes:
                            lane.batcher.put(frame, patient=True)
                        return True
        return False

    def swap(self, lanes: list[Lane] | tuple) -> None:
        """Send frames to `lanes` from now on; once this returns no frame goes to a lane left."""
        with self._lock:
            self.lanes = tuple(lanes)


class Lanes:
    """The node's lanes and its GPUs. `config` gives the running config (a reload changes its
    cameras); `emit` takes each lane's results on its inference thread."""

    def __init__(self, config: Callable[[], Config], path: PathChoice, metrics: Metrics, *,
                 engine_loader: Callable[..., Engine], gpu_devices: Callable[[], int],
                 gpu_factory: Callable[..., Any], decoder_factory: Callable, preview: PreviewHub | None,
                 emit: Emit, budget: MemoryBudget | None = None) -> None:
        self._config, self.path, self._metrics = config, path, metrics
        self.budget = budget or MemoryBudget(metrics, None)
        self._engine_loader, self._gpu_devices, self._gpu_factory = engine_loader, gpu_devices, gpu_factory
        self._decoder_factory, self._preview, self._emit = decoder_factory, preview, emit
        self.all: list[Lane] = []
        self.gpus: dict[int, Any] = {}  # index -> pipeline.gpu.Gpu, shared by that GPU's lanes

    async def build(self, empty: bool) -> None:
        """Load every lane's engine (off the loop); `empty`: each starts with no cameras (with
        placement every lane is made, so that any camera can be taken, and the group fills them).
        Each model's memory is measured as it loads; over gpu.memory_budget_mb the start is refused."""
        for (gpu_index, model), cameras in self._camera_lanes().items():
            gpu = None if gpu_index is None else self._gpu(gpu_index)
            self.all.append(await asyncio.to_thread(self._build_lane, gpu, [] if empty else cameras, model))
        cfg = self._config()
        self.budget.check({name: model.memory_mb for name, model in {**cfg.detectors(), **cfg.models}.items()})

    def start(self) -> None:
        """Start every lane's inference threads."""
        for lane in self.all:
            lane.inference.start()

    def close_batchers(self) -> None:
        """Stop taking frames: inference drains what is queued and ends."""
        for lane in self.all:
            lane.batcher.close()

    async def stop_inference(self) -> None:
        """Join every lane's inference threads (after close_batchers)."""
        for lane in self.all:
            if not await asyncio.to_thread(lane.inference.stop, INFERENCE_JOIN_S):
                log_event(log, logging.WARNING, "inference thread did not stop in time", lane=lane.name)

    def close(self) -> None:
        """Free the engines and pipelines, then the GPUs (on the loop's thread, which made them)."""
        for lane in self.all:
            lane.engine.close()
            lane.inference.close()
            lane.trackers.close()
            if lane.cascade is not None:
                lane.cascade.close()
        for gpu in self.gpus.values():  # after everything that holds GPU memory
            gpu.close()

    def detect_targets(self) -> list[DetectTarget]:
        """The lanes of the top-level model (else of the first of `models`), for /v1/detect (a
        canary's lane serves only its cameras)."""
        models = [name for name in self._config().detectors() if name != CANARY_MODEL]
        return [lane.detect for lane in self.all if models and lane.model == models[0]]

    def health(self) -> tuple[bool, dict]:
        """Alive: every lane's inference threads run and its engine freed a buffer in the last 30 s."""
        if not self.all:
            return True, {"inference": "starting"}
        lanes = {lane.name: lane.inference.health() for lane in self.all}
        return all(h["healthy"] for h in lanes.values()), {"inference": lanes}

    # ------------------------------------------------------------------ cameras on lanes
    def lanes_for(self, camera: CameraConfig) -> list[Lane] | None:
        """The lanes a camera's frames go to, one per model it names, all on one GPU: the GPU of
        a lane that lists it (put there at start), else its `gpu:`, else the least loaded. None
        (logged) when a model has no lane there: it was added by a reload (needs a restart)."""
        names = self._config().models_of(camera)
        listed = [lane for lane in self.all if any(c.id == camera.id for c in lane.cameras)]
        if listed:
            gpu = listed[0].gpu
        elif camera.gpu is not None and self.path.on_gpu:
            gpu = next((lane.gpu for lane in self.all if lane.gpu.index == camera.gpu), None)
        else:  # of the GPUs with a lane for each of its models, the one whose first model's lane is least loaded
            first = [lane for lane in self.all if lane.model == names[0] and all(
                any(other.model == name and other.gpu is lane.gpu for other in self.all) for name in names)]
            gpu = min(first, key=lambda lane: len(lane.cameras)).gpu if first else None
        lanes = [next((lane for lane in self.all if lane.model == name and lane.gpu is gpu), None) for name in names]
        missing = [name for name, lane in zip(names, lanes) if lane is None]
        if missing or (gpu is None and self.path.on_gpu):
            log_event(log, logging.ERROR, "camera not started: no lane for its GPU and models; restart to use it",
                      camera=camera.id, gpu=camera.gpu, models=missing or names)
            return None
        return lanes  # type: ignore[return-value]

    def decoder_for(self, camera: CameraConfig, lanes: list[Lane]) -> Callable:
        """The decoder factory of one camera: NVDEC on its lanes' GPU (its frame pool deep enough
        for every lane to hold its share), or the CPU decoder."""
        if self.path.decoder != "nvdec":
            return self._decoder_factory
        count = functools.partial(lambda cam, kind: self._metrics.source_errors.labels(cam, kind).inc(), camera.id)
        depth = sum(InferenceWorker.frames_in_flight(lane.engine.concurrency) for lane in lanes)
        gpu = lanes[0].gpu
        return functools.partial(nvdec_decoder, gpu=gpu, on_event=count, pool_frames=depth,
                                 reserve=functools.partial(self.budget.reserve_frames, gpu, camera.id),
                                 release=functools.partial(self.budget.release_frames, gpu))

    def _camera_lanes(self) -> dict[tuple[int | None, str], list[CameraConfig]]:
        """(GPU index or None for the CPU, model) -> its cameras, in config order; only pairs with
        cameras get a lane (with none, the top-level model's, or the first of `models`)."""
        cfg = self._config()
        placed: dict[str, int | None] = {c.id: None for c in cfg.cameras}
        gpus: list[int | None] = [None]
        if self.path.on_gpu:
            gpus = cfg.gpu.devices or list(range(self._gpu_devices()))
            placed = assign_gpus({c.id: c.gpu for c in cfg.cameras}, gpus)
        lanes: dict[tuple[int | None, str], list[CameraConfig]] = {}
        for camera in cfg.cameras:
            for model in cfg.models_of(camera):
                lanes.setdefault((placed[camera.id], model), []).append(camera)
            if placed[camera.id] is not None:
                self._metrics.camera_gpu.labels(camera.id).set(placed[camera.id])
        # a replica whose share is empty still loads the model: ready, and able to take cameras a reload adds
        return lanes or {(gpus[0], next(iter(cfg.detectors()))): []}

    def _gpu(self, index: int):
        """The Gpu of `index`, made once, on the loop's thread: the thread that closes it at
        shutdown (pycuda releases a context only on the thread that retained it)."""
        if index not in self.gpus:  # making a Gpu imports pycuda: GPU path only
            transfers = TransferCounter(
                lambda direction, n: self._metrics.gpu_copy_bytes.labels(str(index), direction).inc(n))
            self.gpus[index] = self._gpu_factory(index, transfers)
        return self.gpus[index]

    # ------------------------------------------------------------------ one lane
    def _build_lane(self, gpu, cameras: list[CameraConfig], name: str = DEFAULT_MODEL) -> Lane:
        """Load one model's engine for one GPU (or the CPU) and build its batcher and inference pipeline."""
        cfg, path = self._config(), self.path
        model = cfg.detectors()[name]
        gpu_index = None if gpu is None else gpu.index
        lowest = cfg.lowest_confidence(model)
        engine, preprocessors, max_batch = self.budget.measure(gpu, name, functools.partial(
            self._load_engine, model, gpu, lowest))
        info = engine.info
        model_ref = ModelRef(cfg.message_name(name), info.sha256, engine.backend)
        self._metrics.model_info.labels(info.name, info.sha256, engine.backend).set(1)
        layout = model.layout if model.layout != "auto" else detect_layout(
            info.output_shape, len(info.labels) or None, info.metadata
        )
        log_event(log, logging.INFO, "lane ready", gpu=gpu_index, cameras=len(cameras), layout=layout,
                  model=name, file=info.name, backend=engine.backend, topic=cfg.topic_of(name),
                  input_size=info.input_spec.size)
        if max_batch != cfg.batching.max_batch:
            log_event(log, logging.INFO, "batch size capped", configured=cfg.batching.max_batch,
                      used=max_batch, why="model's fixed batch or engine runs batches in parallel")
        batcher = DeadlineBatcher(
            max_batch, cfg.batching.max_wait_ms / 1000, cfg.batching.max_frame_age_ms / 1000,
            on_drop=functools.partial(self._dropped, f"{model_ref.name}@{info.sha256[:12]}"),
            request_queue=cfg.api.detect.queue,
        )
        trackers = Trackers(functools.partial(self._track_settings, model), self._metrics,
                            functools.partial(DeviceSampler, gpu) if path.decoder == "nvdec" else None)  # looks on the GPU
        cascade = self._cascade(name, gpu, info.labels)
        settings = dict(layout=layout, labels=info.labels, confidence=lowest, iou=model.iou,
                        max_detections=model.max_detections)  # weak boxes too, for tracking: Trackers publishes the confident
        postprocess = functools.partial(detections_for_image, **settings)  # one image: /v1/detect's
        postprocess_batch = functools.partial(_postprocess_batch, **settings)
        runs = engine.concurrency
        emit = functools.partial(self._emit, model_ref, f"{model_ref.name}@{info.sha256[:12]}", cfg.topic_of(name))
        thread = ("" if gpu_index is None else f"gpu{gpu_index}") + ("" if name == DEFAULT_MODEL else name)
        inference = InferenceWorker(batcher.next_batch, preprocessors, engine.infer, runs, postprocess,
                                    emit, self._metrics, name=thread,
                                    keep_pictures=functools.partial(self._offer_preview, name) if self._preview else None,
                                    track=trackers.track, postprocess_batch=postprocess_batch,
                                    track_batch=trackers.track_batch, classify=cascade)
        detect = DetectTarget(batcher.put_request, batcher.requests_waiting, model_ref, info.labels, model.confidence,
                              gpu if path.decoder == "nvdec" else None, floor=getattr(engine, "nms_floor", None))
        return Lane(gpu, cameras, engine, batcher, inference, trackers, detect, name, cascade)

    def _load_engine(self, model: ModelConfig, gpu, confidence: float) -> tuple[Engine, list, int]:
        """A lane's engine, its preprocessors (their input buffers) and its batch size: what its
        memory is measured over. On the CPU the engine runs once at that batch, so that ONNX
        Runtime's arena holds one run's activations when it is measured (and no first frame waits)."""
        cfg = self._config()
        engine = self._engine_loader(model, backend=self.path.backend, gpu=gpu, max_batch=cfg.batching.max_batch,
                                     confidence=confidence)
        spec = engine.info.input_spec
        max_batch = min(cfg.batching.max_batch, spec.batch or cfg.batching.max_batch,
                        engine.max_useful_batch or cfg.batching.max_batch)
        if self.path.decoder == "nvdec":  # frames are on the GPU: letterbox them there
            preprocessors = engine.preprocessors(engine.concurrency + 1, max_batch)
        else:
            preprocessors = [CpuPreprocessor(spec) for _ in range(engine.concurrency + 1)]
        if gpu is None and engine.backend == "onnxruntime":
            side = spec.size
            engine.infer(np.zeros((max_batch, 3, spec.height or side, spec.width or side), np.float32))
        return engine, preprocessors, max_batch

    def _dropped(self, model: str, camera: str, reason: str) -> None:
        """A lane's batcher dropped a camera's frame: counted per camera, and per camera and model."""
        self._metrics.frames_dropped.labels(camera, reason).inc()
        self._metrics.model_frames_dropped.labels(camera, model, reason).inc()

    def _cascade(self, detector: str, gpu, labels: tuple[str, ...]) -> Cascade | None:
        """Load the classifiers on one detector's detections (on its lane's GPU), or None."""
        cfg, loaded = self._config(), []
        for name, model in cfg.classifiers_on(detector).items():
            wanted = model.on.classes
            unknown = [label for label in wanted or () if label not in labels]
            if unknown:
                raise EngineError(f"models.{name}.on.classes: {', '.join(map(repr, unknown))} not a class of model "
                                  f"{detector!r} (its classes: {', '.join(labels)}); name its labels")
            engine = self.budget.measure(gpu, name, functools.partial(
                self._engine_loader, model, backend=self.path.backend, gpu=gpu, max_batch=cfg.batching.max_batch))
            self._metrics.model_info.labels(name, engine.info.sha256, engine.backend).set(1)
            size = engine.info.input_spec.height
            sampler = DeviceSampler(gpu, size, 1.0) if self.path.decoder == "nvdec" and size else None
            ids = None if wanted is None else frozenset(labels.index(label) for label in wanted)
            loaded.append(Classifier(name, engine, ids, sampler))
            log_event(log, logging.INFO, "classifier ready", model=name, on=detector, classes=wanted or "all",
                      labels=list(engine.info.labels), input_size=size, backend=engine.backend)
        if not loaded:
            return None
        stage = self._metrics.stage_seconds.labels("classify")
        return Cascade(loaded, stage.observe, cfg.batching.max_batch * 8)

    def _offer_preview(self, model: str, frames, results) -> None:
        """The live preview shows each camera's first model's boxes (the others' lanes offer nothing)."""
        if not self._preview.watching:
            self._preview.offer((), ())  # lets it release what it kept
            return
        cfg = self._config()
        first = {c.id: cfg.models_of(c)[0] for c in cfg.cameras}
        kept = [(f, r) for f, r in zip(frames, results) if first.get(r.meta.camera_id) == model]
        if kept:
            self._preview.offer([f for f, _ in kept], [r for _, r in kept])

    def _track_settings(self, model: ModelConfig, camera_id: str) -> TrackSettings:
        """A camera's tracking settings (read at its first frame, so a reload's apply to a restarted camera)."""
        config = self._config()
        camera = next((c for c in config.cameras if c.id == camera_id), None)
        if camera is None:
            return TrackSettings.of(config.tracking, model.confidence)
        return TrackSettings.of(config.tracking_for(camera), model.confidence, camera.fps)


def _postprocess_batch(outputs, letterboxes, **settings):
    """The finish stage's postprocessing: the whole batch at once (its outputs as one array)."""
    return detections_for_batch(np.asarray(outputs), letterboxes=letterboxes, **settings)
