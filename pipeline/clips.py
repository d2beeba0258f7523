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
    annex_b: bool = False  # its packets carry start codes (RTSP, MPEG-TS), not lengths (MP4, Matroska)

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
        extradata = stream.codec_context.extradata
        annex_b = not extradata or extradata[0] != 1  # avcC and hvcC start with their version, 1
        return cls(stream.codec_context.name, stream.time_base, buffer.getvalue(), annex_b)


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

    def attach(self, request: ClipRequest, pre_s: float, post_s: float, at: float | None = None) -> bool:
        """Start a clip: the packets from the keyframe at or before `pre_s` before the trigger,
        then every packet until `post_s` after it. The trigger is the newest packet, or the packet
        captured at `at` (epoch seconds: a rule's request names its alert's frame, and arrives
        later). False when the ring holds nothing, or MAX_PENDING clips of this camera are still
        collecting."""
        with self._lock:
            if not self._gops or self.stream is None:
                return False
            tb = self._time_base
            newest = max((t for p in self._gops[-1] if (t := p.time(tb)) is not None), default=None)
            if newest is None:
                return False
            trigger = newest if at is None else self._media_time_at(at, newest)
            request.trigger_time, request.end, request.stream = trigger, trigger + post_s, self.stream
            if len(self._pending) >= MAX_PENDING:
                return False
            request.packets = self._packets_from(trigger - pre_s, request.end)
            if post_s > 0 and newest < request.end:
                self._pending.append(request)
                return True
        request.complete(None)
        return True

    def _media_time_at(self, at: float, newest: float) -> float:
        """(Lock held.) The media time of the packet captured nearest to `at` (the oldest held
        when `at` is older than the ring, the newest when it is newer)."""
        tb, best, best_gap = self._time_base, newest, None
        for gop in self._gops:
            for p in gop:
                t = p.time(tb)
                if p.captured is None or t is None:
                    continue
                gap = abs(p.captured - at)
                if best_gap is None or gap < best_gap:
                    best, best_gap = t, gap
        return best

    def around(self, pts: float) -> tuple[StreamInfo | None, list[EncodedPacket]]:
        """What decodes the picture at `pts` (media seconds): the stream, and the packets from the
        keyframe at or before it through the next GOP (an open GOP's last pictures, HEVC's
        leading pictures, come after the next keyframe in decode order); none when not held."""
        with self._lock:
            if not self._gops or self.stream is None:
                return self.stream, []
            tb, gops = self._time_base, list(self._gops)
            for i in range(len(gops) - 1, -1, -1):
                start = gops[i][0].time(tb)
                if start is not None and start <= pts + 1e-6:
                    return self.stream, [p for gop in gops[i:i + 2] for p in gop]
            return self.stream, []

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

    def _packets_from(self, start: float, end: float | None = None) -> list[EncodedPacket]:
        """(Lock held.) The packets from the last keyframe at or before `start`, else from the
        oldest; up to the first at or after `end` (in decode order, as a clip collecting its
        post_s stops) when given."""
        first = 0
        for i, gop in enumerate(self._gops):
            t = gop[0].time(self._time_base)
            if t is not None and t <= start:
                first = i
        out = []
        for gop in list(self._gops)[first:]:
            for p in gop:
                out.append(p)
                if end is not None and (t := p.time(self._time_base)) is not None and t >= end:
                    return out
        return out


def write_clip(path: Path | io.BytesIO, stream: StreamInfo, packets: Iterable[EncodedPacket],
                container: str | None = None) -> tuple[float, float, int]:
    """Remux `packets` (decode order, from a keyframe) into a new file at `path`, or a buffer (`container`
    "mp4" or "matroska", else from its suffix), timestamps moved so that the first packet's
    presentation time is 0. Returns (first, last) presentation time in the source's seconds and
    the packets written."""
    packets = list(packets)
    if not packets or not packets[0].keyframe:
        raise ValueError("a clip must start at a keyframe")
    tb = stream.time_base
    mp4 = container == "mp4" or (container is None and isinstance(path, Path) and path.suffix == ".mp4")
    packets, origin = _clip_packets(packets, mp4)
    # the file is ours to close: when a write fails (a full disk), PyAV's close raises while writing
    # the trailer and leaves its own file open (seen: a deleted .part held open after each failure)
    target = contextlib.nullcontext(path) if isinstance(path, io.BytesIO) else open(path, "w+b")
    with target as fh, av.open(io.BytesIO(stream.template)) as template, \
            av.open(fh, "w", format=container or ("mp4" if mp4 else "matroska"),
                    options={"movflags": "+faststart"} if mp4 and fh is not path else {}) as out:
        kwargs = {"codec_tag": "hvc1"} if stream.codec == "hevc" and mp4 else {}  # as players ask
        video = out.add_stream_from_template(template.streams.video[0], **kwargs)
        video.time_base = tb
        prefix = (_nal_length_size(stream.codec, template.streams.video[0].codec_context.extradata)
                  if stream.annex_b else None)
        last_dts = None
        for p in packets:
            packet = av.Packet(p.data if prefix is None else _length_prefixed(p.data, prefix))
            packet.pts = None if p.pts is None else p.pts - origin
            # a packet without a decode time (a file's first B-frame GOP, as FFmpeg demuxes it) decodes
            # right after the one before: its presentation time could be after the next one's
            dts = p.dts - origin if p.dts is not None else last_dts + 1 if last_dts is not None else packet.pts
            packet.dts = dts
            if packet.dts is not None and last_dts is not None and packet.dts <= last_dts:
                packet.dts = last_dts + 1  # a muxer needs rising decode times (a damaged source may repeat one)
            last_dts = packet.dts
            packet.is_keyframe = p.keyframe
            packet.time_base = tb
            packet.stream = video
            out.mux(packet)
    times = [t for p in packets if (t := p.time(tb)) is not None]
    return min(times), max(times), len(packets)


def _nal_length_size(codec: str, extradata: bytes | None) -> int | None:
    """The NAL length size of a stream whose parameter sets are in avcC/hvcC form (the template's
    Matroska stores them so), else None (Annex B: the muxer converts its packets itself)."""
    if not extradata or extradata[0] != 1:
        return None
    if codec == "h264" and len(extradata) > 4:
        return (extradata[4] & 3) + 1
    if codec == "hevc" and len(extradata) > 21:
        return (extradata[21] & 3) + 1
    return None


def _length_prefixed(data: bytes, size: int) -> bytes:
    """An Annex B packet (NAL units after 00 00 01 start codes, as RTSP cameras send them) as NAL
    units each after its length, as MP4 stores them with avcC/hvcC parameter sets (MP4's muxer
    converts packets only when the parameter sets are Annex B too; with hvcC it wrote the start
    codes as lengths: the clip of an H.265 camera did not decode, found by the rule's clip test)."""
    first = data.find(b"\x00\x00\x01")
    if first < 0 or first > 1 or data[:first].strip(b"\x00"):
        return data  # no start code at its head: not Annex B after all
    out, start = bytearray(), first + 3
    while True:
        following = data.find(b"\x00\x00\x01", start)
        end = len(data) if following < 0 else following
        nal = data[start:end].rstrip(b"\x00") if following >= 0 else data[start:end]
        if nal:
            out += len(nal).to_bytes(size, "big") + nal
        if following < 0:
            return bytes(out)
        start = following + 3


def _clip_packets(packets: list[EncodedPacket], mp4: bool) -> tuple[list[EncodedPacket], int]:
    """The packets a clip keeps, and the time (in the stream's units) that becomes its 0."""
    start = packets[0].pts
    if start is not None:  # leading pictures of an open GOP (HEVC's RASL) need the GOP before: left out
        packets = [packets[0]] + [p for p in packets[1:] if p.pts is None or p.pts >= start]
    origin = min(p.pts if p.pts is not None else p.dts for p in packets if p.pts is not None or p.dts is not None)
    if not mp4:  # Matroska takes no negative time: B-frames' decode times start before the first picture's
        origin = min([origin] + [p.dts for p in packets if p.dts is not None])
    return packets, origin


def decode_picture(stream: StreamInfo, packets: list[EncodedPacket], pts: float) -> av.VideoFrame | None:
    """Decode `packets` (decode order, from a keyframe) and return the picture shown at `pts`
    (media seconds; the nearest one), or None. They are remuxed into an MP4 in memory first, as a
    clip is: its muxer puts a camera's in-band (Annex B) packets and the stream's parameter sets
    into one form a decoder reads (Matroska's did not, for H.265 over RTSP: checked). A snapshot is made so, on any thread, from the
    ring's compressed packets: no decoded frame is kept for it, on either path (on the GPU path it
    costs this CPU decode of up to two GOPs, not a device-to-host copy of every frame)."""
    if not packets or not packets[0].keyframe:
        return None
    tb = stream.time_base
    buffer = io.BytesIO()
    write_clip(buffer, stream, packets, container="mp4")
    buffer.seek(0)
    want, best, best_gap = pts - float(_clip_packets(packets, mp4=True)[1] * tb), None, None
    with av.open(buffer) as clip:
        video = clip.streams.video[0]
        video.thread_count = 1
        try:
            for frame in clip.decode(video):
                if frame.pts is None:
                    continue
                gap = abs(float(frame.time) - want)
                if best_gap is None or gap < best_gap:
                    best, best_gap = frame, gap
                if gap < 1e-3:
                    break
        except av.error.InvalidDataError:
            pass  # a damaged packet: the picture may already be in hand
    return best


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


RECENT_REQUESTS = 1024  # request ids remembered, to ignore a repeated one
RETENTION_EVERY_S = 600.0  # the clip folder is kept within its bounds this often while nothing is written


@dataclass(frozen=True, slots=True)
class Sighting:
    """A track's sighting: where and when, and its score (confidence x box area)."""

    track_id: int
    label: str
    confidence: float
    bbox: tuple[float, float, float, float]
    pts: float  # media seconds: finds its packets in the ring
    captured: float  # epoch seconds, as its message says
    score: float


class Sightings:
    """Each tracked object's best sighting still in its camera's ring, per (camera, model): fed
    each inferred frame's detections (on the inference thread), read when a snapshot is asked for.
    A sighting replaces the kept one when it scores higher, or when the kept one is older than
    `keep_s` (so the kept one is always within the ring, which holds `forget_s` >= `keep_s`).
    Objects unseen for `forget_s` are dropped: memory is bounded by the objects in view."""

    def __init__(self, keep_s: float, forget_s: float) -> None:
        self._keep_s, self._forget_s = keep_s, forget_s
        self._best: dict[tuple[str, str], dict[int, Sighting]] = {}
        self._newest: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._fed = 0

    def feed(self, camera: str, model: str, pts: float, captured: float, detections: Iterable) -> None:
        """One inferred frame's detections (pipeline.core.Detection); untracked ones are skipped."""
        key = (camera, model)
        with self._lock:
            best = self._best.setdefault(key, {})
            self._newest[key] = captured
            for det in detections:
                track = det.track_id
                if track is None:
                    continue
                x1, y1, x2, y2 = det.bbox
                score = det.confidence * (x2 - x1) * (y2 - y1)
                kept = best.get(track)
                if kept is None or score > kept.score or captured - kept.captured > self._keep_s:
                    best[track] = Sighting(track, det.track_label or det.label, det.confidence, det.bbox, pts,
                                           captured, score)
            self._fed += 1
            if self._fed % 64 == 0:
                self._prune()

    def _prune(self) -> None:
        for key, best in self._best.items():
            horizon = self._newest.get(key, 0.0) - self._forget_s
            for track in [t for t, s in best.items() if s.captured < horizon]:
                del best[track]

    def best(self, camera: str, model: str, track: int) -> Sighting | None:
        with self._lock:
            return self._best.get((camera, model), {}).get(track)

    def forget(self, camera: str) -> None:
        """The camera stopped here: its objects go."""
        with self._lock:
            for key in [k for k in self._best if k[0] == camera]:
                del self._best[key]
                self._newest.pop(key, None)


@dataclass(frozen=True)
class Snapshot:
    """One track's snapshot: written (`size`, `sha256`) or failed (`failure`)."""

    track_id: int
    name: str  # its id: REQUEST-TRACK; files NAME.jpg and NAME-boxed.jpg
    sighting: Sighting | None = None
    size: int = 0
    sha256: str = ""
    failure: str | None = None


@dataclass(frozen=True)
class SnapshotJob:
    request_id: str
    camera: str
    model: str
    trigger: dict
    shots: list  # (track, Sighting | None, StreamInfo | None, packets)


@dataclass(frozen=True)
class SnapshotResult:
    """A request's snapshots, one per track asked for."""

    request_id: str
    camera: str
    model: str
    trigger: dict
    snapshots: list[Snapshot]


class Recorder:
    """Every camera's ring, and one writer thread that turns completed clips into files in
    `folder/CAMERA/CLIP.mp4` (written as .part, then renamed), keeps the folder within `max_age_s`
    and `max_bytes` (oldest first), and reports each clip to `on_done` (on the writer thread).
    The writer's queue holds `queue` clips: one more fails ("writer busy"), never waits, so a
    camera's thread is never held by a slow disk."""

    def __init__(self, folder: Path, *, pre_s: float, ring_bytes: int, max_age_s: float, max_bytes: int,
                 on_done: Callable[[ClipResult], None], queue: int = 8, clock: Callable[[], float] = time.time,
                 late_s: float = 0.0, on_snapshots: Callable[[SnapshotResult], None] | None = None) -> None:
        self.folder, self.pre_s, self._ring_bytes = Path(folder), pre_s, ring_bytes
        self._max_age, self._max_bytes, self._on_done, self._clock = max_age_s, max_bytes, on_done, clock
        self._late_s = late_s  # a rule's request may come this late and still reach back its pre_s
        self._on_snapshots = on_snapshots
        self._rings: dict[str, PacketRing] = {}
        self._queue: queue_module.Queue[ClipRequest | SnapshotJob | None] = queue_module.Queue(queue)
        self._thread = threading.Thread(target=self._write_loop, name="clip-writer", daemon=True)
        self.sightings = Sightings(keep_s=pre_s, forget_s=pre_s + late_s)
        self._recent: deque[str] = deque(maxlen=RECENT_REQUESTS)  # request ids handled: a repeat is ignored

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Clean up after an earlier run (files a kill left half-written; clips past retention),
        then start the writer."""
        for part in self.folder.glob("*/*.part"):
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
        with contextlib.suppress(OSError):  # a missing or unreadable folder: the first write says why
            self.enforce_retention()
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
            ring = self._rings[camera] = PacketRing(self.pre_s + self._late_s, self._ring_bytes)
        return ring

    def forget(self, camera: str) -> None:
        """The camera was removed: its ring goes (a clip it was collecting ends early)."""
        ring = self._rings.pop(camera, None)
        if ring is not None:
            ring.reset()
        self.sightings.forget(camera)

    def ring_bytes(self) -> dict[str, int]:
        return {camera: ring.bytes for camera, ring in list(self._rings.items())}

    # ------------------------------------------------------------------ clips
    def request(self, camera: str, pre_s: float, post_s: float, trigger: dict,
                track_ids: tuple[int, ...] = (), at: float | None = None,
                clip_id: str | None = None) -> ClipRequest | None:
        """Start a clip of `camera` from `pre_s` before now, or before the frame captured at `at`
        (from the keyframe at or before it), to `post_s` after; None when the camera has no
        packets to cut from (not streaming)."""
        ring = self._rings.get(camera)
        clip_id = clip_id or f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(self._clock()))}-{uuid.uuid4().hex[:8]}"
        clip = ClipRequest(clip_id, camera, trigger, tuple(track_ids), self._clock(), self._completed)
        if ring is None or not ring.attach(clip, min(pre_s, self.pre_s), post_s, at):
            return None
        return clip

    def seen(self, request_id: str) -> bool:
        """Whether a request of this id was handled already (kept for the last RECENT_REQUESTS,
        and on disk): an alerting consumer that restarts sends its last alerts' requests again."""
        if request_id in self._recent or any(self.folder.glob(f"*/{request_id}[.-]*")):
            return True
        self._recent.append(request_id)
        return False

    def snapshots(self, camera: str, model: str, track_ids: Iterable[int], request_id: str,
                  trigger: dict) -> bool:
        """Write each track's best sighting still in the ring (highest confidence x area) as a
        JPEG and a copy with its box drawn, off the caller's thread; reported to `on_snapshots`.
        False when the writer's queue is full (nothing is written then)."""
        ring = self._rings.get(camera)
        shots = []
        for track in track_ids:
            best = self.sightings.best(camera, model, track)
            stream, packets = ring.around(best.pts) if ring is not None and best is not None else (None, [])
            shots.append((track, best, stream, packets))
        job = SnapshotJob(request_id, camera, model, trigger, shots)
        try:
            self._queue.put_nowait(job)
        except queue_module.Full:
            return False
        return True

    def _completed(self, clip: ClipRequest) -> None:
        try:
            self._queue.put_nowait(clip)
        except queue_module.Full:
            self._on_done(self._result(clip, failure="the clip writer is busy (its queue is full)"))

    def _write_loop(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=RETENTION_EVERY_S)
            except queue_module.Empty:  # clips age out also while none are written
                with contextlib.suppress(OSError):
                    self.enforce_retention()
                continue
            if job is None:
                return
            if isinstance(job, SnapshotJob):
                result = SnapshotResult(job.request_id, job.camera, job.model, job.trigger,
                                        [self._snapshot(job, *shot) for shot in job.shots])
                self.enforce_retention()
                if self._on_snapshots is not None:
                    self._on_snapshots(result)
                continue
            try:
                result = self._write(job)
            except Exception as exc:  # noqa: BLE001 - one clip fails, not the writer
                result = self._result(job, failure=_describe_failure(exc))
            self._on_done(result)

    def _snapshot(self, job: SnapshotJob, track: int, best: Sighting | None, stream, packets) -> Snapshot:
        name = f"{job.request_id}-{track}"
        if best is None:
            return Snapshot(track, name, failure="no sighting of this track is held (it was not seen, or not "
                            f"within clips.pre_s + clips.late_s of the request)")
        if not packets:
            return Snapshot(track, name, best, failure="its best picture is no longer in the camera's clip ring")
        try:
            picture = decode_picture(stream, packets, best.pts)
            if picture is None:
                return Snapshot(track, name, best, failure="its picture did not decode from the ring's packets")
            plain, boxed = snapshot_jpegs(picture, best)
            folder = self.folder / job.camera
            folder.mkdir(parents=True, exist_ok=True)
            for suffix, data in ((".jpg", plain), ("-boxed.jpg", boxed)):
                _write_file(folder / f"{name}{suffix}", data)
        except Exception as exc:  # noqa: BLE001 - one snapshot fails, not the writer
            return Snapshot(track, name, best, failure=_describe_failure(exc))
        return Snapshot(track, name, best, size=len(plain), sha256=hashlib.sha256(plain).hexdigest())

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
        for path in [*self.folder.glob("*/*.mp4"), *self.folder.glob("*/*.jpg")]:
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


def _write_file(path: Path, data: bytes) -> None:
    """Write a file whole or not at all (.part, then rename)."""
    part = path.with_name(path.name + ".part")
    try:
        with open(part, "wb") as fh:
            fh.write(data)
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def snapshot_jpegs(picture: av.VideoFrame, sighting: Sighting) -> tuple[bytes, bytes]:
    """The picture as a JPEG at full size, and a copy with the track's box and label drawn."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(picture.to_ndarray(format="rgb24"))
    plain = io.BytesIO()
    image.save(plain, format="JPEG", quality=90)
    draw = ImageDraw.Draw(image)
    width = max(2, image.width // 400)
    draw.rectangle(sighting.bbox, outline=(255, 40, 40), width=width)
    text = f"{sighting.label} #{sighting.track_id} {sighting.confidence:.2f}"
    font = ImageFont.load_default(size=max(12, image.width // 60))
    left, top, right, bottom = draw.textbbox((sighting.bbox[0], sighting.bbox[1]), text, font=font)
    lift = bottom - top + 4
    draw.rectangle((left - 2, top - lift - 2, right + 2, bottom - lift + 2), fill=(255, 40, 40))
    draw.text((sighting.bbox[0], sighting.bbox[1] - lift), text, fill=(0, 0, 0), font=font)
    boxed = io.BytesIO()
    image.save(boxed, format="JPEG", quality=90)
    return plain.getvalue(), boxed.getvalue()


def _describe_failure(exc: BaseException) -> str:
    """A clip's failure in words, with what to do."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "the clip folder's disk is full: free space or lower clips.max_gb"
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"the clip folder cannot be written ({exc.strerror}): check clips.folder and its permissions"
    return f"{type(exc).__name__}: {exc}"


CLIP_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
SNAPSHOT_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}-\d{1,12}$")  # a request's id and a track's


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

    def snapshot_path(self, snapshot_id: str, boxed: bool) -> Path | None:
        if not SNAPSHOT_ID.match(snapshot_id):
            return None
        return next(iter(self._recorder.folder.glob(f"*/{snapshot_id}{'-boxed' if boxed else ''}.jpg")), None)
