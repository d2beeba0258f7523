"""Evidence clips: a ring of each camera's *encoded* packets, and clips remuxed from it.

The ring holds the last `clips.pre_s` seconds of a camera's compressed video as it came off the
demuxer (the same packets on the CPU and the GPU path: no decoded frame, no re-encode), in whole
GOPs: it always starts at a keyframe, so a clip cut from it can start at one. It is bounded by
seconds and by bytes (`clips.ring_mb`); when one GOP alone is larger than the byte bound, the
ring is emptied and starts again at the next keyframe (counted). A reconnect empties it: packets
of two connections do not make one playable clip.

A clip is remuxed with PyAV (`write_clip`): the packets are copied into an MP4 (or Matroska)
stream made from the camera's stream parameters, their timestamps moved so the clip starts at 0.
Those parameters (codec, size, parameter sets) are copied from the camera's input stream with
PyAV's `add_stream_from_template`, which needs a live stream: so at a connection's first keyframe
the camera's thread writes a one-packet Matroska file in memory from it (`StreamInfo.template`),
and a clip is made from that, on any thread, after the connection is gone too. (An output stream
made with `add_stream(codec)` instead opens an encoder, which puts its own parameter sets in the
file: checked, the clip then does not decode.)
The ring and the writer are DeepStream Smart Record's design (docs: "smart-rec-cache"), written
here with PyAV's remuxing rather than taken from a library: there is no Python library that keeps
an encoded-packet ring.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import queue as queue_module
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av


MAX_PENDING = 8  # clips of one camera collecting their post_s at once, at most
JUMP_S = 10.0  # media time moving on by more than this, or back by more than 1 s (B-frames reorder less), starts the ring again


@dataclass(frozen=True, slots=True)
class EncodedPacket:
    """One compressed packet as demuxed: its bytes, and its timestamps in `time_base` units."""

    data: bytes
    pts: int | None
    dts: int | None
    keyframe: bool
    captured: float | None = None  # capture time (epoch seconds), as the camera's frames are stamped

    def time(self, time_base: Fraction) -> float | None:
        """Presentation time in seconds (decode time when the packet has no pts)."""
        stamp = self.pts if self.pts is not None else self.dts
        return None if stamp is None else float(stamp * time_base)


@dataclass(frozen=True)
class StreamInfo:
    """What a remuxer needs of the camera's stream: its time base, and a template (a Matroska file
    in memory holding the stream's parameters and one keyframe)."""

    codec: str
    time_base: Fraction
    template: bytes

    @classmethod
    def of(cls, stream, keyframe: EncodedPacket) -> StreamInfo:
        """From a live input stream (on the thread that reads it) and one keyframe of it."""
        buffer = io.BytesIO()
        with av.open(buffer, "w", format="matroska") as out:
            copy = out.add_stream_from_template(stream)
            packet = av.Packet(keyframe.data)
            packet.pts = packet.dts = 0
            packet.is_keyframe = True
            packet.time_base = stream.time_base
            packet.stream = copy
            out.mux(packet)
        return cls(stream.codec_context.name, stream.time_base, buffer.getvalue())


class PacketRing:
    """The last `seconds` of one camera's packets (at most `max_bytes`), in whole GOPs from a
    keyframe. `add` runs on the camera's thread; `since` (a clip's packets) on any thread."""

    def __init__(self, seconds: float, max_bytes: int) -> None:
        self._seconds, self._max = seconds, max_bytes
        self._gops: deque[list[EncodedPacket]] = deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self._time_base: Fraction | None = None
        self._describe: Callable[[EncodedPacket], StreamInfo] | None = None
        self.stream: StreamInfo | None = None  # made at the connection's first keyframe
        self.overflows = 0  # times a single GOP was larger than max_bytes
        self._pending: list[ClipRequest] = []  # clips still collecting packets (their post_s)

    @property
    def bytes(self) -> int:
        """Bytes of packets held."""
        return self._bytes

    def reset(self, time_base: Fraction | None = None, describe: Callable[[EncodedPacket], StreamInfo] | None = None,
              keep_stream: bool = False, why: str = "the camera's connection ended") -> None:
        """A new connection (or none): forget every packet; the ring starts at the next keyframe,
        where `describe` (on the camera's thread, the stream still open) makes its StreamInfo."""
        with self._lock:
            self._gops.clear()
            self._bytes = 0
            self._time_base, self._describe = time_base, describe
            self.stream = self.stream if keep_stream else None
            cut, self._pending = self._pending, []
        for request in cut:  # a clip in the middle of its post_s ends here, saying why
            request.complete(f"{why} before post_s was reached")

    def _jumped(self, packet: EncodedPacket) -> bool:
        """The packet's time went backwards, or more than JUMP_S ahead, of the newest held."""
        if not self._gops:
            return False
        t, newest = packet.time(self._time_base), self._gops[-1][-1].time(self._time_base)
        return t is not None and newest is not None and not newest - 1.0 <= t <= newest + JUMP_S

    def add(self, packet: EncodedPacket) -> None:
        """Keep one packet (from the camera's demuxer, in decode order)."""
        if self._time_base is None:
            return
        if self._jumped(packet):  # a camera restart or a looping source: no clip spans the jump
            self.reset(self._time_base, self._describe, keep_stream=True, why="the camera's timestamps jumped")
        if packet.keyframe and self.stream is None and self._describe is not None and packet.time(self._time_base) is not None:
            stream = self._describe(packet)  # outside the lock: it writes a small file in memory
            with self._lock:
                self.stream = stream
        with self._lock:
            # a GOP starts at a keyframe with a time (FFmpeg gives an RTSP connection's first packet none:
            # a clip could not say where it starts)
            if packet.keyframe and packet.time(self._time_base) is not None:
                self._gops.append([packet])
            elif self._gops:
                self._gops[-1].append(packet)
            else:
                return  # nothing before the first keyframe
            self._bytes += len(packet.data)
            self._trim()
            done = []
            if self._pending:
                t = packet.time(self._time_base)
                for request in self._pending:
                    request.packets.append(packet)
                    if t is not None and t >= request.end:
                        done.append(request)
                self._pending = [r for r in self._pending if r not in done]
        for request in done:
            request.complete(None)

    def attach(self, request: ClipRequest, pre_s: float, post_s: float) -> bool:
        """Start a clip: the packets from the keyframe at or before `pre_s` before the newest
        packet, then every packet until `post_s` after it. False when the ring holds nothing, or
        MAX_PENDING clips of this camera are still collecting."""
        with self._lock:
            if not self._gops or self.stream is None:
                return False
            tb = self._time_base
            newest = max((t for p in self._gops[-1] if (t := p.time(tb)) is not None), default=None)
            if newest is None:
                return False
            request.trigger_time, request.end, request.stream = newest, newest + post_s, self.stream
            if len(self._pending) >= MAX_PENDING:
                return False
            request.packets = self._packets_from(newest - pre_s)
            if post_s > 0:
                self._pending.append(request)
                return True
        request.complete(None)
        return True

    def _trim(self) -> None:
        tb = self._time_base
        newest = self._gops[-1][-1].time(tb)
        # whole GOPs go while the next one still starts at least `seconds` before the newest packet
        while len(self._gops) > 1 and newest is not None:
            second = self._gops[1][0].time(tb)
            if second is None or second > newest - self._seconds:
                break
            self._drop_oldest()
        while self._bytes > self._max and len(self._gops) > 1:
            self._drop_oldest()
        if self._bytes > self._max:  # one GOP alone is too large: start again at the next keyframe
            self._drop_oldest()
            self.overflows += 1

    def _drop_oldest(self) -> None:
        gop = self._gops.popleft()
        self._bytes -= sum(len(p.data) for p in gop)

    def span(self) -> tuple[float, float] | None:
        """(first, last) presentation time held, in seconds; None when empty."""
        with self._lock:
            if not self._gops or self.stream is None:
                return None
            tb = self.stream.time_base
            times = [t for gop in self._gops for p in gop if (t := p.time(tb)) is not None]
            return (min(times), max(times)) if times else None

    def since(self, start: float) -> list[EncodedPacket]:
        """The packets from the last keyframe at or before `start` (media seconds) to now; from
        the oldest keyframe held when `start` is older than the ring."""
        with self._lock:
            if not self._gops or self.stream is None:
                return []
            return self._packets_from(start)

    def _packets_from(self, start: float) -> list[EncodedPacket]:
        """(Lock held.) The packets from the last keyframe at or before `start`, else from the oldest."""
        first = 0
        for i, gop in enumerate(self._gops):
            t = gop[0].time(self._time_base)
            if t is not None and t <= start:
                first = i
        return [p for gop in list(self._gops)[first:] for p in gop]


def write_clip(path: Path, stream: StreamInfo, packets: Iterable[EncodedPacket],
               container: str | None = None) -> tuple[float, float, int]:
    """Remux `packets` (decode order, from a keyframe) into a new file at `path` (`container`
    "mp4" or "matroska", else from its suffix), timestamps moved so that the first packet's
    presentation time is 0. Returns (first, last) presentation time in the source's seconds and
    the packets written."""
    packets = list(packets)
    if not packets or not packets[0].keyframe:
        raise ValueError("a clip must start at a keyframe")
    tb = stream.time_base
    start = packets[0].pts
    if start is not None:  # leading pictures of an open GOP (HEVC's RASL) need the GOP before: left out
        packets = [packets[0]] + [p for p in packets[1:] if p.pts is None or p.pts >= start]
    origin = min(p.pts if p.pts is not None else p.dts for p in packets if p.pts is not None or p.dts is not None)
    mp4 = container == "mp4" or (container is None and path.suffix == ".mp4")
    # the file is ours to close: when a write fails (a full disk), PyAV's close raises while writing
    # the trailer and leaves its own file open (seen: a deleted .part held open after each failure)
    with open(path, "w+b") as fh, av.open(io.BytesIO(stream.template)) as template, \
            av.open(fh, "w", format=container or ("mp4" if mp4 else "matroska"),
                    options={"movflags": "+faststart"} if mp4 else {}) as out:
        kwargs = {"codec_tag": "hvc1"} if stream.codec == "hevc" and mp4 else {}  # as players ask
        video = out.add_stream_from_template(template.streams.video[0], **kwargs)
        video.time_base = tb
        last_dts = None
        for p in packets:
            packet = av.Packet(p.data)
            packet.pts = None if p.pts is None else p.pts - origin
            dts = p.dts if p.dts is not None else p.pts
            packet.dts = None if dts is None else dts - origin
            if packet.dts is not None and last_dts is not None and packet.dts <= last_dts:
                packet.dts = last_dts + 1  # a muxer needs rising decode times (a damaged source may repeat one)
            last_dts = packet.dts
            packet.is_keyframe = p.keyframe
            packet.time_base = tb
            packet.stream = video
            out.mux(packet)
    times = [t for p in packets if (t := p.time(tb)) is not None]
    return min(times), max(times), len(packets)


@dataclass(eq=False)
class ClipRequest:
    """One clip being collected: its packets so far, and what becomes of it (`on_complete`, on the
    thread that completes it: the camera's, or the one that asked when there is no post_s)."""

    clip_id: str
    camera: str
    trigger: dict  # what asked: {"kind": "api"} or {"kind": "rule", "rule": ...}
    track_ids: tuple[int, ...] = ()
    requested_at: float = 0.0  # epoch seconds
    on_complete: Callable[[ClipRequest], None] | None = None
    packets: list[EncodedPacket] = field(default_factory=list)
    stream: StreamInfo | None = None
    trigger_time: float = 0.0  # media seconds: the newest packet when asked
    end: float = 0.0  # media seconds: the clip runs until a packet at or after it
    ended_early: str | None = None  # why it has less than its post_s

    def complete(self, ended_early: str | None) -> None:
        self.ended_early = ended_early
        if self.on_complete is not None:
            self.on_complete(self)


@dataclass(frozen=True)
class ClipResult:
    """A clip written (path, size, sha256 set) or failed (`failure` says why)."""

    clip_id: str
    camera: str
    trigger: dict
    track_ids: tuple[int, ...]
    path: Path | None
    size: int = 0
    sha256: str = ""
    first: float | None = None  # media seconds of its first and last packet in the source
    last: float | None = None
    first_captured: float | None = None  # capture times (epoch seconds) of its first and last packet
    last_captured: float | None = None
    ended_early: str | None = None
    failure: str | None = None


class Recorder:
    """Every camera's ring, and one writer thread that turns completed clips into files in
    `folder/CAMERA/CLIP.mp4` (written as .part, then renamed), keeps the folder within `max_age_s`
    and `max_bytes` (oldest first), and reports each clip to `on_done` (on the writer thread).
    The writer's queue holds `queue` clips: one more fails ("writer busy"), never waits, so a
    camera's thread is never held by a slow disk."""

    def __init__(self, folder: Path, *, pre_s: float, ring_bytes: int, max_age_s: float, max_bytes: int,
                 on_done: Callable[[ClipResult], None], queue: int = 8, clock: Callable[[], float] = time.time) -> None:
        self.folder, self.pre_s, self._ring_bytes = Path(folder), pre_s, ring_bytes
        self._max_age, self._max_bytes, self._on_done, self._clock = max_age_s, max_bytes, on_done, clock
        self._rings: dict[str, PacketRing] = {}
        self._queue: queue_module.Queue[ClipRequest | None] = queue_module.Queue(queue)
        self._thread = threading.Thread(target=self._write_loop, name="clip-writer", daemon=True)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Write what is queued (within `timeout`), then end the writer; False if it is still busy."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue_module.Full:
            return False
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ cameras
    def ring(self, camera: str) -> PacketRing:
        """The camera's ring (made at its first connection, kept across reconnects)."""
        ring = self._rings.get(camera)
        if ring is None:
            ring = self._rings[camera] = PacketRing(self.pre_s, self._ring_bytes)
        return ring

    def forget(self, camera: str) -> None:
        """The camera was removed: its ring goes (a clip it was collecting ends early)."""
        ring = self._rings.pop(camera, None)
        if ring is not None:
            ring.reset()

    def ring_bytes(self) -> dict[str, int]:
        return {camera: ring.bytes for camera, ring in list(self._rings.items())}

    # ------------------------------------------------------------------ clips
    def request(self, camera: str, pre_s: float, post_s: float, trigger: dict,
                track_ids: tuple[int, ...] = ()) -> ClipRequest | None:
        """Start a clip of `camera` from `pre_s` before now (from the keyframe at or before it)
        to `post_s` after; None when the camera has no packets to cut from (not streaming)."""
        ring = self._rings.get(camera)
        clip = ClipRequest(f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(self._clock()))}-{uuid.uuid4().hex[:8]}",
                           camera, trigger, tuple(track_ids), self._clock(), self._completed)
        if ring is None or not ring.attach(clip, min(pre_s, self.pre_s), post_s):
            return None
        return clip

    def _completed(self, clip: ClipRequest) -> None:
        try:
            self._queue.put_nowait(clip)
        except queue_module.Full:
            self._on_done(self._result(clip, failure="the clip writer is busy (its queue is full)"))

    def _write_loop(self) -> None:
        while True:
            clip = self._queue.get()
            if clip is None:
                return
            try:
                result = self._write(clip)
            except Exception as exc:  # noqa: BLE001 - one clip fails, not the writer
                result = self._result(clip, failure=_describe_failure(exc))
            self._on_done(result)

    def _write(self, clip: ClipRequest) -> ClipResult:
        folder = self.folder / clip.camera
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{clip.clip_id}.mp4"
        part = path.with_name(path.name + ".part")
        try:
            first, last, _ = write_clip(part, clip.stream, clip.packets, container="mp4")
            digest = hashlib.sha256()
            with open(part, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            os.replace(part, path)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        size = path.stat().st_size
        self.enforce_retention()
        return self._result(clip, path=path, size=size, sha256=digest.hexdigest(), first=first, last=last)

    def _result(self, clip: ClipRequest, **found) -> ClipResult:
        captured = [p.captured for p in clip.packets if p.captured is not None]
        return ClipResult(clip.clip_id, clip.camera, clip.trigger, clip.track_ids, found.pop("path", None),
                          first_captured=min(captured, default=None), last_captured=max(captured, default=None),
                          ended_early=clip.ended_early, **found)

    def enforce_retention(self) -> list[Path]:
        """Delete clips older than max_age_s, then the oldest until the folder is within max_bytes."""
        clips = []
        for path in self.folder.glob("*/*.mp4"):
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                clips.append((stat.st_mtime, stat.st_size, path))
        clips.sort()
        now, total, removed = self._clock(), sum(size for _, size, _ in clips), []
        for mtime, size, path in clips:
            if now - mtime <= self._max_age and total <= self._max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
            total -= size
        return removed


def _describe_failure(exc: BaseException) -> str:
    """A clip's failure in words, with what to do."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "the clip folder's disk is full: free space or lower clips.max_gb"
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"the clip folder cannot be written ({exc.strerror}): check clips.folder and its permissions"
    return f"{type(exc).__name__}: {exc}"


CLIP_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")


class ClipService:
    """What the HTTP API asks of clips: start one for a running camera, and find a written one
    (on disk, so clips of earlier runs are found too; the id's shape keeps requests inside the folder)."""

    def __init__(self, recorder: Recorder, running: Callable[[str], bool], pre_s: float, post_s: float) -> None:
        self._recorder, self._running, self._pre_s, self._post_s = recorder, running, pre_s, post_s

    def request(self, camera: str, pre_s: float | None, post_s: float | None) -> dict:
        from pipeline.api.errors import ApiError

        if not self._running(camera):
            raise ApiError(404, "no_camera", f"no camera {camera!r} runs here")
        pre = min(self._pre_s, self._pre_s if pre_s is None else pre_s)
        post = self._post_s if post_s is None else post_s
        clip = self._recorder.request(camera, pre, post, {"kind": "api"})
        if clip is None:
            raise ApiError(409, "not_recording", f"camera {camera!r} has no video to cut from yet (not streaming), or "
                           f"{MAX_PENDING} of its clips are still recording; try again")
        return {"clip_id": clip.clip_id, "camera_id": camera, "pre_s": pre, "post_s": post,
                "url": f"/v1/clips/{clip.clip_id}"}

    def path(self, clip_id: str) -> Path | None:
        if not CLIP_ID.match(clip_id):
            return None
        return next(iter(self._recorder.folder.glob(f"*/{clip_id}.mp4")), None)
