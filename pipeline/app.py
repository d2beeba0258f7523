"""The Runtime: builds every part from a Config, runs until a signal, and stops them in order.

Threads: one per camera (demux + decode), and per lane the inference pipeline's (prepare, K
engine runs, finish: see inference_worker); everything else (Kafka, HTTP, signals) runs on one
asyncio loop. Results and state changes cross into the loop with `call_soon_threadsafe`; every
hand-off is bounded and every drop counted.

The parts: the lanes (pipeline.lanes: an engine with its batcher and inference pipeline, per GPU
and model), the fleet (pipeline.fleet: the one owner of the running cameras, which reload,
placement and shutdown all go through), the placement node (pipeline.placement.node, with
`placement.mode: kafka-group`), the publisher and the HTTP server. This module wires them and
keeps the lifecycle, the signals, the hand-offs from threads to the loop, and health.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.api.detect import DetectService
from pipeline.api.server import Endpoints, HttpServer, load_tokens
from pipeline.config import CameraConfig, Config, ConfigError, load_config
from pipeline.core import CameraState, EngineError, FrameResult, ModelRef
from pipeline.fleet import CAMERA_JOIN_S, Fleet
from pipeline.gpu import Gpu, GpuProbe, PathChoice, choose_path, nvdec_problem, probe
from pipeline.lanes import Lanes, Route
from pipeline.logs import add_secrets, log_event
from pipeline.memory import MemoryBudget
from pipeline.clips import ClipResult, ClipService, Recorder, SnapshotResult
from pipeline.messages import encode_clip, encode_detections, encode_snapshots, encode_status, rfc3339_ms
from pipeline.metrics import Metrics
from pipeline.native_output import NativeStdout
from pipeline.placement.node import PlacementNode
from pipeline.preview import PreviewHub
from pipeline.reload import plan_reload
from pipeline.s1_source import CameraWorker, ffmpeg_warnings_on
from pipeline.s2_decode import cpu_decoder
from pipeline.s4_infer import Engine
from pipeline.s4_infer.loader import load_engine
from pipeline.s6_publish import KafkaPublisher, Outgoing
from pipeline.systemd import SystemdNotifier

log = logging.getLogger(__name__)
STATUS_INTERVAL_S = 10.0  # how often systemd's STATUS line is refreshed when there is no watchdog
# the requests topic is made by the alerting consumer's first request: found this soon, so that
# request is still within the ring's late_s
REQUESTS_METADATA_MS = 2_000
CLIP_WRITER_STOP_S = 10.0  # at shutdown, for the clips the cameras' stop ended


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
        worker_factory: Callable[..., CameraWorker] = CameraWorker,
        member_options: dict | None = None,
        producer_factory: Callable | None = None,
        on_results: Callable[[list[FrameResult]], None] | None = None,
    ) -> None:
        self.config = config
        self._on_results = on_results  # each lane's results, on its inference thread (`analyze` sums them)
        self._notifier = notifier or SystemdNotifier(None)
        self._config_path = config_path  # re-read on SIGHUP
        self.run_id = uuid.uuid4().hex  # in every message: with camera and seq, a message's identity
        self.metrics = Metrics()
        self._engine_loader = engine_loader
        self._decoder_factory = decoder_factory or functools.partial(cpu_decoder, deblock=config.source.deblock)
        self._gpu_probe = gpu_probe
        self._gpu_factory = gpu_factory
        self._nvdec_check = nvdec_check
        self._worker_factory = worker_factory  # CameraWorker; tests hand in workers that stop when told
        self._native_stdout: NativeStdout | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._lanes: Lanes | None = None  # built at start, once the execution path is known
        self._path: PathChoice | None = None
        self._publisher = KafkaPublisher(config.kafka, self.metrics, producer_factory)
        self.preview = PreviewHub(on_encode=self.metrics.preview_jpegs.inc) if config.metrics.preview else None
        clips = config.clips
        self._recorder = (Recorder(clips.folder, pre_s=clips.pre_s, ring_bytes=int(clips.ring_mb * 2**20),
                                   max_age_s=clips.max_age_h * 3600, max_bytes=int(clips.max_gb * 2**30),
                                   on_done=self._clip_done, late_s=clips.late_s, on_snapshots=self._snapshots_done)
                          if clips.enabled else None)
        self._requests: asyncio.Task | None = None  # reads clips.requests_topic (clips.enabled)
        self._fleet = Fleet(lambda camera: self._lanes.lanes_for(camera), self._make_worker, self._camera_stopped)
        self._reloading: asyncio.Task | None = None
        self._last_state: dict[str, CameraState] = {}
        self._reasons: dict[str, str] = {}  # camera -> its last state change's reason (/v1/cameras)
        self._counters: dict[tuple[str, str], tuple] = {}  # (camera, model) -> its per-model metric children
        placement = config.placement
        self.node = (placement.node_id or socket.gethostname()) if placement.mode == "kafka-group" else None
        self._placement = (PlacementNode(lambda: self.config, self.node, self._fleet, self.metrics, self._publish_status,
                                         member_options=member_options)
                           if self.node is not None else None)
        detect = (DetectService(self._detect_targets, config.api.detect, self.metrics.detect_seconds.observe)
                  if config.api.detect.enabled else None)
        clip_service = (ClipService(self._recorder, lambda camera: camera in self._fleet, clips.pre_s, clips.post_s)
                        if self._recorder is not None else None)
        if detect is not None:
            self.metrics.detect_queue_depth.set_function(detect.waiting)
        tokens = load_tokens(config.api) if api_tokens is None else api_tokens
        add_secrets(tokens)
        self._http = HttpServer(config.metrics.host, config.metrics.port, config.api, tokens, Endpoints(
            metrics=self.metrics.render, healthz=self.healthz, readyz=self.readyz, cameras=self.camera_list,
            preview=self.preview, camera_states=self.camera_states, detect=detect, clips=clip_service,
            count=lambda endpoint, status: self.metrics.http_requests.labels(endpoint, str(status)).inc()))

    # ------------------------------------------------------------------ life cycle
    async def run(self, stopped_before: Callable[[], bool] = lambda: False) -> int:
        """Run until stopped by a signal (or `request_stop`); return the process exit code.
        `stopped_before`: whether a stop was asked for before this (then nothing starts)."""
        self._loop = asyncio.get_running_loop()
        restore = self._capture_signals()
        health_loop = None
        try:
            if stopped_before():
                log_event(log, logging.INFO, "signal received while starting; stopping")
                return 0
            await self._startup()
            log_event(log, logging.INFO, "running", cameras=len(self._fleet),
                      metrics=f"{self.config.metrics.host}:{self._http.bound_port}",
                      **({"placement": f"group {self.config.placement.group}, node {self.node}: cameras as the "
                          "group assigns them"} if self._grouped else {}))
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
        streaming = sum(1 for _, w in self._fleet.items() if w.state == CameraState.STREAMING)
        kafka = "connected" if self._publisher.connected else "not connected"
        line = f"{streaming}/{len(self._fleet)} cameras streaming; Kafka {kafka}"
        spool = self._publisher.spool_health()
        return line if spool["state"] == "ok" else f"{line}; spool degraded: {spool['reason']}"

    def request_stop(self) -> None:
        """Begin an orderly shutdown (safe to call from the loop)."""
        self._stop.set()

    @property
    def _grouped(self) -> bool:
        """Placement is on and this node has joined (or is joining) its group."""
        return self._placement is not None and self._placement.member is not None

    async def _startup(self) -> None:
        await self._http.start()
        if self._recorder is not None:
            self._recorder.start()
        self._path = path = await self._checked_path()
        if path.on_gpu:
            self.metrics.watch_gpus()
        log_event(log, logging.INFO, "execution path", backend=path.backend, decoder=path.decoder, why=path.why)
        self._lanes = Lanes(lambda: self.config, path, self.metrics, engine_loader=self._engine_loader,
                            gpu_devices=lambda: self._gpu_probe().devices, gpu_factory=self._gpu_factory,
                            decoder_factory=self._decoder_factory, preview=self.preview, emit=self._emit_results,
                            budget=MemoryBudget(self.metrics, self.config.gpu.memory_budget_mb,
                                                self.metrics.process_gpu_bytes))
        await self._lanes.build(empty=self._placement is not None)  # with placement, the group fills the lanes
        await self._publisher.start()
        ffmpeg_warnings_on()  # the camera threads count RTP packet loss from them
        self._lanes.start()
        if self._placement is None:
            await self._fleet.converge(self.config.cameras)
        else:
            await self._placement.start(len(self._lanes.gpus), path.on_gpu)
        if self._recorder is not None and self.config.clips.requests_topic is not None:
            self._requests = asyncio.get_running_loop().create_task(self._read_requests())

    async def _read_requests(self) -> None:
        """Serve the alert rules' clip and snapshot requests for the cameras running here."""
        from aiokafka import AIOKafkaConsumer

        from pipeline.evidence import RequestHandler, read_requests
        from pipeline.kafka_security import security_options

        kafka, clips = self.config.kafka, self.config.clips
        handler = RequestHandler(self._recorder, self._serves, clips.pre_s, clips.late_s)
        await read_requests(
            clips.requests_topic,
            lambda: AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, group_id=None,
                                     enable_auto_commit=False, auto_offset_reset="earliest",
                                     metadata_max_age_ms=REQUESTS_METADATA_MS, client_id=f"rtsp-pipeline-{self.node or 'clips'}",
                                     **security_options(kafka)),
            handler.handle, lambda outcome: self.metrics.clip_requests.labels(outcome).inc())

    def _serves(self, camera: str) -> bool:
        """Whether this node runs `camera` and is streaming it now (a request for it is served here)."""
        worker = self._fleet.get(camera)
        return worker is not None and worker.state == CameraState.STREAMING

    async def _checked_path(self) -> PathChoice:
        """The execution path; NVDEC only where it can work (checked once, here: a missing video
        library is one line at start, not an error loop in every camera). With gpu.decoder auto
        the cameras are then decoded on the CPU; with nvdec the start fails."""
        cfg = self.config
        path = choose_path(cfg.backend, cfg.gpu.decoder, self._gpu_probe())
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

    def _make_worker(self, camera: CameraConfig, route: Route) -> CameraWorker:
        """A camera's (unstarted) worker, feeding its models' batchers (decoded once for all), and
        its clip ring (clips.enabled)."""
        ring = {"ring": self._recorder.ring(camera.id)} if self._recorder is not None else {}
        return self._worker_factory(camera, self.config.source, self._lanes.decoder_for(camera, list(route.lanes)),
                                    route.put, self.metrics, self._on_camera_state, **ring)

    def _camera_stopped(self, camera_id: str) -> None:
        """A camera's thread ended and its lanes forgot it: so do the preview and the clip rings."""
        if self.preview is not None:
            self.preview.forget(camera_id)
        if self._recorder is not None:
            self._recorder.forget(camera_id)
            with contextlib.suppress(KeyError):  # no series until its first keyframe
                self.metrics.clip_ring_bytes.remove(camera_id)

    def _clip_done(self, result: ClipResult) -> None:
        """On the clip writer's thread: count it, and publish its clips/v1 message from the loop."""
        outcome = "failed" if result.failure else "ended_early" if result.ended_early else "written"
        self.metrics.clips.labels(result.camera, outcome).inc()
        level = logging.WARNING if result.failure else logging.INFO
        log_event(log, level, "clip " + ("failed" if result.failure else "written"), camera=result.camera,
                  clip=result.clip_id, reason=result.failure or result.ended_early, bytes=result.size)
        self._call_in_loop(self._publisher.offer, Outgoing(self.config.clips.topic, result.camera,
                                                            encode_clip(result, self.run_id, self.node)))

    def _snapshots_done(self, result: SnapshotResult) -> None:
        """On the clip writer's thread: count a request's snapshots, and publish its snapshots/v1 message."""
        for shot in result.snapshots:
            self.metrics.snapshots.labels(result.camera, "failed" if shot.failure else "written").inc()
            if shot.failure:
                log_event(log, logging.WARNING, "snapshot failed", camera=result.camera, snapshot=shot.name,
                          reason=shot.failure)
        self._call_in_loop(self._publisher.offer, Outgoing(self.config.clips.topic, result.camera,
                                                            encode_snapshots(result, self.run_id, self.node)))

    async def _shutdown(self) -> None:
        started = time.monotonic()
        if self._reloading is not None:  # let a reload in progress finish starting or stopping cameras
            await asyncio.gather(self._reloading, return_exceptions=True)
        if self._requests is not None:
            self._requests.cancel()
            await asyncio.gather(self._requests, return_exceptions=True)
        await self._fleet.close()  # every camera asked to stop; later changes (assignments) do nothing
        if self._lanes is not None:
            self._lanes.close_batchers()
            await self._lanes.stop_inference()
        blocked = await self._fleet.join(CAMERA_JOIN_S)
        if blocked:
            log_event(log, logging.WARNING, "camera threads still blocked at shutdown; abandoning them",
                      cameras=blocked)
        if self._recorder is not None:  # the cameras stopped: clips still collecting ended; write them
            if not await asyncio.to_thread(self._recorder.stop, CLIP_WRITER_STOP_S):
                log_event(log, logging.WARNING, "clip writer still busy at shutdown; its queue is lost")
        await asyncio.sleep(0)  # run the result/status callbacks the threads scheduled last
        if self._placement is not None:  # after the cameras stopped: they start elsewhere only once stopped here
            await self._placement.stop()
        await self._publisher.stop(self.config.kafka.stop_timeout_s)
        await self._http.stop()
        if self._lanes is not None:
            self._lanes.close()
        if self._native_stdout is not None:
            self._native_stdout.stop()
        log_event(log, logging.INFO, "stopped", seconds=round(time.monotonic() - started, 2))

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
        old = self.config
        self.config = self.config.model_copy(update={"cameras": new.cameras})
        reroute = [c.id for c in plan.changed if self._reroutable(old, c)]
        changed = [c.id for c in plan.changed if c.id not in reroute]
        if self._grouped:  # the group places added cameras; a changed one restarts where it ran
            change = await self._fleet.converge(lambda running: [c for c in new.cameras if c.id in running],
                                                restart=changed, reroute=reroute)
            self._placement.request_rejoin()  # the leader plans with the new list
        else:
            change = await self._fleet.converge(new.cameras, restart=changed, reroute=reroute)
        self.metrics.config_reloads.labels("applied").inc()
        log_event(log, logging.INFO, "config reloaded", added=[c.id for c in plan.added],
                  removed=list(plan.removed), changed=changed, models_changed=change.rerouted,
                  unchanged=len(new.cameras) - len(plan.added) - len(plan.changed))
        return True

    def _reroutable(self, old: Config, camera: CameraConfig) -> bool:
        """Whether a camera changed by a reload keeps its decode: only its models changed, and on
        the GPU path its decoder's frame pool (sized by its models' lanes) is deep enough."""
        before = next(c for c in old.cameras if c.id == camera.id)
        if before.model_copy(update={"models": camera.models}) != camera:
            return False
        grows = len(self.config.models_of(camera)) > len(old.models_of(before))
        return not (grows and self._path is not None and self._path.decoder == "nvdec")

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
    def _emit_results(self, model: ModelRef, label: str, topic: str, results: list[FrameResult]) -> None:
        """Called on a lane's inference thread, once a batch: counts each frame (`label` names its
        model in the per-model metrics), encodes the batch's messages here, off the loop, and
        hands them to the publisher in one call."""
        for result in results:
            cam = result.meta.camera_id
            frames, detections = self._model_counters(cam, label)
            frames.inc()
            detections.inc(len(result.detections))
        if self._recorder is not None:  # each track's best sighting, for snapshots
            feed = self._recorder.sightings.feed
            for result in results:
                if result.tracks is not None:
                    meta = result.meta
                    feed(meta.camera_id, model.name, meta.pts, meta.captured_at, result.detections)
        if self._on_results is not None:
            self._on_results(results)
        self._call_in_loop(self._encode_and_offer, results, model, topic)

    def _encode_and_offer(self, results, model, topic):
        empty = self.config.kafka.publish_empty
        messages = []
        for result in results:
            cam = result.meta.camera_id
            if result.detections or empty:
                messages.append(Outgoing(topic, cam, encode_detections(result, model, self.run_id, self.node),
                                         len(result.detections), result.meta.captured_at))
        if messages:
            self._publisher.offer_many(messages)

    def _model_counters(self, camera: str, label: str) -> tuple:
        """model_frames_total's and model_detections_total's children of (camera, model), looked up once."""
        key = (camera, label)
        found = self._counters.get(key)
        if found is None:
            found = self._counters[key] = (self.metrics.model_frames.labels(camera, label),
                                           self.metrics.model_detections.labels(camera, label))
        return found

    def _on_camera_state(self, camera_id: str, state: CameraState, reason: str) -> None:
        """Called on camera threads."""
        self._reasons[camera_id] = reason
        worker = self._fleet.get(camera_id)
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

    def _publish_status(self, camera_id: str, state: CameraState, reason: str, at: float,
                        transport: str | None = None) -> None:
        previous = self._last_state.get(camera_id)
        self._last_state[camera_id] = state
        value = encode_status(camera_id, state, previous, reason, at, transport, self.node)
        self._publisher.offer(Outgoing(self.config.kafka.status_topic, camera_id, value))

    # ------------------------------------------------------------------ health
    def camera_states(self) -> dict[str, str]:
        """Camera id -> state, in start order."""
        return {cam: worker.state.value for cam, worker in self._fleet.items()}

    def camera_worker(self, camera_id: str) -> CameraWorker | None:
        """A running camera's worker, or None."""
        return self._fleet.get(camera_id)

    def camera_reason(self, camera_id: str) -> str:
        """Why a camera is in its state (its last change's reason)."""
        return self._reasons.get(camera_id, "")

    def queued(self) -> int:
        """Messages spooled and not yet acknowledged by Kafka."""
        return self._publisher.health()["queued"]

    def camera_list(self) -> list[dict]:
        """The cameras for GET /v1/cameras (no URL: it may hold a password)."""
        now, out = time.time(), []
        elsewhere = self._placement.placed_elsewhere() if self._placement is not None else {}
        for camera in self.config.cameras:
            worker = self._fleet.get(camera.id)
            health = worker.health() if worker is not None else {"state": "not_started", "last_frame_age_s": None}
            age = health["last_frame_age_s"]
            entry = {"id": camera.id, "state": health["state"], "reason": self._reasons.get(camera.id),
                     "fps": camera.fps, "last_frame_at": None if age is None else rfc3339_ms(now - age),
                     "transport": worker.transport if worker is not None else None}
            if self._grouped:  # which node runs it: this one, another, or none (unplaced)
                node = self.node if worker is not None else elsewhere.get(camera.id)
                state = entry["state"] if worker is not None else "unplaced" if node is None else "elsewhere"
                entry.update(node=node, state=state)
            out.append(entry)
        return out

    def _detect_targets(self) -> list:
        """The main model's lanes, for /v1/detect."""
        return self._lanes.detect_targets() if self._lanes is not None else []

    def healthz(self) -> tuple[bool, dict]:
        """Alive: every lane's inference threads run and its engine freed a buffer in the last 30 s."""
        return self._lanes.health() if self._lanes is not None else (True, {"inference": "starting"})

    def readyz(self) -> tuple[bool, dict]:
        """Ready: model loaded, Kafka producer connected and at least one camera streaming. A spool
        whose disk refuses writes leaves it ready (messages still flow, held in memory) but is listed
        under `degraded`, with the reason."""
        cameras = {cam: w.health() for cam, w in self._fleet.items()}
        streaming = sum(1 for h in cameras.values() if h["state"] == CameraState.STREAMING.value)
        finished = sum(1 for h in cameras.values() if h["state"] == CameraState.FINISHED.value)
        loaded = bool(self._lanes is not None and self._lanes.all)
        # a replica whose share of the cameras is empty is ready doing nothing; so is one whose files are read
        ready = loaded and self._publisher.connected and (streaming > 0 or not cameras or finished == len(cameras))
        kafka = self._publisher.health()
        degraded = [kafka["spool"]["reason"]] if kafka["spool"]["state"] != "ok" else []
        body = {"degraded": degraded, "model_loaded": loaded, "kafka": kafka, "cameras_streaming": streaming,
                "cameras": cameras}
        if self._grouped:
            body["placement"], more, why = self._placement.readiness()
            degraded.extend(more)
            if why is not None:
                ready = False
                body["placement"]["not_ready"] = why
        return ready, body
