"""Clip and snapshot requests from alert rules (clip-requests/v1), served by the node that runs the camera.

The alerting consumer may run on another host. For each alert of a rule with `clip:` or
`snapshot: true` it sends a request to `clips.requests_topic`, keyed by camera, naming the
alert's frame (`at`, its capture time), the tracks, and ids it chose itself (so the alert can
name its clip and snapshots before they exist). Every node reads every partition of that topic
(no consumer group: each request is for whichever node runs its camera, which under placement
is the camera's owner) and serves the requests for the cameras it runs now; the others ignore
them. A request older than the ring (`at` more than pre_s + late_s ago: e.g. read again at a
restart) cannot be served and is counted as stale; one whose id was served already (an alerting
consumer that restarted sends its last alerts' requests again) as a duplicate.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.clips import CLIP_ID, Recorder
from pipeline.logs import log_event

log = logging.getLogger(__name__)
REQUESTS_SCHEMA = "clip-requests/v1"
RETRY_S = (1.0, 30.0)  # reading the topic again after the broker failed: first wait, longest wait


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ClipAsk(_Strict):
    pre_s: float = Field(ge=0, le=120)
    post_s: float = Field(ge=0, le=120)


class EvidenceRequest(_Strict):
    """One clip-requests/v1 message."""

    schema_: Literal["clip-requests/v1"] = Field(alias="schema")
    request_id: str = Field(pattern=CLIP_ID.pattern)
    camera_id: str = Field(min_length=1, max_length=200)
    model: str = Field("", max_length=200)
    at: datetime
    trigger: dict
    track_ids: list[int] = Field(default_factory=list, max_length=100)
    clip: ClipAsk | None = None
    snapshots: bool = False


def parse_request(raw: bytes | None) -> EvidenceRequest:
    """The request in a message value; ValueError says what is wrong with it."""
    try:
        data = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != REQUESTS_SCHEMA:
        raise ValueError(f"schema {data.get('schema') if isinstance(data, dict) else None!r}, "
                         f"not {REQUESTS_SCHEMA}")
    try:
        return EvidenceRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


class RequestHandler:
    """Serves requests for the cameras running here: `handle(raw)` -> outcome (counted by the caller)."""

    def __init__(self, recorder: Recorder, running: Callable[[str], bool], pre_s: float, late_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._recorder, self._running, self._clock = recorder, running, clock
        self._pre_s, self._late_s = pre_s, late_s
        self._warned: set[str] = set()

    def handle(self, raw: bytes | None) -> str:
        try:
            request = parse_request(raw)
        except ValueError as exc:
            self._warn_once("invalid", "a clip request is not valid; ignored", reason=str(exc))
            return "invalid"
        camera = request.camera_id
        if not self._running(camera):
            return "not_here"
        at = request.at.timestamp()
        if at < self._clock() - (self._pre_s + self._late_s):
            return "stale"
        if self._recorder.seen(request.request_id):
            return "duplicate"
        trigger = {**request.trigger, "kind": "rule", "request_id": request.request_id}
        outcome = "accepted"
        if request.clip is not None:
            clip = self._recorder.request(camera, request.clip.pre_s, request.clip.post_s, trigger,
                                          tuple(request.track_ids), at=at, clip_id=request.request_id)
            if clip is None:
                self._warn_once(f"refused:{camera}", "a rule's clip cannot be cut: the camera has no video in its "
                                "ring yet, or its most clips are recording", camera=camera,
                                request_id=request.request_id)
                outcome = "refused"
        if request.snapshots and request.track_ids:
            if not self._recorder.snapshots(camera, request.model, request.track_ids, request.request_id, trigger):
                log_event(log, logging.WARNING, "snapshots not taken: the clip writer is busy (its queue is full)",
                          camera=camera, request_id=request.request_id)
                outcome = "refused"
        return outcome

    def _warn_once(self, kind: str, event: str, **fields) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log_event(log, logging.WARNING, event, **fields)


async def read_requests(topic: str, consumer_factory: Callable[[], object], handle: Callable[[bytes | None], str],
                        count: Callable[[str], None]) -> None:
    """Read the requests topic until cancelled: every partition, from its earliest offset (a
    request that made the topic is not missed; old ones are stale), again after a broker failure."""
    wait = RETRY_S[0]
    while True:
        consumer = consumer_factory()
        try:
            await consumer.start()
            consumer.subscribe([topic])
            wait = RETRY_S[0]
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=200)
                for records in batches.values():
                    for record in records:
                        count(handle(record.value))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the broker went away: read again later
            log_event(log, logging.WARNING, "clip requests not readable; trying again", topic=topic,
                      error=f"{type(exc).__name__}: {exc}", retry_s=wait)
        finally:
            await asyncio.shield(_stop(consumer))
        await asyncio.sleep(wait)
        wait = min(RETRY_S[1], wait * 2)


async def _stop(consumer) -> None:
    try:
        await consumer.stop()
    except Exception:  # noqa: BLE001 - a consumer that never started
        pass
