"""Run inside the compose network (from the stack's own image) by tests/integration/test_compose.py:
the topics' partition counts, detections read from `detections`, and an alert on `alerts`; prints
one JSON object."""
import asyncio
import json
import sys
import time

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient


async def main(camera: str, rule: str, timeout: float) -> dict:
    consumer = AIOKafkaConsumer("detections", "alerts", bootstrap_servers="kafka:9092",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out = {"partitions": {}, "detections": 0, "with_objects": 0, "alerts": []}
    deadline = time.monotonic() + timeout
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers="kafka:9092")
        await admin.start()
        for described in await admin.describe_topics(["detections", "camera-status", "alerts"]):
            out["partitions"][described["topic"]] = len(described["partitions"])
        await admin.close()
        while time.monotonic() < deadline and not (out["detections"] >= 10 and out["alerts"]):
            for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                for m in messages:
                    value = json.loads(m.value)
                    if tp.topic == "detections" and value["camera_id"] == camera:
                        out["detections"] += 1
                        out["with_objects"] += bool(value["detections"])
                    elif tp.topic == "alerts" and value.get("rule") == rule:
                        out["alerts"].append(value.get("state"))
    finally:
        await consumer.stop()
    return out


print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))))
