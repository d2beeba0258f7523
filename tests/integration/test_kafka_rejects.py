"""A message Kafka will never take (too large) is dropped and counted, and the camera's next
messages still go out: no endless re-send of a poison message."""
import asyncio
import json
import uuid

from pipeline.config import KafkaConfig
from pipeline.metrics import Metrics
from pipeline.s6_publish import KafkaPublisher, Outgoing
from scripts.lab.broker import consume
from scripts.lab.daemons import metric_values


def test_a_message_too_large_is_dropped_counted_and_the_next_ones_are_delivered(tmp_path, broker):
    topic = f"rejects-{uuid.uuid4().hex[:8]}"

    async def scenario():
        metrics = Metrics()
        publisher = KafkaPublisher(KafkaConfig(bootstrap_servers=broker.bootstrap, topic=topic,
                                               spool={"folder": tmp_path}), metrics)
        await publisher.start()
        publisher.offer(Outgoing(topic, "cam", json.dumps({"n": 0}).encode()))
        publisher.offer(Outgoing(topic, "cam", json.dumps({"n": 1, "pad": "x" * 2_000_000}).encode()))  # > 1 MiB
        publisher.offer(Outgoing(topic, "cam", json.dumps({"n": 2}).encode()))
        for _ in range(200):
            if publisher.health()["queued"] == 0:
                break
            await asyncio.sleep(0.05)
        await publisher.stop(timeout=2)
        return metrics.render().decode()

    text = asyncio.run(scenario())
    records = consume(broker.bootstrap, [topic], lambda rs: len(rs) >= 2, 30)
    assert [r.value["n"] for r in records] == [0, 2]
    assert metric_values(text, "rtsp_pipeline_messages_dropped_total") == {'{camera="cam",reason="kafka_rejected"}': 1.0}
