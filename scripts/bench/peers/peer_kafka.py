"""Kafka publishing for the benchmark's peers (scripts/bench/peers/peer_*.py): one aiokafka producer on its own
event-loop thread, fire and forget from any thread, the same producer settings as the daemon's
(acks=all, zstd, linger 0 ms). Runs in the peer environment; imports nothing of the product."""
from __future__ import annotations

import asyncio
import json
import threading
from datetime import datetime, timezone


def add_peer_arguments(parser) -> None:
    """The command line every peer takes from scripts/bench/bench_peers.py."""
    parser.add_argument("--model", required=True)
    parser.add_argument("--input-size", type=int, default=320)
    parser.add_argument("--confidence", type=float, default=0.35)
    parser.add_argument("--iou", type=float, default=0.45)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--camera", action="append", required=True, help="ID=RTSP_URL")
    parser.add_argument("--seconds", type=float, required=True)


def message(cam: str, seq: int, pts: float, captured_at: float, width: int, height: int,
            detections: list[dict]) -> bytes:
    """The fields of detections/v1 that the benchmark scores."""
    stamp = datetime.fromtimestamp(captured_at, timezone.utc).isoformat(timespec="milliseconds")
    return json.dumps({
        "camera_id": cam,
        "frame": {"seq": seq, "pts": pts, "captured_at": stamp.replace("+00:00", "Z"), "width": width,
                  "height": height},
        "detections": detections,
    }).encode()


class PeerPublisher:
    """Sends (key, value) to one topic; `close()` flushes."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from aiokafka import AIOKafkaProducer

        self._topic = topic
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def start():
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", compression_type="zstd",
                                        linger_ms=0, enable_idempotence=False)
            await producer.start()
            return producer

        self._producer = asyncio.run_coroutine_threadsafe(start(), self._loop).result(30)

    def send(self, key: str, value: bytes) -> None:
        asyncio.run_coroutine_threadsafe(self._producer.send(self._topic, value, key=key.encode()), self._loop)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._producer.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
