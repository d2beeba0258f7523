"""Publish: detection and camera-status messages as versioned JSON to Kafka (aiokafka).

Hand-over policy: `offer()` never blocks (inference must not wait on Kafka). Messages wait in a
bounded queue (`kafka.queue_size`); when it is full the newest message is dropped and counted
(`messages_dropped_total{reason="publish_queue_full"}`), which consumers see as a `frame.seq` gap.
At most `kafka.max_in_flight` messages are sent but unacknowledged. Delivery is at-most-once in
this version: a message Kafka does not acknowledge is counted in `kafka_send_errors_total`.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.config import KafkaConfig
from pipeline.core import CameraState, FrameResult, ModelRef
from pipeline.logs import log_event
from pipeline.metrics import Metrics

log = logging.getLogger(__name__)
DETECTIONS_SCHEMA = "detections/v1"
STATUS_SCHEMA = "camera-status/v1"


def rfc3339_ms(ts: float) -> str:
    """UTC time as RFC 3339 with milliseconds, e.g. 2026-11-21T05:57:24.123Z."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_detections(result: FrameResult, model: ModelRef) -> bytes:
    """The detections/v1 message value for one inferred frame."""
    meta = result.meta
    body = {
        "schema": DETECTIONS_SCHEMA,
        "camera_id": meta.camera_id,
        "frame": {
            "seq": result.seq,
            "pts": meta.pts,
            "captured_at": rfc3339_ms(meta.captured_at),
            "clock": meta.clock,
            "width": meta.width,
            "height": meta.height,
        },
        "detections": [
            {"class_id": d.class_id, "label": d.label, "confidence": d.confidence, "bbox": list(d.bbox)}
            for d in result.detections
        ],
        "model": {"name": model.name, "sha256": model.sha256, "backend": model.backend},
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def camera_status(state: CameraState, previous: CameraState | None) -> str:
    """The coarse status consumers act on: connecting, connected, reconnecting, disconnected, stopped."""
    if state is CameraState.STREAMING:
        return "connected"
    if state is CameraState.CONNECTING:
        return "connecting" if previous in (None, CameraState.STOPPED) else "reconnecting"
    if state is CameraState.STOPPED:
        return "stopped"
    return "disconnected"


def encode_status(camera_id: str, state: CameraState, previous: CameraState | None, reason: str, at: float) -> bytes:
    """The camera-status/v1 message value for one state change."""
    body = {
        "schema": STATUS_SCHEMA,
        "camera_id": camera_id,
        "status": camera_status(state, previous),
        "state": state.value,
        "reason": reason,
        "at": rfc3339_ms(at),
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def security_options(config: KafkaConfig) -> dict:
    """aiokafka's security arguments for the configured protocol, TLS and SASL settings."""
    options: dict = {"security_protocol": config.security_protocol}
    if config.security_protocol.endswith("SSL"):
        from aiokafka.helpers import create_ssl_context

        tls = config.tls
        context = create_ssl_context(
            cafile=tls.cafile if tls else None, certfile=tls.certfile if tls else None,
            keyfile=tls.keyfile if tls else None,
        )
        context.check_hostname = tls.check_hostname if tls else True
        options["ssl_context"] = context
    if config.sasl is not None:
        options.update(sasl_mechanism=config.sasl.mechanism, sasl_plain_username=config.sasl.username,
                       sasl_plain_password=config.sasl.password)
    return options


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message waiting to be sent."""

    topic: str
    key: str
    value: bytes
    camera: str
    detections: int = 0
    captured_at: float | None = None


class KafkaPublisher:
    """Sends queued messages with one aiokafka producer; reconnects with backoff; never blocks offer()."""

    def __init__(self, config: KafkaConfig, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self._queue: asyncio.Queue[Outgoing] = asyncio.Queue(config.queue_size)
        self._in_flight = asyncio.Semaphore(config.max_in_flight)
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task | None = None
        self._accepting = True
        self._last_error_log = 0.0

    # ------------------------------------------------------------------ hand-over
    def offer(self, message: Outgoing) -> bool:
        """Queue a message (call on the event loop); False, counted, when the queue is full."""
        if not self._accepting:
            self._metrics.messages_dropped.labels(message.camera, "shutdown").inc()
            return False
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self._metrics.messages_dropped.labels(message.camera, "publish_queue_full").inc()
            self._log_error("publish queue full: dropping newest message", camera=message.camera)
            return False
        self._metrics.publish_queue_depth.set(self._queue.qsize())
        return True

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Start sending in the background (connects, and reconnects, by itself)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kafka-publisher")
        self._task.add_done_callback(self._task_ended)

    def _task_ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("publisher task died; nothing more will be sent", exc_info=task.exception())

    async def stop(self, timeout: float) -> None:
        """Stop accepting, send what is queued, flush the producer; give up after `timeout` s."""
        self._accepting = False
        deadline = time.monotonic() + timeout
        if self._producer is not None:
            try:
                await asyncio.wait_for(self._queue.join(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                pass
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        dropped = self._drain_queue()
        if self._producer is not None:
            try:
                await asyncio.wait_for(self._producer.stop(), max(0.1, deadline - time.monotonic()))
            except (TimeoutError, KafkaError) as exc:
                log_event(log, logging.WARNING, "kafka flush incomplete at shutdown", error=repr(exc))
        self._metrics.kafka_connected.set(0)
        log_event(log, logging.INFO, "publisher stopped", unsent=dropped)

    def health(self) -> dict:
        """Whether the producer is connected and sending, and the queue depth."""
        return {"connected": self.connected, "queued": self._queue.qsize()}

    @property
    def connected(self) -> bool:
        """True once the producer has started, while its sending task runs."""
        return self._producer is not None and self._task is not None and not self._task.done()

    # ------------------------------------------------------------------ sending
    async def _run(self) -> None:
        await self._connect()
        while True:
            message = await self._queue.get()
            self._metrics.publish_queue_depth.set(self._queue.qsize())
            await self._in_flight.acquire()
            try:
                future = await self._producer.send(  # type: ignore[union-attr]
                    message.topic, message.value, key=message.key.encode()
                )
            except KafkaError as exc:
                self._in_flight.release()
                self._failed(message, exc)
                self._queue.task_done()
                continue
            future.add_done_callback(lambda fut, m=message: self._delivered(m, fut))

    async def _connect(self) -> None:
        delay = 0.5
        while True:
            producer = self._make_producer()
            try:
                await producer.start()
            except Exception as exc:  # unreachable, refused, TLS or SASL failure: all retried, never fatal
                with contextlib.suppress(Exception):
                    await producer.stop()
                self._metrics.kafka_connect_errors.labels(type(exc).__name__).inc()
                self._log_error("kafka unreachable; retrying", error=repr(exc), retry_in_s=delay,
                                security_protocol=self._config.security_protocol,
                                sasl_mechanism=self._config.sasl.mechanism if self._config.sasl else None)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            self._producer = producer
            self._metrics.kafka_connected.set(1)
            log_event(log, logging.INFO, "kafka connected", bootstrap=self._config.bootstrap_servers)
            return

    def _make_producer(self) -> AIOKafkaProducer:
        c = self._config
        return AIOKafkaProducer(
            bootstrap_servers=c.bootstrap_servers,
            client_id=c.client_id,
            acks="all",
            enable_idempotence=False,
            compression_type=None if c.compression == "none" else c.compression,
            linger_ms=c.linger_ms,
            request_timeout_ms=int(c.request_timeout_s * 1000),
            retry_backoff_ms=200,
            **security_options(c),
        )

    def _delivered(self, message: Outgoing, future: asyncio.Future) -> None:
        self._in_flight.release()
        self._queue.task_done()
        if future.cancelled():
            self._metrics.kafka_send_errors.labels("cancelled").inc()
            return
        exc = future.exception()
        if exc is not None:
            self._failed(message, exc)
            return
        self._metrics.messages_published.labels(message.topic).inc()
        if message.topic == self._config.topic:
            self._metrics.detections_published.labels(message.camera).inc(message.detections)
            if message.captured_at is not None:
                self._metrics.capture_to_ack_seconds.observe(max(0.0, time.time() - message.captured_at))

    def _failed(self, message: Outgoing, exc: BaseException) -> None:
        self._metrics.kafka_send_errors.labels(type(exc).__name__).inc()
        self._log_error("kafka send failed", camera=message.camera, topic=message.topic, error=repr(exc))

    def _drain_queue(self) -> int:
        count = 0
        while not self._queue.empty():
            message = self._queue.get_nowait()
            self._queue.task_done()
            self._metrics.messages_dropped.labels(message.camera, "shutdown").inc()
            count += 1
        return count

    def _log_error(self, event: str, **fields) -> None:
        """Log at most one publish error per 10 s, so an outage does not flood the log."""
        now = time.monotonic()
        if now - self._last_error_log >= 10:
            self._last_error_log = now
            log_event(log, logging.WARNING, event, **fields)
