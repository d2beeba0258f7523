"""What a node says of its place in the group (issue 33): /readyz is not ready before the group
gave it its first assignment, ready once applied, and not ready again after being out of the group
longer than session + rebalance timeout, each time saying why; a camera of this node's list that
the leader's plan lacks (the lists differ) is said on the status topic. The daemon's Runtime, with
the group coordinator played in-process (FakeGroup), gated camera workers, and bench_host's null
producer in place of a broker (every message acknowledged at once)."""
import asyncio
import json

import pytest

from pipeline.app import Runtime
from pipeline.config import load_config
from scripts.bench.bench_host import NullProducer
from scripts.lab.daemons import PLACEMENT_MODEL, daemon_config
from tests.unit.placement_fakes import FakeGroup, SimpleNode, Workers, eventually

pytestmark = pytest.mark.timeout(90)


class Recording(NullProducer):
    """The null producer, keeping what was sent."""

    sent_values: list = []

    async def send(self, topic, value=None, key=None, partition=None):
        Recording.sent_values.append((topic, json.loads(value)))
        return await super().send(topic, value, key, partition)


def config(tmp_path, cameras: dict[str, float], **placement):
    return daemon_config(tmp_path / "a.yaml", PLACEMENT_MODEL, "127.0.0.1:9",
                         [(c, f"rtsp://127.0.0.1:9/{c}", fps) for c, fps in cameras.items()],
                         kafka={"stop_timeout_s": 1},
                         placement={"mode": "kafka-group", "group": "g", "node_id": "node-a", "capacity": 100,
                                    **placement})


def runtime(path, group) -> Runtime:
    return Runtime(load_config(path), config_path=path, worker_factory=Workers(), api_tokens=[],
                   producer_factory=Recording,
                   member_options={"consumer_factory": group.consumer, "own_thread": False})


def test_ready_only_with_an_assignment_applied_and_not_after_long_out_of_the_group(tmp_path):
    async def main():
        group = FakeGroup(auto=False)  # nothing is assigned until the test says
        path = config(tmp_path, {"cam-a": 2.0}, session_timeout_s=1, heartbeat_s=0.3, rebalance_timeout_s=1,
                      broker_min_session_timeout_s=0)
        daemon = runtime(path, group)
        task = asyncio.get_running_loop().create_task(daemon.run())
        await eventually(lambda: group.members(), timeout=30, what="the node joining its group")
        ready, body = daemon.readyz()
        assert not ready and body["placement"]["not_ready"].startswith("no assignment from placement group g")
        await group.rebalance()
        await eventually(lambda: daemon.readyz()[0], what="ready once its share runs")
        group.stalled = True
        await group.rebalance()  # a rebalance begins and does not end
        await eventually(lambda: not daemon.readyz()[0], timeout=10, what="not ready after 2 s out of the group")
        assert daemon.readyz()[1]["placement"]["not_ready"].startswith("out of placement group g for ")
        daemon.request_stop()
        assert await task == 0
    asyncio.run(main())


def test_a_camera_the_leaders_list_lacks_is_said_on_the_status_topic(tmp_path):
    async def main():
        Recording.sent_values.clear()
        group = FakeGroup()
        leader = SimpleNode("node-l", {"cam-a": 2.0, "cam-b": 2.0})  # not reloaded yet: no cam-x
        member_l = leader.member(group)
        await member_l.start()
        daemon = runtime(config(tmp_path, {"cam-a": 2.0, "cam-b": 2.0, "cam-x": 2.0}), group)
        task = asyncio.get_running_loop().create_task(daemon.run())

        def said():
            return [body for topic, body in Recording.sent_values
                    if topic == "camera-status" and body["camera_id"] == "cam-x"]
        await eventually(lambda: said(), timeout=30, what="a status message for cam-x")
        assert said()[0]["state"] == "stopped" and "leader does not have this camera" in said()[0]["reason"]
        ready, body = daemon.readyz()
        assert any("camera lists differ" in d for d in body["degraded"]), body["degraded"]
        daemon.request_stop()
        assert await task == 0
        await member_l.stop()
    asyncio.run(main())
