"""`rtsp-pipeline placement` reads the map the group's leader published, on a real broker (Tansu).
The control topic is made by whoever touches it first, with the broker's default partitions (4 on
Tansu), and the leader's map goes to the partition its key (the group) hashes to: reading
partition 0 only found no map for 3 groups in 4 (seen in CI). The newest map wins by (generation,
time) whatever the order records landed in, and what is not a map of this group is skipped (a
foreign record made the command fail with a ValueError)."""
import asyncio
import json
import subprocess
import sys
import uuid

from aiokafka import AIOKafkaProducer

from pipeline.config import KafkaConfig
from pipeline.placement.group import control_topic, read_placement_map
from scripts.lab.common import REPO


def test_the_newest_map_is_read_whichever_partition_holds_it(broker, tmp_path):
    group = f"group-{uuid.uuid4().hex[:8]}"
    kafka = KafkaConfig(bootstrap_servers=broker.bootstrap)

    async def publish():
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            maps = ((0, 1, 100.0), (2, 7, 300.0), (2, 6, 400.0), (3, 5, 200.0))  # 6 landed after 7
            for partition, generation, at in maps:
                body = {"schema": "placement/v1", "group": group, "generation": generation, "at": at,
                        "nodes": {"node-a": {"cameras": ["cam-1"], "load": 2.0, "capacity": 10.0}},
                        "moving": [], "unplaced": ["cam-9"] if generation == 7 else []}
                await producer.send_and_wait(control_topic(group), json.dumps(body).encode(), key=group.encode(),
                                             partition=partition)
            foreign = [b"not json", b'["a list"]', json.dumps({"schema": "placement/v1", "group": "another",
                                                                "generation": 99, "at": 500.0}).encode()]
            for value in foreign:  # someone else's records on the topic, after the maps
                await producer.send_and_wait(control_topic(group), value, key=b"x", partition=2)
        finally:
            await producer.stop()

    none, why = asyncio.run(read_placement_map(kafka, group, 2))
    assert none is None and "no node has joined" in why
    asyncio.run(publish())
    found, _ = asyncio.run(read_placement_map(kafka, group, 10))
    assert found["generation"] == 7, found  # the newest, on partition 2, despite an older one and junk after it

    config = tmp_path / "node.yaml"
    config.write_text(f"model: {{path: {REPO}/engines/shapes-yolov8n.onnx}}\n"
                      f"kafka: {{bootstrap_servers: '{broker.bootstrap}'}}\n"
                      f"placement: {{mode: kafka-group, group: {group}}}\n"
                      "cameras: [{id: cam-1, url: 'rtsp://127.0.0.1:1/x'}]\n")
    shown = subprocess.run([sys.executable, "-m", "pipeline", "placement", "--config", str(config)],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert shown.returncode == 0 and f"group {group}, generation 7" in shown.stdout, shown.stdout + shown.stderr
    assert "unplaced: cam-9" in shown.stdout and "node-a" in shown.stdout
