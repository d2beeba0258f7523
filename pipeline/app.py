"""The Runtime: builds every stage from a Config, runs until a signal, and stops them in order.

Threads: one per camera (demux + decode), and per lane the inference pipeline's (prepare, K
engine runs, finish: see inference_worker); everything else (Kafka, HTTP, signals) runs on one
asyncio loop. Results and state changes cross into the loop with `call_soon_threadsafe`; every
hand-off is bounded and every drop counted.

A lane is one engine with its batcher and inference pipeline: one per GPU on the GPU path
(cameras placed by `gpu:` or evenly), a single one on the CPU path, and a second one beside each
for the cameras a canary model serves (`canary:`).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import CameraConfig, Config, ConfigError, ModelConfig, load_config
from pipeline.core import CameraState, EngineError, FrameResult, ModelRef
from pipeline.gpu import Gpu, GpuProbe, PathChoice, TransferCounter, choose_path, nvdec_problem, place_cameras, probe
from pipeline.native_output import NativeStdout
from pipeline.placement import camera_cost, default_capacity
from pipeline.placement_group import Assignment, GroupMember, control_topic, placement_map
from pipeline.api.detect import DetectService, DetectTarget
from pipeline.api.server import Endpoints, HttpServer, load_tokens
from pipeline.inference_worker import InferenceWorker
from pipeline.logs import add_secrets, log_event
from pipeline.metrics import Metrics
from pipeline.preview import PreviewHub
from pipeline.reload import plan_reload
from pipeline.s1_source import CameraWorker, ffmpeg_warnings_on
from pipeline.s2_decode import cpu_decoder
from pipeline.s2_nvdec import nvdec_decoder
from pipeline.s3_batch import DeadlineBatcher
from pipeline.s4_infer import Engine, load_engine
from pipeline.s4_infer.preprocess import CpuPreprocessor
from pipeline.s5_postprocess import detect_layout, detections_for_image
from pipeline.s5_track import Trackers, TrackSettings
from pipeline.s6_publish import (
    KafkaPublisher, Outgoing, encode_detections, encode_status, rfc3339_ms, security_options,
)
from pipeline.systemd import SystemdNotifier

log = logging.getLogger(__name__)
CAMERA_JOIN_S = 2.0
INFERENCE_JOIN_S = 5.0
STATUS_INTERVAL_S = 10.0  # how often systemd's STATUS line is refreshed when there is no watchdog


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
    canary: bool = False  # serves `canary.cameras` with `canary.model`

    @property
    def name(self) -> str:
        """"cpu" or the GPU index, with "-canary" for the canary model's lane."""
        return f"{'cpu' if self.gpu is None else self.gpu.index}{'-canary' if self.canary else ''}"


class Runtime:
    """One daemon instance: startup -> run until SIGINT/SIGTERM -> orderly shutdown."""

    def __init__(
        self,
        config: Config,
        *,
        engine_loader: Callable[..., Engine] = load_engine,
        decoder_factory: Callable | None = None,
        gpu_probe: Callable[[], GpuProbe] = probe,
        gpu_factory: Callable[..., Any] = Gpu,
        nvdec_check: Callable[[], str | None] = nvdec_problem,
        config_path: Path | None = None,
        notifier: SystemdNotifier | None = None,
        api_tokens: list[str] | None = None,
    ) -> None:
        self.config = config
        self._notifier = notifier or SystemdNotifier(None)
        self._config_path = config_path  # re-read on SIGHUP
        self.run_id = uuid.uuid4().hex  # in every message: with camera and seq, a message's identity
        self.metrics = Metrics()
        self._engine_loader = engine_loader
        self._decoder_factory = decoder_factory or functools.partial(cpu_decoder, deblock=config.source.deblock)
        self._gpu_probe = gpu_probe
        self._gpu_factory = gpu_factory
        self._nvdec_check = nvdec_check
        self._native_stdout: NativeStdout | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._lanes: list[Lane] = []
        self._gpus: dict[int, Any] = {}  # index -> pipeline.gpu.Gpu, shared by that GPU's lanes
        self._path: PathChoice | None = None
        self._publisher = KafkaPublisher(config.kafka, self.metrics)
        self._cameras: dict[str, CameraWorker] = {}
        self._camera_lane: dict[str, Lane] = {}
        self._reloading: asyncio.Task | None = None
        self._last_state: dict[str, CameraState] = {}
        self.preview = PreviewHub(on_encode=self.metrics.preview_jpegs.inc) if config.metrics.preview else None
        self._reasons: dict[str, str] = {}  # camera -> its last state change's reason (/v1/cameras)
        placement = config.placement
        self._member: GroupMember | None = None  # placement.mode kafka-group: our membership
        self.node = (placement.node_id or socket.gethostname()) if placement.mode == "kafka-group" else None
        self._reported_unplaced: set[str] = set()
        detect = (DetectService(self._detect_targets, config.api.detect, self.metrics.detect_seconds.observe)
                  if config.api.detect.enabled else None)
        if detect is not None:
            self.metrics.detect_queue_depth.set_function(detect.waiting)
        tokens = load_tokens(config.api) if api_tokens is None else api_tokens
        add_secrets(tokens)
        self._http = HttpServer(config.metrics.host, config.metrics.port, config.api, tokens, Endpoints(
            metrics=self.metrics.render, healthz=self.healthz, readyz=self.readyz, cameras=self.camera_list,
            preview=self.preview, camera_states=self.camera_states, detect=detect,
            count=lambda endpoint, status: self.metrics.http_requests.labels(endpoint, str(status)).inc()))

    # ------------------------------------------------------------------ life cycle
    async def run(self) -> int:
        """Run until stopped by a signal (or `request_stop`); return the process exit code."""
        self._loop = asyncio.get_running_loop()
        restore = self._capture_signals()
        health_loop = None
        try:
            await self._startup()
            log_event(log, logging.INFO, "running", cameras=len(self._cameras),
                      metrics=f"{self.config.metrics.host}:{self._http.bound_port}",
                      **({"placement": f"group {self.config.placement.group}, node {self.node}: cameras as the "
                          "group assigns them"} if self._member is not None else {}))
            self._notifier.ready(self.status_line())
            if self._notifier.enabled:
                health_loop = asyncio.get_running_loop().create_task(self._notify_health())
            await self._stop.wait()
        finally:
            self._notifier.stopping()
            if health_loop is not None:
                health_loop.cancel()
                await asyncio.gather(health_loop, return_exceptions=True)
            await self._shutdown()
            self._notifier.close()
            restore()
        return 0

    async def _notify_health(self) -> None:
        """Pet systemd's watchdog while the inference is alive; a hung pipeline stops petting it,
        so systemd restarts the service."""
        interval = self._notifier.watchdog_interval_s or STATUS_INTERVAL_S
        warned = False
        while True:
            await asyncio.sleep(interval)
            healthy, detail = self.healthz()
            if healthy:
                self._notifier.watchdog(self.status_line())
                warned = False
            elif not warned:
                log_event(log, logging.ERROR, "unhealthy; not petting the systemd watchdog", detail=detail)
                warned = True

    def status_line(self) -> str:
        """One line for `systemctl status`: cameras streaming and the broker's state."""
        streaming = sum(1 for w in self._cameras.values() if w.state == CameraState.STREAMING)
        kafka = "connected" if self._publisher.connected else "not connected"
        line = f"{streaming}/{len(self._cameras)} cameras streaming; Kafka {kafka}"
        spool = self._publisher.spool_health()
        return line if spool["state"] == "ok" else f"{line}; spool degraded: {spool['reason']}"

    def request_stop(self) -> None:
        """Begin an orderly shutdown (safe to call from the loop)."""
        self._stop.set()

    async def _startup(self) -> None:
        cfg = self.config
        await self._http.start()
        self._path = path = await self._checked_path()
        if path.on_gpu:
            self.metrics.watch_gpus()
        log_event(log, logging.INFO, "execution path", backend=path.backend, decoder=path.decoder, why=path.why)
        grouped = cfg.placement.mode == "kafka-group"
        for (gpu_index, canary), cameras in self._camera_lanes().items():
            gpu = None if gpu_index is None else self._gpu(gpu_index)
            # with placement, every lane is made (so any camera can be taken) and starts empty
            self._lanes.append(await asyncio.to_thread(self._build_lane, gpu, [] if grouped else cameras, canary))
        await self._publisher.start()
        ffmpeg_warnings_on()  # the camera threads count RTP packet loss from them
        for lane in self._lanes:
            lane.inference.start()
            for camera in list(lane.cameras):
                self._start_camera(camera, lane)
        if grouped:
            await self._join_placement_group()

    async def _checked_path(self) -> PathChoice:
        """The execution path; NVDEC only where it can work (checked once, here: a missing video
        library is one line at start, not an error loop in every camera). With gpu.decoder auto
        the cameras are then decoded on the CPU; with nvdec the start fails."""
        cfg = self.config
        path = choose_path(cfg.model.backend, cfg.gpu.decoder, self._gpu_probe())
        if path.decoder != "nvdec":
            return path
        problem = await asyncio.to_thread(self._nvdec_check)
        if problem is None:
            self._native_stdout = NativeStdout(lambda kind: self.metrics.native_output_lines.labels(
                "PyNvVideoCodec", kind).inc())
            self._native_stdout.start()
            return path
        if cfg.gpu.decoder == "nvdec":
            raise EngineError(f"{problem}; or set gpu.decoder: pyav (or auto) to decode on the CPU")
        log_event(log, logging.WARNING, "NVDEC unusable; decoding on the CPU (PyAV) instead", why=problem)
        return PathChoice(path.backend, "pyav", f"{path.why}; {problem}")

    # ------------------------------------------------------------------ placement (several nodes)
    async def _join_placement_group(self) -> None:
        cfg = self.config
        placement = cfg.placement
        capacity = placement.capacity or default_capacity(len(self._gpus), os.cpu_count() or 1, self._path.on_gpu)
        self._member = GroupMember(
            bootstrap=cfg.kafka.bootstrap_servers, group=placement.group, node=self.node, capacity=capacity,
            costs=lambda: {c.id: camera_cost(c.fps, c.cost) for c in self.config.cameras},
            apply=self._apply_assignment, session_timeout_s=placement.session_timeout_s,
            heartbeat_s=placement.heartbeat_s, rebalance_timeout_s=placement.rebalance_timeout_s,
            client_options=security_options(cfg.kafka))
        self.metrics.placement_capacity.set(capacity)
        await self._member.start()

    async def _apply_assignment(self, assignment: Assignment) -> set[str]:
        """Run exactly the cameras the group gave this node: stop the others (those moving away
        first, so a camera never runs on two nodes), start the new ones; the rest are untouched."""
        known = {c.id: c for c in self.config.cameras}
        wanted = {cam for cam in assignment.cameras if cam in known}
        if self._stop.is_set():  # shutting down: start nothing more
            wanted = set()
        for cam in assignment.overlaps:
            if cam in self._cameras:
                self.metrics.placement_overlaps.labels(cam).inc()
                log_event(log, logging.WARNING, "camera ran on another node too while this one was cut off from "
                          "Kafka; stopped here", camera=cam, node=self.node, generation=assignment.generation)
        stopped = [cam for cam in list(self._cameras) if cam not in wanted]
        for cam in stopped:
            await self._stop_camera(cam)
        started = []
        for camera in self.config.cameras:
            if camera.id in wanted and camera.id not in self._cameras:
                lane = self._lane_for(camera)
                if lane is not None:
                    self._start_camera(camera, lane)
                    started.append(camera.id)
        self._placement_view(assignment)
        log_event(log, logging.INFO, "placement applied", node=self.node, generation=assignment.generation,
                  cameras=sorted(self._cameras), started=started, stopped=stopped, moving=assignment.moving,
                  unplaced=assignment.unplaced)
        return set(self._cameras)

    def _placement_view(self, assignment: Assignment) -> None:
        """Metrics; and from the plan's maker: the map on the control topic, unplaced cameras on the status topic."""
        costs = {c.id: camera_cost(c.fps, c.cost) for c in self.config.cameras}
        self.metrics.placement_cameras.set(len(self._cameras))
        self.metrics.placement_load.set(sum(costs.get(cam, 0) for cam in self._cameras))
        self.metrics.placement_unplaced.set(len(assignment.unplaced))
        self.metrics.placement_rebalances.inc()
        if not assignment.led:
            return
        group = self.config.placement.group
        self._publisher.offer(Outgoing(control_topic(group), group, placement_map(assignment, group)))
        total = sum(node["capacity"] for node in assignment.nodes.values())
        for cam in sorted(set(assignment.unplaced) - self._reported_unplaced):
            self._publish_status(cam, CameraState.STOPPED, f"unplaced: no node of group {group} has room for it "
                                 f"(cost {costs.get(cam, 0):g} 1080p-frames/s; the group's capacity {total:g}); add a "
                                 "node or raise placement.capacity", time.time())
        self._reported_unplaced = set(assignment.unplaced)

    def _start_camera(self, camera: CameraConfig, lane: Lane) -> None:
        worker = CameraWorker(camera, self.config.source, self._camera_decoder(camera, lane),
                              lane.batcher.put, self.metrics, self._on_camera_state)
        self._cameras[camera.id] = worker
        self._camera_lane[camera.id] = lane
        if camera not in lane.cameras:
            lane.cameras.append(camera)
        worker.start()

    async def _stop_camera(self, camera_id: str) -> None:
        worker, lane = self._cameras.pop(camera_id), self._camera_lane.pop(camera_id)
        if not await asyncio.to_thread(worker.stop, CAMERA_JOIN_S):
            log_event(log, logging.WARNING, "camera thread still blocked; abandoning it", camera=camera_id)
        lane.batcher.remove_camera(camera_id)
        lane.trackers.forget(camera_id)
        if self.preview is not None:
            self.preview.forget(camera_id)
        lane.cameras[:] = [c for c in lane.cameras if c.id != camera_id]

    # ------------------------------------------------------------------ hot reload (SIGHUP)
    async def reload(self) -> bool:
        """Re-read the config file and apply its camera list; False (running config kept) when
        the new file is invalid: its problems are logged exactly as validate-config prints them."""
        if self._config_path is None:
            log_event(log, logging.WARNING, "no config file to reload")
            return False
        try:
            new = await asyncio.to_thread(load_config, self._config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log_event(log, logging.ERROR, "config reload rejected; running config kept", problem=problem)
            self.metrics.config_reloads.labels("rejected").inc()
            return False
        plan = plan_reload(self.config, new)
        if plan.needs_restart:
            log_event(log, logging.WARNING, "config changes outside cameras take effect at the next start",
                      sections=list(plan.needs_restart))
        add_secrets(new.secrets())
        ran_here = set(self._cameras)
        for camera_id in [*plan.removed, *(c.id for c in plan.changed)]:
            if camera_id in ran_here:  # with placement: only what this node runs
                await self._stop_camera(camera_id)
        self.config = self.config.model_copy(update={"cameras": new.cameras})
        grouped = self._member is not None  # then the group places added cameras; a changed one restarts where it ran
        for camera in [*plan.changed, *([] if grouped else plan.added)]:
            lane = self._lane_for(camera) if not grouped or camera.id in ran_here else None
            if lane is not None:
                self._start_camera(camera, lane)
        if grouped:
            self._member.request_rejoin()  # the leader plans with the new list
        self.metrics.config_reloads.labels("applied").inc()
        log_event(log, logging.INFO, "config reloaded", added=[c.id for c in plan.added],
                  removed=list(plan.removed), changed=[c.id for c in plan.changed],
                  unchanged=len(self._cameras) - len(plan.added) - len(plan.changed))
        return True

    def _lane_for(self, camera: CameraConfig) -> Lane | None:
        """The lane a camera added at run time goes to: of its model (main or canary), its GPU's
        or the least loaded."""
        canary = self._is_canary(camera)
        lanes = [lane for lane in self._lanes if lane.canary == canary]
        if camera.gpu is not None and self._path.on_gpu:
            lanes = [lane for lane in lanes if lane.gpu.index == camera.gpu]
        if not lanes:
            log_event(log, logging.ERROR, "camera not started: no lane for its GPU and model; restart to use it",
                      camera=camera.id, gpu=camera.gpu, canary=canary)
            return None
        return min(lanes, key=lambda lane: len(lane.cameras))

    def _is_canary(self, camera: CameraConfig) -> bool:
        return self.config.canary is not None and camera.id in self.config.canary.cameras

    def _camera_lanes(self) -> dict[tuple[int | None, bool], list[CameraConfig]]:
        """(GPU index or None for the CPU, canary?) -> its cameras, in config order; only pairs
        with cameras get a lane."""
        cfg = self.config
        placed: dict[str, int | None] = {c.id: None for c in cfg.cameras}
        gpus: list[int | None] = [None]
        if self._path.on_gpu:
            gpus = cfg.gpu.devices or list(range(self._gpu_probe().devices))
            placed = place_cameras({c.id: c.gpu for c in cfg.cameras}, gpus)
        lanes: dict[tuple[int | None, bool], list[CameraConfig]] = {}
        for camera in cfg.cameras:
            lanes.setdefault((placed[camera.id], self._is_canary(camera)), []).append(camera)
            if placed[camera.id] is not None:
                self.metrics.camera_gpu.labels(camera.id).set(placed[camera.id])
        # a replica whose share is empty still loads the model: ready, and able to take cameras a reload adds
        return lanes or {(gpus[0], False): []}

    def _gpu(self, index: int):
        """The Gpu of `index`, made once, on the loop's thread: the thread that closes it at
        shutdown (pycuda releases a context only on the thread that retained it)."""
        if index not in self._gpus:  # making a Gpu imports pycuda: GPU path only
            transfers = TransferCounter(
                lambda direction, n: self.metrics.gpu_copy_bytes.labels(str(index), direction).inc(n))
            self._gpus[index] = self._gpu_factory(index, transfers)
        return self._gpus[index]

    def _build_lane(self, gpu, cameras: list[CameraConfig], canary: bool = False) -> Lane:
        """Load the engine for one GPU (or the CPU) and build its batcher and inference pipeline."""
        cfg, path = self.config, self._path
        model = cfg.canary.model if canary else cfg.model
        gpu_index = None if gpu is None else gpu.index
        engine = self._engine_loader(model, backend=path.backend, gpu=gpu, max_batch=cfg.batching.max_batch)
        info = engine.info
        model_ref = info.ref(engine.backend)
        self.metrics.model_info.labels(info.name, info.sha256, engine.backend).set(1)
        layout = model.layout if model.layout != "auto" else detect_layout(
            info.output_shape, len(info.labels) or None, info.metadata
        )
        log_event(log, logging.INFO, "lane ready", gpu=gpu_index, cameras=len(cameras), layout=layout,
                  model=info.name, backend=engine.backend, canary=canary)
        max_batch = min(cfg.batching.max_batch, info.input_spec.batch or cfg.batching.max_batch,
                        engine.max_useful_batch or cfg.batching.max_batch)
        if max_batch != cfg.batching.max_batch:
            log_event(log, logging.INFO, "batch size capped", configured=cfg.batching.max_batch,
                      used=max_batch, why="model's fixed batch or engine runs batches in parallel")
        batcher = DeadlineBatcher(
            max_batch, cfg.batching.max_wait_ms / 1000, cfg.batching.max_frame_age_ms / 1000,
            on_drop=lambda cam, reason: self.metrics.frames_dropped.labels(cam, reason).inc(),
            request_queue=cfg.api.detect.queue,
        )
        trackers = Trackers(functools.partial(self._track_settings, model), self.metrics)
        postprocess = functools.partial(  # weak boxes too, for tracking; Trackers publishes the confident
            detections_for_image, layout=layout, labels=info.labels, confidence=self._lowest_confidence(model),
            iou=model.iou, max_detections=model.max_detections,
        )
        runs = engine.concurrency
        if path.decoder == "nvdec":  # frames are on the GPU: letterbox them there
            preprocessors = engine.preprocessors(runs + 1, max_batch)
        else:
            preprocessors = [CpuPreprocessor(info.input_spec) for _ in range(runs + 1)]
        emit = functools.partial(self._emit_results, model_ref, f"{info.name}@{info.sha256[:12]}")
        name = ("" if gpu_index is None else f"gpu{gpu_index}") + ("canary" if canary else "")
        inference = InferenceWorker(batcher.next_batch, preprocessors, engine.infer, runs, postprocess,
                                    emit, self.metrics, name=name,
                                    keep_pictures=self.preview.offer if self.preview else None,
                                    track=trackers.track)
        detect = DetectTarget(batcher.put_request, batcher.requests_waiting, model_ref, info.labels, model.confidence,
                              gpu if path.decoder == "nvdec" else None)
        return Lane(gpu, cameras, engine, batcher, inference, trackers, detect, canary)

    def _lowest_confidence(self, model: ModelConfig) -> float:
        """The threshold postprocessing keeps boxes at: tracking's weak boxes, where any camera is tracked."""
        cfg = self.config
        low = [cfg.tracking_for(c).low_confidence for c in cfg.cameras if cfg.tracking_for(c).enabled]
        if cfg.tracking.enabled:
            low.append(cfg.tracking.low_confidence)
        return min([model.confidence, *low])

    def _track_settings(self, model: ModelConfig, camera_id: str) -> TrackSettings:
        """A camera's tracking settings (read at its first frame, so a reload's apply to a restarted camera)."""
        camera = next((c for c in self.config.cameras if c.id == camera_id), None)
        cfg = self.config.tracking if camera is None else self.config.tracking_for(camera)
        max_age = cfg.max_age_s if camera is None or not camera.fps else max(cfg.max_age_s, 3 / camera.fps)
        return TrackSettings(model.confidence, cfg.enabled, cfg.low_confidence, cfg.match_iou,
                             max_age_s=max_age, jump_s=cfg.jump_s, max_tracks=cfg.max_tracks)

    def _camera_decoder(self, camera: CameraConfig, lane: Lane) -> Callable:
        """The decoder factory of one camera: NVDEC on its lane's GPU, or the CPU decoder."""
        if self._path.decoder != "nvdec":
            return self._decoder_factory
        count = functools.partial(lambda cam, kind: self.metrics.source_errors.labels(cam, kind).inc(), camera.id)
        return functools.partial(nvdec_decoder, gpu=lane.gpu, on_event=count,
                                 pool_frames=InferenceWorker.frames_in_flight(lane.engine.concurrency))

    async def _shutdown(self) -> None:
        started = time.monotonic()
        if self._reloading is not None:  # let a reload in progress finish starting or stopping cameras
            await asyncio.gather(self._reloading, return_exceptions=True)
        for worker in self._cameras.values():
            worker.request_stop()
        for lane in self._lanes:
            lane.batcher.close()
        for lane in self._lanes:
            if not await asyncio.to_thread(lane.inference.stop, INFERENCE_JOIN_S):
                log_event(log, logging.WARNING, "inference thread did not stop in time", lane=lane.name)
        blocked = [
            cam for cam, worker in self._cameras.items()
            if not await asyncio.to_thread(worker.stop, CAMERA_JOIN_S / max(1, len(self._cameras)))
        ]
        if blocked:
            log_event(log, logging.WARNING, "camera threads still blocked at shutdown; abandoning them",
                      cameras=blocked)
        await asyncio.sleep(0)  # run the result/status callbacks the threads scheduled last
        if self._member is not None:  # after the cameras stopped: they start elsewhere only once stopped here
            await self._member.stop()
        await self._publisher.stop(self.config.kafka.stop_timeout_s)
        await self._http.stop()
        for lane in self._lanes:
            lane.engine.close()
            lane.inference.close()
        for gpu in self._gpus.values():  # after everything that holds GPU memory; on the loop's thread
            gpu.close()
        if self._native_stdout is not None:
            self._native_stdout.stop()
        log_event(log, logging.INFO, "stopped", seconds=round(time.monotonic() - started, 2))

    def _capture_signals(self) -> Callable[[], None]:
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)

        def restore() -> None:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                signal.signal(sig, handler)

        return restore

    def _on_reload_signal(self) -> None:
        log_event(log, logging.INFO, "signal received; reloading the config", signal="SIGHUP")
        if self._reloading is not None and not self._reloading.done():
            log_event(log, logging.WARNING, "a reload is still running; this SIGHUP is ignored")
            return
        self._reloading = asyncio.get_running_loop().create_task(self._reload_notifying())

    async def _reload_notifying(self) -> None:
        self._notifier.reloading()
        try:
            await self.reload()
        finally:
            self._notifier.ready(self.status_line())

    def _on_signal(self, sig: signal.Signals) -> None:
        log_event(log, logging.INFO, "signal received; stopping", signal=signal.Signals(sig).name)
        self._stop.set()

    # ------------------------------------------------------------------ thread -> loop hand-offs
    def _emit_results(self, model: ModelRef, label: str, results: list[FrameResult]) -> None:
        """Called on a lane's inference thread; `label` names its model in the per-model metrics."""
        for result in results:
            cam = result.meta.camera_id
            self.metrics.model_frames.labels(cam, label).inc()
            self.metrics.model_detections.labels(cam, label).inc(len(result.detections))
        self._call_in_loop(self._publish_results, results, model)

    def _on_camera_state(self, camera_id: str, state: CameraState, reason: str) -> None:
        """Called on camera threads."""
        self._reasons[camera_id] = reason
        worker = self._cameras.get(camera_id)
        transport = worker.transport if worker is not None and state is CameraState.STREAMING else None
        self._call_in_loop(self._publish_status, camera_id, state, reason, time.time(), transport)

    def _call_in_loop(self, fn: Callable, *args) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop has closed during shutdown
            pass

    def _publish_results(self, results: list[FrameResult], model: ModelRef) -> None:
        topic = self.config.kafka.topic
        for result in results:
            if not result.detections and not self.config.kafka.publish_empty:
                continue
            cam = result.meta.camera_id
            self._publisher.offer(Outgoing(topic, cam, encode_detections(result, model, self.run_id, self.node)))

    def _publish_status(self, camera_id: str, state: CameraState, reason: str, at: float,
                        transport: str | None = None) -> None:
        previous = self._last_state.get(camera_id)
        self._last_state[camera_id] = state
        value = encode_status(camera_id, state, previous, reason, at, transport, self.node)
        self._publisher.offer(Outgoing(self.config.kafka.status_topic, camera_id, value))

    # ------------------------------------------------------------------ health
    def camera_states(self) -> dict[str, str]:
        """Camera id -> state, in config order."""
        return {cam: worker.state.value for cam, worker in self._cameras.items()}

    def camera_list(self) -> list[dict]:
        """The cameras for GET /v1/cameras (no URL: it may hold a password)."""
        now, out = time.time(), []
        elsewhere = self._placed_elsewhere()
        for camera in self.config.cameras:
            worker = self._cameras.get(camera.id)
            health = worker.health() if worker is not None else {"state": "not_started", "last_frame_age_s": None}
            age = health["last_frame_age_s"]
            entry = {"id": camera.id, "state": health["state"], "reason": self._reasons.get(camera.id),
                     "fps": camera.fps, "last_frame_at": None if age is None else rfc3339_ms(now - age),
                     "transport": worker.transport if worker is not None else None}
            if self._member is not None:  # which node runs it: this one, another, or none (unplaced)
                node = self.node if worker is not None else elsewhere.get(camera.id)
                state = entry["state"] if worker is not None else "unplaced" if node is None else "elsewhere"
                entry.update(node=node, state=state)
            out.append(entry)
        return out

    def _placed_elsewhere(self) -> dict[str, str]:
        """Camera -> the node the last plan gave it to (placement)."""
        nodes = self._member.view.nodes if self._member is not None else {}
        return {cam: node for node, info in nodes.items() for cam in info.get("cameras", [])}

    def _detect_targets(self) -> list[DetectTarget]:
        """The main model's lanes, for /v1/detect (a canary's lane serves only its cameras)."""
        return [lane.detect for lane in self._lanes if not lane.canary]

    def healthz(self) -> tuple[bool, dict]:
        """Alive: every lane's inference threads run and its engine freed a buffer in the last 30 s."""
        if not self._lanes:
            return True, {"inference": "starting"}
        lanes = {lane.name: lane.inference.health() for lane in self._lanes}
        return all(h["healthy"] for h in lanes.values()), {"inference": lanes}

    def readyz(self) -> tuple[bool, dict]:
        """Ready: model loaded, Kafka producer connected and at least one camera streaming. A spool
        whose disk refuses writes leaves it ready (messages still flow, held in memory) but is listed
        under `degraded`, with the reason."""
        cameras = {cam: w.health() for cam, w in self._cameras.items()}
        streaming = sum(1 for h in cameras.values() if h["state"] == CameraState.STREAMING.value)
        loaded = bool(self._lanes)
        # a replica whose share of the cameras is empty is ready doing nothing
        ready = loaded and self._publisher.connected and (streaming > 0 or not self._cameras)
        kafka = self._publisher.health()
        degraded = [kafka["spool"]["reason"]] if kafka["spool"]["state"] != "ok" else []
        body = {"degraded": degraded, "model_loaded": loaded, "kafka": kafka, "cameras_streaming": streaming,
                "cameras": cameras}
        if self._member is not None:
            view = self._member.view
            body["placement"] = {"group": self.config.placement.group, "node": self.node, "joined": view.joined,
                                 "generation": view.generation, "capacity": self._member.capacity,
                                 "nodes": view.nodes, "unplaced": view.unplaced, "moving": view.moving}
            if view.unplaced:
                degraded.append(f"{len(view.unplaced)} cameras unplaced ({', '.join(view.unplaced[:10])}): no node of "
                                f"group {self.config.placement.group} has room; add a node or raise placement.capacity")
        return ready, body

