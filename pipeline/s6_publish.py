"""Publish: the daemon's messages (their bytes: pipeline.messages) to Kafka with aiokafka.

Hand-over: `offer()` never blocks (inference must not wait on Kafka). Every message is appended to
the on-disk spool (s6_spool) and sent from there in order, one message per camera (Kafka key) in
flight at a time and at most `kafka.max_in_flight` read from the spool; it leaves the spool once
Kafka has acknowledged it and everything before it.
While Kafka is unreachable messages accumulate in the spool, bounded by `kafka.spool.max_mb`
(then its policy drops the oldest or the newest, counted). A failed send re-sends from the first
undelivered message, so per camera the order is kept and a message may arrive twice: delivery
is at least once; consumers deduplicate on (camera_id, run_id, frame.seq). What is spooled when
the daemon stops (or is killed) is sent at the next start.

Order per camera and topic: a camera's next message to a topic goes to the producer only when its
previous one is acknowledged, so a failed message is never overtaken by a later one of the same
camera; after a failure the spool re-sends from the first undelivered message, skipping what was
already acknowledged (duplicates only of messages in flight at the failure, never reordering of
first deliveries). The producer retries a batch until `kafka.request_timeout_s`, so outages
shorter than that need no re-send at all.

Host faults: a spool disk that is full, read-only, removed or unwritable is a degraded state, not
a failure. The spool keeps new messages in memory instead (`kafka.spool.memory_mb`, then its
policy), so they still reach a reachable broker; what cannot be kept is counted
(`messages_dropped_total{reason="spool_error"}`); the spell is logged once when it starts and once
when it ends (after `_SPELL_END_S` without a fault), shown in /readyz and systemd's status line,
and `spool_writable` is 0 meanwhile. Records held in memory go to disk once it takes writes again.
Stopping never fails on the disk: what could not be written is logged and counted.

Topics: before its first message goes to a topic the broker is asked for it (at most
`_TOPIC_WAIT_S`). A topic the broker does not have or does not let us write to (auto-creation off,
no ACL, invalid name) is logged once with what to do, counted, shown as `kafka_topic_ready 0` and
in /readyz, and asked for again with backoff; its messages wait in the spool and the other
topic's messages keep flowing.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError, KafkaError, MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError,
)

from pipeline.config import KafkaConfig
from pipeline.core import PipelineError
from pipeline.kafka_security import security_options
from pipeline.logs import log_event
from pipeline.messages import rfc3339_ms
from pipeline.metrics import Metrics
from pipeline.s6_spool import LOST_REASONS, Record, Spool, SpoolFault, SpoolFull, SpoolUnavailable, SpoolUnusable

log = logging.getLogger(__name__)
_RETRY_FIRST_S, _RETRY_MAX_S = 0.5, 10.0  # re-send delays after a failed send
_TOPIC_WAIT_S = 10.0  # how long one look-up of a topic waits for the broker
_TOPIC_RETRY_FIRST_S, _TOPIC_RETRY_MAX_S = 5.0, 300.0  # delays between look-ups of a missing topic
_SPELL_END_S = 5.0  # a spool fault is over (logged once) when none was seen for this long
_TIMED_MAX = 4096  # messages whose spool time is kept for the publish-stage metric (older ones: not timed)
_LOST_WHY = {  # the log line for messages the spool had kept and then lost, by reason
    "removed": "spool files removed; the messages in them are lost",
    "unreadable": "spool files unreadable (the disk failed to read them back); the messages in them are lost",
    "torn": "spool file ended in a torn record (a write cut off by a crash or power loss); it was cut off "
            "and the messages in it are lost",
}
# Kafka will never take this message: sending it again would block its camera for good
_REJECTED = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError, InvalidTopicError)


class PublishError(PipelineError):
    """Messages cannot be published or kept (e.g. the spool folder is unusable)."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to send; its key is the camera id. A detections message also says how many
    detections it holds and when its frame was captured, so its acknowledgement is counted (the
    published-detections and capture-to-ack metrics) without parsing it again."""

    topic: str
    key: str
    value: bytes
    detections: int | None = None
    captured_at: float | None = None


class KafkaPublisher:
    """Sends every message through the on-disk spool with one aiokafka producer, in order;
    reconnects and re-sends with backoff; `offer()` never blocks."""

    def __init__(self, config: KafkaConfig, metrics: Metrics,
                 producer_factory: Callable[[KafkaConfig], AIOKafkaProducer] | None = None) -> None:
        self._config = config
        self._producer_factory = producer_factory or _aiokafka_producer  # the host-path benchmark's null sink
        self._metrics = metrics
        self._spool: Spool | None = None
        self._maintenance: asyncio.Task | None = None
        self._spell: _FaultSpell | None = None  # the spool's current (or just ended) disk fault
        self._policy_counted = 0  # spool.dropped already in spool_dropped_total
        self._refused = 0  # messages neither the disk nor the memory allowance could take
        self._lost_counted = dict.fromkeys(LOST_REASONS, 0)
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()  # a message was spooled, a send finished, or stop began
        self._outstanding = 0  # sent, not yet acknowledged or failed
        self._busy: set[tuple[str, str]] = set()  # (topic, camera) with a message in flight
        self._waiting: dict[tuple[str, str], collections.deque[Record]] = {}  # read, not yet sent
        self._failed = False  # a send failed: re-send from the first undelivered message
        self._reread = False  # a topic became ready: read its skipped messages again
        self._topics_ready: set[str] = set()
        self._topics_missing: set[str] = set()  # the broker said no (or nothing) to the last look-up
        self._topic_checks: dict[str, asyncio.Task] = {}  # look-ups started, one per topic
        self._accepting = True
        self._last_error_log = 0.0
        # record number -> (when offered, detections, captured at): the publish-stage and detection
        # metrics at its acknowledgement (records of an earlier run are parsed instead)
        self._spooled_at: dict[int, tuple[float, int | None, float | None]] = {}
        self._detections_counters: dict = {}  # camera -> detections_published_total's child
        self._published_counters: dict = {}  # topic -> messages_published_total's child
        self._publish_seconds = metrics.stage_seconds.labels("publish")

    # ------------------------------------------------------------------ hand-over
    def offer(self, message: Outgoing) -> bool:
        """Spool a message (call on the event loop); False, counted, when it cannot be kept."""
        return self.offer_many([message]) == 1

    def offer_many(self, messages: list[Outgoing]) -> int:
        """Spool messages in order (a batch's: call on the event loop; one write to the spool where
        the disk takes them all); how many were kept. Each one not kept is counted, by reason."""
        spool = self._spool
        if not self._accepting or spool is None:
            for message in messages:
                self._metrics.messages_dropped.labels(message.key, "shutdown").inc()
            return 0
        dropped_before, kept, now = spool.dropped, 0, time.monotonic()
        try:
            outcomes = spool.append_many([(m.topic, m.key, m.value) for m in messages])
        finally:
            if spool.dropped_in_hand:
                self._forget_dropped(spool)
            self._count_policy_drops(spool)
            if spool.dropped > dropped_before and spool.policy == "drop_oldest" and spool.fault is None:
                self._log_error("spool full: dropped the oldest messages", policy=spool.policy)
        for message, number in zip(messages, outcomes):
            if isinstance(number, SpoolFull):
                self._metrics.messages_dropped.labels(message.key, "spool_full").inc()
                self._log_error("spool full: dropping the newest message", camera=message.key,
                                policy=spool.policy, spool_bytes=spool.bytes)
            elif isinstance(number, SpoolUnavailable):  # disk and memory refuse it: counted, the spell logged
                self._metrics.messages_dropped.labels(message.key, "spool_error").inc()
                self._refused += 1
            else:
                self._spooled_at[number] = (now, message.detections, message.captured_at)
                kept += 1
        if kept < len(messages) or spool.fault is not None or self._spell is not None:
            self._watch_spool()
        while len(self._spooled_at) > _TIMED_MAX:  # e.g. during an outage: stop timing the oldest
            del self._spooled_at[next(iter(self._spooled_at))]
        if kept:
            self._update_gauges()
            self._wake.set()
        return kept

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Open the spool (sending what an earlier run left in it) and start sending."""
        self._spool = self._open_spool()
        if self._spool.pending:
            log_event(log, logging.INFO, "spool holds messages from an earlier run; sending them first",
                      messages=self._spool.pending, folder=str(self._config.spool.folder))
        self._metrics.spool_writable.set(1)
        self._watch_spool()
        self._update_gauges()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="kafka-publisher")
        self._task.add_done_callback(self._task_ended)
        self._maintenance = loop.create_task(self._maintain(), name="kafka-spool-maintenance")
        self._maintenance.add_done_callback(self._task_ended)

    def _open_spool(self) -> Spool:
        """The spool; a folder that cannot be used at all (permissions, not a folder, another
        daemon's) is a PublishError; a full or read-only disk starts degraded (in memory)."""
        cfg = self._config.spool
        try:
            return Spool(cfg.folder, int(cfg.max_mb * (1 << 20)), cfg.policy,
                         memory_bytes=int(cfg.memory_mb * (1 << 20)))
        except SpoolUnusable as exc:
            raise PublishError(str(exc)) from None
        except OSError as exc:  # reading what an earlier run left failed
            raise PublishError(f"cannot read spool folder {cfg.folder}: {exc.strerror}; check the disk, or "
                               "move the folder away to start with an empty spool") from None

    async def _maintain(self) -> None:
        """Once a second: fsync, find disk faults and their end, move records held in memory to disk."""
        while True:
            await asyncio.sleep(1.0)
            if self._spool is not None:
                self._spool.maintain()
                if self._spool.dropped_in_hand:  # a removed folder's records
                    self._forget_dropped(self._spool)
                self._watch_spool()
                self._update_gauges()

    def _not_kept(self, spool: Spool) -> int:
        """Messages not kept since start: refused, dropped by the policy, lost by the spool."""
        return self._refused + spool.dropped + sum(spool.lost.values())

    def _watch_spool(self) -> None:
        """Log a disk fault once when it starts and once when it ends; count records it lost."""
        spool = self._spool
        if spool is None:
            return
        self._count_lost(spool)
        self._count_policy_drops(spool)
        now, fault = time.monotonic(), spool.fault
        spell = self._spell
        if fault is not None:
            if spell is None or spell.fault.kind != fault.kind:
                if spell is None:
                    spell = self._spell = _FaultSpell(fault, now, self._not_kept(spool))
                spell.fault = fault
                log_event(log, logging.ERROR, "spool cannot write to disk; holding messages in memory",
                          folder=str(spool.folder), kind=fault.kind, error=fault.error, fix=fault.reason,
                          memory_mb=self._config.spool.memory_mb)
                self._metrics.spool_writable.set(0)
            spell.clear_since = None
        elif spell is not None:
            if spell.clear_since is None:
                spell.clear_since = now
            elif now - spell.clear_since >= _SPELL_END_S:
                log_event(log, logging.INFO, "spool writing to disk again", folder=str(spool.folder),
                          kind=spell.fault.kind, lasted_s=round(spell.clear_since - spell.started, 1),
                          messages_not_kept=self._not_kept(spool) - spell.not_kept_before,
                          held_in_memory=spool.memory_used)
                self._spell = None
                self._metrics.spool_writable.set(1)

    def _forget_dropped(self, spool: Spool) -> None:
        """Records read ahead but not yet sent whose segment the spool dropped: they are not sent,
        so they count as dropped now (those already with the producer count if it fails them)."""
        gone = spool.dropped_in_hand
        for key in list(self._waiting):
            queue = self._waiting[key]
            kept = collections.deque(r for r in queue if r.number not in gone)
            for record in queue:
                if record.number in gone:
                    spool.unsent(record.number)
            if kept:
                self._waiting[key] = kept
            else:
                del self._waiting[key]

    def _count_policy_drops(self, spool: Spool) -> None:
        """spool_dropped_total follows the spool's count (it also grows at a rewind or a stop, for
        records that were handed out before their segment was dropped and then never sent)."""
        if spool.policy == "drop_oldest" and spool.dropped > self._policy_counted:
            self._metrics.spool_dropped.labels("drop_oldest").inc(spool.dropped - self._policy_counted)
        self._policy_counted = spool.dropped

    def _count_lost(self, spool: Spool) -> None:
        for reason, count in spool.lost.items():
            if count > self._lost_counted[reason]:
                self._metrics.spool_lost.labels(reason).inc(count - self._lost_counted[reason])
                if reason != "unsaved":  # that one is logged by stop()
                    log_event(log, logging.ERROR, _LOST_WHY[reason], folder=str(spool.folder),
                              messages=count - self._lost_counted[reason])
                self._lost_counted[reason] = count

    def _task_ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("publisher task died; nothing more will be sent", exc_info=task.exception())

    async def stop(self, timeout: float) -> None:
        """Stop accepting, deliver what is spooled while time allows, keep the rest on disk for
        the next start."""
        self._accepting = False
        deadline = time.monotonic() + timeout
        spool = self._spool
        while spool is not None and self._sending(spool) and self.connected and time.monotonic() < deadline:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.01, deadline - time.monotonic()))
        tasks = [t for t in (self._task, self._maintenance, *self._topic_checks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._producer is not None:
            try:
                await asyncio.wait_for(self._producer.stop(), max(0.1, deadline - time.monotonic()))
            except (TimeoutError, KafkaError) as exc:
                log_event(log, logging.WARNING, "kafka flush incomplete at shutdown", error=repr(exc))
        self._metrics.kafka_connected.set(0)
        if spool is not None:
            self._close_spool(spool)

    def _close_spool(self, spool: Spool) -> None:
        """Close the spool; say what it keeps for the next start and what the disk would not take."""
        report = spool.close()
        self._count_lost(spool)
        self._count_policy_drops(spool)
        self._spool = None
        log_event(log, logging.INFO, "publisher stopped", undelivered_kept_in_spool=report["kept_on_disk"])
        if report["unsaved"]:
            log_event(log, logging.ERROR, "messages held in memory could not be written to the spool; they are lost",
                      messages=report["unsaved"], folder=str(spool.folder),
                      why=spool.fault.reason if spool.fault else "the disk refused them")
        if report["resent_at_start"]:
            log_event(log, logging.WARNING, "spool's delivery mark not saved: messages already delivered will be "
                      "sent again at the next start (consumers deduplicate on camera_id, run_id, frame.seq)",
                      messages=report["resent_at_start"], folder=str(spool.folder))

    def _sending(self, spool: Spool) -> bool:
        """Something is in flight or can still be sent (messages of a missing topic cannot)."""
        return bool(self._outstanding or self._waiting or spool.unread or self._failed or self._reread)

    def health(self) -> dict:
        """Whether the producer is connected and sending, what waits in the spool, and the topics
        the broker does not let us write to."""
        spool = self._spool
        return {"connected": self.connected, "queued": spool.pending if spool else 0,
                "spool_bytes": spool.bytes if spool else 0,
                "topics_unavailable": sorted(self._topics_missing),
                "spool": self.spool_health()}

    def spool_health(self) -> dict:
        """ok, or degraded with the reason (what is wrong with the disk and what to do) and since when."""
        spool = self._spool
        fault = spool.fault if spool is not None else None
        if fault is None:
            return {"state": "ok"}
        return {"state": "degraded", "kind": fault.kind, "reason": fault.reason, "since": rfc3339_ms(fault.since),
                "held_in_memory": spool.memory_used, "memory_limit": spool.memory_bytes}  # type: ignore[union-attr]

    @property
    def connected(self) -> bool:
        """True once the producer has started, while its sending task runs."""
        return self._producer is not None and self._task is not None and not self._task.done()

    # ------------------------------------------------------------------ sending
    async def _run(self) -> None:
        await self._connect()
        # the configured topics are looked up one after the other before the first send: against
        # Tansu, a look-up that created a topic while the first produce to another new topic was
        # in flight left that produce unanswered (seen in the kill -9 test)
        for topic in (self._config.topic, self._config.status_topic):
            self._look_up(topic)
            await asyncio.wait([self._topic_checks[topic]], timeout=_TOPIC_WAIT_S)
        retry = _RETRY_FIRST_S
        while True:
            if self._failed or self._reread:  # read again from the first undelivered message, in order
                failed, self._failed, self._reread = self._failed, False, False
                await self._settle()
                self._waiting.clear()
                self._spool.rewind()  # type: ignore[union-attr]
                if failed:
                    await asyncio.sleep(retry)
                    retry = min(retry * 2, _RETRY_MAX_S)
                continue
            await self._send_ready()
            held = self._outstanding + sum(map(len, self._waiting.values()))
            free = self._config.max_in_flight - held
            records = self._spool.read(free) if free > 0 else []  # type: ignore[union-attr]
            for record in records:
                if record.topic in self._topics_ready:
                    self._waiting.setdefault((record.topic, record.key), collections.deque()).append(record)
                else:  # stays in the spool; read again once the broker has the topic
                    self._look_up(record.topic)
            if not records and not self._sendable():
                self._wake.clear()
                await self._wake.wait()
            elif not self._failed:
                retry = _RETRY_FIRST_S

    def _sendable(self) -> bool:
        return any(queue and key not in self._busy for key, queue in self._waiting.items())

    async def _send_ready(self) -> None:
        """Hand the producer the next message of every camera that has none in flight: one per
        camera at a time, so a failed send can never be overtaken by a later one of its camera."""
        for key in [k for k, queue in self._waiting.items() if queue and k not in self._busy]:
            if self._failed:  # stop feeding the producer: re-send in order after it settles
                return
            record = self._waiting[key].popleft()
            if not self._waiting[key]:
                del self._waiting[key]
            try:
                future = await self._producer.send(  # type: ignore[union-attr]
                    record.topic, record.value, key=record.key.encode()
                )
            except KafkaError as exc:
                self._send_failed(record, exc)
                if self._failed:
                    return
                continue
            self._outstanding += 1
            self._busy.add(key)
            future.add_done_callback(functools.partial(self._delivered, record))

    async def _settle(self) -> None:
        """Wait until every message in flight is acknowledged or failed."""
        while self._outstanding:
            self._wake.clear()
            await self._wake.wait()

    async def _connect(self) -> None:
        delay = 0.5
        while True:
            producer = self._producer_factory(self._config)
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

    # ------------------------------------------------------------------ topics
    def _look_up(self, topic: str) -> None:
        """Start asking the broker for `topic` unless that is done or under way."""
        if topic not in self._topic_checks:
            self._topic_checks[topic] = asyncio.get_running_loop().create_task(
                self._wait_for_topic(topic), name=f"kafka-topic-{topic}")

    async def _wait_for_topic(self, topic: str) -> None:
        """Ask for the topic's partitions until the broker has it; then read its messages again."""
        delay, logged = _TOPIC_RETRY_FIRST_S, False
        while True:
            try:
                await asyncio.wait_for(self._producer.partitions_for(topic), _TOPIC_WAIT_S)  # type: ignore[union-attr]
                break
            except (KafkaError, TimeoutError) as exc:
                # aiokafka keeps asking until its request timeout, then says the topic is unknown
                reason = "UnknownTopicOrPartitionError" if isinstance(exc, TimeoutError) else type(exc).__name__
                self._metrics.kafka_send_errors.labels(reason).inc()
                self._metrics.kafka_topic_ready.labels(topic).set(0)
                self._topics_missing.add(topic)
                if not logged:
                    log_event(log, logging.ERROR, "kafka topic not available; its messages wait in the spool",
                              topic=topic, error=reason, retry_in_s=delay,
                              fix="create the topic (or enable auto.create.topics.enable on the broker) and "
                                  "allow this client to write to it")
                    logged = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, _TOPIC_RETRY_MAX_S)
        self._topics_ready.add(topic)
        self._topics_missing.discard(topic)
        self._metrics.kafka_topic_ready.labels(topic).set(1)
        if logged:
            log_event(log, logging.INFO, "kafka topic available; sending its messages", topic=topic)
        self._reread = True
        self._wake.set()

    def _delivered(self, record: Record, future: asyncio.Future) -> None:
        self._outstanding -= 1
        self._busy.discard((record.topic, record.key))
        self._wake.set()
        if future.cancelled():
            self._send_failed(record, asyncio.CancelledError())
            return
        exc = future.exception()
        if exc is not None:
            self._send_failed(record, exc)
            return
        if self._spool is None:  # delivered after the spool closed at shutdown: sent again next start
            return
        self._spool.ack(record.number)
        offered = self._spooled_at.pop(record.number, None)
        if offered is not None:
            self._publish_seconds.observe(time.monotonic() - offered[0])
        self._update_gauges()
        self._published(record.topic).inc()
        if record.topic == self._config.topic:
            if offered is not None and offered[1] is not None:
                self._count_detections(record.key, offered[1], offered[2])
            else:  # a record of an earlier run (or one no longer timed): read back from its bytes
                self._count_detections(record.key, *_detections_and_capture(record.value))

    def _count_detections(self, camera: str, detections: int | None, captured_at: float | None) -> None:
        if detections is None:
            return  # not one of ours: nothing to count
        counter = self._detections_counters.get(camera)
        if counter is None:
            counter = self._detections_counters[camera] = self._metrics.detections_published.labels(camera)
        counter.inc(detections)
        if captured_at is not None:
            self._metrics.capture_to_ack_seconds.observe(max(0.0, time.time() - captured_at))

    def _published(self, topic: str):
        """messages_published_total's child of `topic` (looked up once)."""
        child = self._published_counters.get(topic)
        if child is None:
            child = self._published_counters[topic] = self._metrics.messages_published.labels(topic)
        return child

    def _send_failed(self, record: Record, exc: BaseException) -> None:
        self._metrics.kafka_send_errors.labels(type(exc).__name__).inc()
        if isinstance(exc, _REJECTED):  # give this one up (counted), the camera's next goes on
            self._metrics.messages_dropped.labels(record.key, "kafka_rejected").inc()
            log_event(log, logging.ERROR, "kafka rejected a message for good; dropped", camera=record.key,
                      topic=record.topic, bytes=len(record.value), error=repr(exc))
            if self._spool is not None:
                self._spool.ack(record.number)
            self._spooled_at.pop(record.number, None)
            return
        self._failed = True
        self._log_error("kafka send failed; will re-send from the first undelivered message",
                        camera=record.key, topic=record.topic, error=repr(exc))

    def _update_gauges(self) -> None:
        if self._spool is not None:
            self._metrics.publish_queue_depth.set(self._spool.pending)
            self._metrics.spool_bytes.set(self._spool.bytes)
            self._metrics.spool_memory_bytes.set(self._spool.memory_used)

    def _log_error(self, event: str, **fields) -> None:
        """Log at most one publish error per 10 s, so an outage does not flood the log."""
        now = time.monotonic()
        if now - self._last_error_log >= 10:
            self._last_error_log = now
            log_event(log, logging.WARNING, event, **fields)


def _detections_and_capture(value: bytes) -> tuple[int | None, float | None]:
    """A detections message's number of detections and capture time, from its bytes."""
    try:
        body = json.loads(value)
        captured = datetime.fromisoformat(body["frame"]["captured_at"].replace("Z", "+00:00")).timestamp()
        return len(body["detections"]), captured
    except (ValueError, KeyError, TypeError):
        return None, None


def _aiokafka_producer(c: KafkaConfig) -> AIOKafkaProducer:
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


@dataclass(slots=True)
class _FaultSpell:
    """A spool disk fault from its start to its end: logged once each."""

    fault: SpoolFault
    started: float
    not_kept_before: int  # messages not kept (dropped or lost) before it began
    clear_since: float | None = None  # no fault seen since then
