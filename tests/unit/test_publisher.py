"""The publisher never blocks its caller: a full queue drops the newest message and counts it."""
import asyncio

from pipeline.config import KafkaConfig
from pipeline.metrics import Metrics
from pipeline.s6_publish import KafkaPublisher, Outgoing
from scripts.testbed import free_port, metric_values


def test_full_queue_drops_newest_and_counts_then_stop_counts_unsent():
    async def scenario():
        metrics = Metrics()
        config = KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}", queue_size=2, stop_timeout_s=1)
        publisher = KafkaPublisher(config, metrics)  # never started: nothing is sent
        accepted = [publisher.offer(Outgoing("detections", "cam", b"{}", "cam")) for _ in range(3)]
        await publisher.stop(timeout=1)
        late = publisher.offer(Outgoing("detections", "cam", b"{}", "cam"))
        return accepted, late, metrics.render().decode()

    accepted, late, text = asyncio.run(scenario())
    assert accepted == [True, True, False] and late is False
    dropped = metric_values(text, "rtsp_pipeline_messages_dropped_total")
    assert dropped['{camera="cam",reason="publish_queue_full"}'] == 1
    assert dropped['{camera="cam",reason="shutdown"}'] == 3  # 2 unsent at stop + 1 offered after
