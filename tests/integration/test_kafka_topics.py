"""A topic the broker will not give us (unknown with auto-creation off, not authorised, or here: a
name the broker refuses, which the client sees the same way: no partitions in the metadata) is
reported once with what to do, counted, shown in health and metrics, and its messages wait in the
spool while the other topic's messages keep flowing; stopping does not wait for them."""
import asyncio
import json
import logging
import time
import uuid

from pipeline.config import KafkaConfig
from pipeline.metrics import Metrics
from pipeline.s6_publish import KafkaPublisher, Outgoing
from pipeline.s6_spool import Spool
from scripts.lab.broker import consume
from scripts.lab.daemons import metric_values

MISSING = "no such topic!"  # Tansu creates any valid topic on first use; it refuses this name


def test_a_missing_topic_holds_only_its_own_messages_and_is_reported_once(tmp_path, broker, caplog):
    topic = f"topics-{uuid.uuid4().hex[:8]}"
    caplog.set_level(logging.INFO, logger="pipeline.s6_publish")

    async def scenario():
        metrics = Metrics()
        publisher = KafkaPublisher(KafkaConfig(bootstrap_servers=broker.bootstrap, topic=topic,
                                               spool={"folder": tmp_path}), metrics)
        await publisher.start()
        for n in range(20):  # the same camera writes to both topics, interleaved
            publisher.offer(Outgoing(MISSING, "cam", json.dumps({"n": n, "status": True}).encode()))
            publisher.offer(Outgoing(topic, "cam", json.dumps({"n": n}).encode()))
            await asyncio.sleep(0.05)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and 'reason="UnknownTopicOrPartitionError"' not in metrics.render().decode():
            await asyncio.sleep(0.2)
        health = publisher.health()
        started = time.monotonic()
        await publisher.stop(timeout=10)
        return metrics.render().decode(), health, time.monotonic() - started

    text, health, stop_s = asyncio.run(scenario())
    records = consume(broker.bootstrap, [topic], lambda rs: len(rs) >= 20, 30)
    assert [r.value["n"] for r in records] == list(range(20))  # not held up by the other topic
    assert health["topics_unavailable"] == [MISSING]
    assert metric_values(text, "rtsp_pipeline_kafka_topic_ready") == {
        f'{{topic="{MISSING}"}}': 0.0, f'{{topic="{topic}"}}': 1.0, '{topic="camera-status"}': 1.0}
    assert metric_values(text, "rtsp_pipeline_kafka_send_errors_total")['{reason="UnknownTopicOrPartitionError"}'] >= 1
    assert not metric_values(text, "rtsp_pipeline_messages_dropped_total")  # nothing given up
    reports = [r for r in caplog.records if "kafka topic not available" in r.getMessage()]
    assert len(reports) == 1
    assert reports[0].fields["topic"] == MISSING and "create the topic" in reports[0].fields["fix"]
    assert stop_s < 3  # nothing it could still send: no waiting for the missing topic
    spool = Spool(tmp_path, 1 << 30)  # the held messages are still on disk for the next start
    kept = [json.loads(r.value)["n"] for r in spool.read(100) if r.topic == MISSING]
    spool.close()
    assert kept == list(range(20))
