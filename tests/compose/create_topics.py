"""Stand-in for the compose stack's kafka-topics job (apache/kafka's kafka-topics.sh): the same topics
with the same partition counts, made with aiokafka's admin client. Usage: create_topics.py NAME:PARTITIONS ..."""
import asyncio
import sys

from aiokafka.admin import AIOKafkaAdminClient, NewTopic


async def main(specs: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers="kafka:9092")
    for _ in range(60):  # the broker may still be starting
        try:
            await admin.start()
            break
        except Exception:  # noqa: BLE001 - not up yet
            await asyncio.sleep(1)
    topics = [NewTopic(name, int(count), 1) for name, count in (spec.split(":") for spec in specs)]
    print(await admin.create_topics(topics))
    await admin.close()


asyncio.run(main(sys.argv[1:]))
