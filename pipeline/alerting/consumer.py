"""The alerting consumer's Kafka loop: detections in, alerts out, offsets committed after.

At-least-once: offsets are committed only after the alerts a batch produced are acknowledged, so
a crash repeats alerts rather than losing them (`alert_id` names an episode: consumers dedupe on
it). Rule state lives in memory; after a restart a dwell timer starts again from the next frame,
and line counts start from 0 (the per-crossing events are the durable record).

Metrics (`metrics.listen`, Prometheus text at /metrics): crossings per line rule, camera and
direction, events per rule and state, and the distinct tracks each count rule sees now.
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pipeline.alerting.rules import AlertEngine, AlertRules, evidence_request
from pipeline.logs import log_event
from pipeline.messages import DETECTIONS_SCHEMA

log = logging.getLogger(__name__)
FETCH_TIMEOUT_MS = 500
# a consumer started before the daemon has created its topic finds it this soon (aiokafka's
# default, 5 minutes, left it idle that long)
METADATA_MAX_AGE_MS = 10_000


class AlertConsumer:
    """Reads the detections topic, feeds the rules, publishes alerts; `run()` until `stop()`."""

    def __init__(self, rules: AlertRules) -> None:
        self.rules = rules
        self.metrics = AlertMetrics()
        self.engine = AlertEngine(rules, on_event=self.metrics.count)
        self._stop = asyncio.Event()
        self.skipped = 0  # messages that were not detections/v1 (logged once per kind)
        self.read = 0
        self.sent = 0

    def stop(self) -> None:
        """Finish the batch in hand, commit, close."""
        self._stop.set()

    async def run(self) -> None:
        cfg = self.rules.kafka
        server = self.metrics.serve(self.rules.metrics.listen, self.engine)
        consumer = AIOKafkaConsumer(
            cfg.detections_topic, bootstrap_servers=cfg.bootstrap_servers, group_id=cfg.group_id,
            enable_auto_commit=False, auto_offset_reset=cfg.start_from, client_id="rtsp-alerts",
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
        )
        producer = AIOKafkaProducer(bootstrap_servers=cfg.bootstrap_servers, acks="all", client_id="rtsp-alerts")
        await producer.start()
        try:
            await consumer.start()
            try:
                log_event(log, logging.INFO, "alerting", rules=len(self.rules.rules),
                          detections=cfg.detections_topic, alerts=cfg.alerts_topic)
                while not self._stop.is_set():
                    batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS, max_records=500)
                    if not batches:
                        continue
                    await self._handle([r for records in batches.values() for r in records], producer)
                    await consumer.commit()
            finally:
                await consumer.stop()
        finally:
            await producer.stop()
            if server is not None:
                server.shutdown()
                server.server_close()

    async def _handle(self, records, producer: AIOKafkaProducer) -> None:
        sends, alerts = [], []
        self.read += len(records)
        self.metrics.messages_read.inc(len(records))
        for record in records:
            message = self._decode(record.value)
            if message is None:
                continue
            for alert in self.engine.feed(message):
                alerts.append(alert)
                log_event(log, logging.INFO, "alert", rule=alert["rule"], camera=alert["camera_id"],
                          state=alert["state"], alert_id=alert["alert_id"])
                value = json.dumps(alert, separators=(",", ":")).encode()
                key = alert["camera_id"].encode()
                sends.append(await producer.send(self.rules.kafka.alerts_topic, value, key=key))
                if "evidence" in alert:  # to the camera's daemon, keyed by camera as the detections are
                    request = json.dumps(evidence_request(alert), separators=(",", ":")).encode()
                    sends.append(await producer.send(self.rules.kafka.requests_topic, request, key=key))
        for ack in sends:  # every alert (and request) of the batch acknowledged before its offsets are committed
            await ack
        self.sent += sum(1 for _ in alerts)

    def _decode(self, raw: bytes | None) -> dict | None:
        try:
            message = json.loads(raw)
            if message.get("schema") == DETECTIONS_SCHEMA:
                return message
            reason = f"schema {message.get('schema')!r}"
        except (TypeError, ValueError, AttributeError) as exc:
            reason = f"not JSON: {exc}"
        if self.skipped == 0:
            log_event(log, logging.WARNING, "skipping messages that are not detections/v1", reason=reason)
        self.skipped += 1
        return None


class AlertMetrics:
    """The consumer's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.crossings = Counter("rtsp_alerts_line_crossings", "Line crossings by tracked objects",
                                 ["rule", "camera", "direction"], registry=r)
        self.events = Counter("rtsp_alerts_events", "Alert events published, by rule and state", ["rule", "state"],
                              registry=r)
        self.messages_read = Counter("rtsp_alerts_messages_read", "Messages read from the detections topic",
                                     registry=r)

    def count(self, event: dict) -> None:
        """Count one event (the engine's on_event)."""
        self.events.labels(event["rule"], event["state"]).inc()
        if event["kind"] == "line":
            self.crossings.labels(event["rule"], event["camera_id"], event["direction"]).inc()

    def serve(self, listen: str | None, engine: AlertEngine):
        """Serve /metrics on `listen` ("host:port"), with the tracks each count rule sees read at each scrape."""
        if listen is None:
            return None
        self.registry.register(_ZoneTracks(engine))
        host, _, port = listen.rpartition(":")
        server, _ = start_http_server(int(port), host or "0.0.0.0", registry=self.registry)
        log_event(log, logging.INFO, "alert metrics", listen=f"{host}:{server.server_port}")
        return server


class _ZoneTracks(Collector):
    """rtsp_alerts_zone_tracks{rule,camera}: distinct tracks in a count rule's zone now."""

    def __init__(self, engine: AlertEngine) -> None:
        self._engine = engine

    def collect(self):
        family = GaugeMetricFamily("rtsp_alerts_zone_tracks", "Distinct tracks a count rule sees in its zone now",
                                   labels=["rule", "camera"])
        for (rule, camera), n in self._engine.zone_tracks().items():
            family.add_metric([rule, camera], n)
        yield family


async def run_until_signal(rules: AlertRules) -> int:
    """Run the consumer until SIGINT/SIGTERM."""
    consumer = AlertConsumer(rules)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, consumer.stop)
    try:
        await consumer.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log_event(log, logging.INFO, "stopped", read=consumer.read, alerts_sent=consumer.sent, skipped=consumer.skipped)
    return 0
