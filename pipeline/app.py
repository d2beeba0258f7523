"""The Runtime: builds every stage from a Config, runs until a signal, and stops them in order.

Threads: one per camera (demux + decode), the inference pipeline's (prepare, K engine runs,
finish: see inference_worker); everything else (Kafka, HTTP, signals) runs on one asyncio loop. Results and state changes cross into the loop with
`call_soon_threadsafe`; every hand-off is bounded and every drop counted.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from collections.abc import Callable

from pipeline.config import Config
from pipeline.core import CameraState, FrameResult
from pipeline.http import HttpServer
from pipeline.inference_worker import InferenceWorker
from pipeline.logs import log_event
from pipeline.metrics import Metrics
from pipeline.s1_source import CameraWorker
from pipeline.s2_decode import cpu_decoder
from pipeline.s3_batch import DeadlineBatcher
from pipeline.s4_infer import Engine, load_engine
from pipeline.s4_infer.preprocess import CpuPreprocessor
from pipeline.s5_postprocess import detect_layout, detections_for_image
from pipeline.s6_publish import KafkaPublisher, Outgoing, encode_detections, encode_status

log = logging.getLogger(__name__)
CAMERA_JOIN_S = 2.0
INFERENCE_JOIN_S = 5.0


class Runtime:
    """One daemon instance: startup -> run until SIGINT/SIGTERM -> orderly shutdown."""

    def __init__(
        self,
        config: Config,
        *,
        engine_loader: Callable[..., Engine] = load_engine,
        decoder_factory: Callable = cpu_decoder,
    ) -> None:
        self.config = config
        self.metrics = Metrics()
        self._engine_loader = engine_loader
        self._decoder_factory = decoder_factory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._engine: Engine | None = None
        self._model_ref = None
        self._batcher: DeadlineBatcher | None = None
        self._inference: InferenceWorker | None = None
        self._publisher = KafkaPublisher(config.kafka, self.metrics)
        self._cameras: dict[str, CameraWorker] = {}
        self._last_state: dict[str, CameraState] = {}
        self._http = HttpServer(
            config.metrics.host, config.metrics.port, self.metrics.render, self.healthz, self.readyz
        )

    # ------------------------------------------------------------------ life cycle
    async def run(self) -> int:
        """Run until stopped by a signal (or `request_stop`); return the process exit code."""
        self._loop = asyncio.get_running_loop()
        restore = self._capture_signals()
        try:
            await self._startup()
            log_event(log, logging.INFO, "running", cameras=len(self._cameras),
                      metrics=f"{self.config.metrics.host}:{self._http.bound_port}")
            await self._stop.wait()
        finally:
            await self._shutdown()
            restore()
        return 0

    def request_stop(self) -> None:
        """Begin an orderly shutdown (safe to call from the loop)."""
        self._stop.set()

    async def _startup(self) -> None:
        cfg = self.config
        await self._http.start()
        self._engine = await asyncio.to_thread(self._engine_loader, cfg.model)
        info = self._engine.info
        model_ref = self._model_ref = info.ref(self._engine.backend)
        self.metrics.model_info.labels(model_ref.name, model_ref.sha256, model_ref.backend).set(1)
        layout = cfg.model.layout if cfg.model.layout != "auto" else detect_layout(
            info.output_shape, len(info.labels) or None, info.metadata
        )
        log_event(log, logging.INFO, "output layout", layout=layout, model=model_ref.name)
        await self._publisher.start()

        max_batch = min(cfg.batching.max_batch, info.input_spec.batch or cfg.batching.max_batch,
                        self._engine.max_useful_batch or cfg.batching.max_batch)
        if max_batch != cfg.batching.max_batch:
            log_event(log, logging.INFO, "batch size capped", configured=cfg.batching.max_batch,
                      used=max_batch, why="model's fixed batch or engine runs batches in parallel")
        self._batcher = DeadlineBatcher(
            max_batch, cfg.batching.max_wait_ms / 1000, cfg.batching.max_frame_age_ms / 1000,
            on_drop=lambda cam, reason: self.metrics.frames_dropped.labels(cam, reason).inc(),
        )
        postprocess = functools.partial(
            detections_for_image, layout=layout, labels=info.labels, confidence=cfg.model.confidence,
            iou=cfg.model.iou, max_detections=cfg.model.max_detections,
        )
        runs = self._engine.concurrency
        self._inference = InferenceWorker(
            self._batcher.next_batch, [CpuPreprocessor(info.input_spec) for _ in range(runs + 1)],
            self._engine.infer, runs, postprocess, self._emit_results, self.metrics,
        )
        self._inference.start()
        for camera in cfg.cameras:
            worker = CameraWorker(
                camera, cfg.source, self._decoder_factory, self._batcher.put, self.metrics,
                self._on_camera_state,
            )
            self._cameras[camera.id] = worker
            worker.start()

    async def _shutdown(self) -> None:
        started = time.monotonic()
        for worker in self._cameras.values():
            worker.request_stop()
        if self._batcher is not None:
            self._batcher.close()
        if self._inference is not None and not await asyncio.to_thread(self._inference.stop, INFERENCE_JOIN_S):
            log_event(log, logging.WARNING, "inference thread did not stop in time")
        blocked = [
            cam for cam, worker in self._cameras.items()
            if not await asyncio.to_thread(worker.stop, CAMERA_JOIN_S / max(1, len(self._cameras)))
        ]
        if blocked:
            log_event(log, logging.WARNING, "camera threads still blocked at shutdown; abandoning them",
                      cameras=blocked)
        await asyncio.sleep(0)  # run the result/status callbacks the threads scheduled last
        await self._publisher.stop(self.config.kafka.stop_timeout_s)
        await self._http.stop()
        if self._engine is not None:
            self._engine.close()
        log_event(log, logging.INFO, "stopped", seconds=round(time.monotonic() - started, 2))

    def _capture_signals(self) -> Callable[[], None]:
        loop = asyncio.get_running_loop()
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            loop.add_signal_handler(sig, self._on_signal, sig)

        def restore() -> None:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                signal.signal(sig, handler)

        return restore

    def _on_signal(self, sig: signal.Signals) -> None:
        log_event(log, logging.INFO, "signal received; stopping", signal=signal.Signals(sig).name)
        self._stop.set()

    # ------------------------------------------------------------------ thread -> loop hand-offs
    def _emit_results(self, results: list[FrameResult]) -> None:
        """Called on the inference thread."""
        self._call_in_loop(self._publish_results, results)

    def _on_camera_state(self, camera_id: str, state: CameraState, reason: str) -> None:
        """Called on camera threads."""
        self._call_in_loop(self._publish_status, camera_id, state, reason, time.time())

    def _call_in_loop(self, fn: Callable, *args) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop has closed during shutdown
            pass

    def _publish_results(self, results: list[FrameResult]) -> None:
        topic = self.config.kafka.topic
        for result in results:
            if not result.detections and not self.config.kafka.publish_empty:
                continue
            cam = result.meta.camera_id
            self._publisher.offer(Outgoing(
                topic, cam, encode_detections(result, self._model_ref), cam,
                len(result.detections), result.meta.captured_at,
            ))

    def _publish_status(self, camera_id: str, state: CameraState, reason: str, at: float) -> None:
        previous = self._last_state.get(camera_id)
        self._last_state[camera_id] = state
        value = encode_status(camera_id, state, previous, reason, at)
        self._publisher.offer(Outgoing(self.config.kafka.status_topic, camera_id, value, camera_id))

    # ------------------------------------------------------------------ health
    def healthz(self) -> tuple[bool, dict]:
        """Alive: the inference threads run and the engine has freed a buffer in the last 30 s."""
        if self._inference is None:
            return True, {"inference": "starting"}
        health = self._inference.health()
        return health["healthy"], {"inference": health}

    def readyz(self) -> tuple[bool, dict]:
        """Ready: model loaded, Kafka producer connected and at least one camera streaming."""
        cameras = {cam: w.health() for cam, w in self._cameras.items()}
        streaming = sum(1 for h in cameras.values() if h["state"] == CameraState.STREAMING.value)
        ready = self._engine is not None and self._publisher.connected and streaming > 0
        return ready, {
            "model_loaded": self._engine is not None,
            "kafka": self._publisher.health(),
            "cameras_streaming": streaming,
            "cameras": cameras,
        }

