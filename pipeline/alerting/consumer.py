"""The alerting consumer's Kafka loop: detections in, alerts out, offsets committed after.

At-least-once: offsets are committed only after the alerts a batch produced are acknowledged, so
a crash repeats alerts rather than losing them (`alert_id` names an episode: consumers dedupe on
it). Rule state lives in memory; after a restart a dwell timer starts again from the next frame.
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline.alerting.rules import AlertEngine, AlertRules
from pipeline.logs import log_event
from pipeline.s6_publish import DETECTIONS_SCHEMA

log = logging.getLogger(__name__)
FETCH_TIMEOUT_MS = 500


class AlertConsumer:
    """Reads the detections topic, feeds the rules, publishes alerts; `run()` until `stop()`."""

    def __init__(self, rules: AlertRules) -> None:
        self.rules = rules
        self.engine = AlertEngine(rules)
        self._stop = asyncio.Event()
        self.skipped = 0  # messages that were not detections/v1 (logged once per kind)
        self.sent = 0

    def stop(self) -> None:
        """Finish the batch in hand, commit, close."""
        self._stop.set()

    async def run(self) -> None:
        cfg = self.rules.kafka
        consumer = AIOKafkaConsumer(
            cfg.detections_topic, bootstrap_servers=cfg.bootstrap_servers, group_id=cfg.group_id,
            enable_auto_commit=False, auto_offset_reset=cfg.start_from, client_id="rtsp-alerts",
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

    async def _handle(self, records, producer: AIOKafkaProducer) -> None:
        sends = []
        for record in records:
            message = self._decode(record.value)
            if message is None:
                continue
            for alert in self.engine.feed(message):
                log_event(log, logging.INFO, "alert", rule=alert["rule"], camera=alert["camera_id"],
                          state=alert["state"], alert_id=alert["alert_id"])
                value = json.dumps(alert, separators=(",", ":")).encode()
                sends.append(await producer.send(self.rules.kafka.alerts_topic, value, key=alert["camera_id"].encode()))
        for ack in sends:  # every alert of the batch acknowledged before its offsets are committed
            await ack
        self.sent += len(sends)

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
    log_event(log, logging.INFO, "stopped", alerts_sent=consumer.sent, skipped=consumer.skipped)
    return 0
