"""The publisher never blocks its caller: every message is spooled on disk; with no broker the
spool keeps them (to be sent at the next start); a full spool drops by its named policy, counted;
two daemons cannot share a spool folder."""
import asyncio

import pytest

from pipeline.config import KafkaConfig
from pipeline.metrics import Metrics
from pipeline.s6_publish import _TIMED_MAX, KafkaPublisher, Outgoing, PublishError
from pipeline.s6_spool import Spool
from scripts.lab.common import free_port
from scripts.lab.daemons import metric_values


def config(folder, **spool):
    return KafkaConfig(bootstrap_servers=f"127.0.0.1:{free_port()}", stop_timeout_s=0.5,
                       spool={"folder": folder, **spool})


def test_without_a_broker_messages_stay_in_the_spool_for_the_next_start(tmp_path):
    async def scenario():
        metrics = Metrics()
        publisher = KafkaPublisher(config(tmp_path), metrics)
        await publisher.start()
        accepted = [publisher.offer(Outgoing("detections", "cam", b'{"n": %d}' % i)) for i in range(3)]
        await publisher.stop(timeout=0.5)
        late = publisher.offer(Outgoing("detections", "cam", b"{}"))
        return accepted, late, metrics.render().decode()

    accepted, late, text = asyncio.run(scenario())
    assert accepted == [True, True, True] and late is False
    assert metric_values(text, "rtsp_pipeline_messages_dropped_total") == {'{camera="cam",reason="shutdown"}': 1.0}
    kept = Spool(tmp_path, max_bytes=1 << 20)
    assert [r.value for r in kept.read(10)] == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
    kept.close()


def test_a_full_spool_drops_by_its_policy_and_counts(tmp_path):
    async def scenario(policy):
        metrics = Metrics()
        publisher = KafkaPublisher(config(tmp_path / policy, max_mb=0.01, policy=policy), metrics)
        await publisher.start()
        results = [publisher.offer(Outgoing("detections", "cam", b"x" * 500)) for _ in range(100)]
        await publisher.stop(timeout=0.5)
        return results, metrics.render().decode()

    results, text = asyncio.run(scenario("drop_newest"))
    assert results[0] and not results[-1]
    assert metric_values(text, "rtsp_pipeline_messages_dropped_total")['{camera="cam",reason="spool_full"}'] >= 70
    results, text = asyncio.run(scenario("drop_oldest"))
    assert all(results) and metric_values(text, "rtsp_pipeline_spool_dropped_total")['{policy="drop_oldest"}'] >= 70


def test_two_publishers_cannot_share_a_spool_folder(tmp_path):
    async def scenario():
        first = KafkaPublisher(config(tmp_path), Metrics())
        await first.start()
        try:
            with pytest.raises(PublishError, match="used by another running daemon"):
                await KafkaPublisher(config(tmp_path), Metrics()).start()
        finally:
            await first.stop(timeout=0.5)

    asyncio.run(scenario())


def test_an_outage_keeps_no_per_message_state_in_memory_beyond_a_bound(tmp_path):
    """During an outage the spool on disk holds every message; what the publisher keeps in memory
    per message (its send time, for the publish-stage metric) stays bounded."""
    async def scenario():
        publisher = KafkaPublisher(config(tmp_path), Metrics())
        await publisher.start()
        accepted = sum(publisher.offer(Outgoing("detections", "cam", b"{}")) for _ in range(_TIMED_MAX + 500))
        timed = len(publisher._spooled_at)
        await publisher.stop(timeout=0.5)
        return accepted, timed

    accepted, timed = asyncio.run(scenario())
    assert accepted == _TIMED_MAX + 500  # all kept, on disk
    assert timed == _TIMED_MAX


def test_acknowledged_detections_are_counted_from_what_the_message_said_and_an_earlier_runs_from_its_bytes(tmp_path):
    """A detections message says how many detections it holds and when its frame was captured
    (not parsed again at its acknowledgement); one the spool kept from an earlier run is read
    back. With the null producer of bench_host: every send acknowledged at once."""
    import json
    import time

    from pipeline.messages import rfc3339_ms
    from scripts.bench.bench_host import NullProducer

    def body(n):
        return json.dumps({"detections": [{}] * n, "frame": {"captured_at": rfc3339_ms(time.time() - 1)}}).encode()

    async def scenario(offers, producer_factory=None):
        metrics = Metrics()
        publisher = KafkaPublisher(config(tmp_path), metrics, producer_factory)
        await publisher.start()
        publisher.offer_many(offers)
        if producer_factory is not None:
            for _ in range(200):
                if not publisher.health()["queued"]:
                    break
                await asyncio.sleep(0.01)
        await publisher.stop(timeout=0.5)
        return metrics.render().decode()

    asyncio.run(scenario([Outgoing("detections", "cam-a", body(4))]))  # no broker: kept for the next run
    text = asyncio.run(scenario([Outgoing("detections", "cam-b", b"not parsed", 2, time.time() - 0.5)], NullProducer))
    assert metric_values(text, "rtsp_pipeline_detections_published_total") == {
        '{camera="cam-a"}': 4.0, '{camera="cam-b"}': 2.0}
    assert metric_values(text, "rtsp_pipeline_capture_to_ack_seconds_count") == {"": 2.0}
