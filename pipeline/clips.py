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

import io
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av


@dataclass(frozen=True, slots=True)
class EncodedPacket:
    """One compressed packet as demuxed: its bytes, and its timestamps in `time_base` units."""

    data: bytes
    pts: int | None
    dts: int | None
    keyframe: bool

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

    @property
    def bytes(self) -> int:
        """Bytes of packets held."""
        return self._bytes

    def reset(self, time_base: Fraction | None = None,
              describe: Callable[[EncodedPacket], StreamInfo] | None = None) -> None:
        """A new connection (or none): forget every packet; the ring starts at the next keyframe,
        where `describe` (on the camera's thread, the stream still open) makes its StreamInfo."""
        with self._lock:
            self._gops.clear()
            self._bytes = 0
            self._time_base, self._describe, self.stream = time_base, describe, None

    def add(self, packet: EncodedPacket) -> None:
        """Keep one packet (from the camera's demuxer, in decode order)."""
        if self._time_base is None:
            return
        if packet.keyframe and self.stream is None and self._describe is not None:
            stream = self._describe(packet)  # outside the lock: it writes a small file in memory
            with self._lock:
                self.stream = stream
        with self._lock:
            if packet.keyframe:
                self._gops.append([packet])
            elif self._gops:
                self._gops[-1].append(packet)
            else:
                return  # nothing before the first keyframe
            self._bytes += len(packet.data)
            self._trim()

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
            tb = self.stream.time_base
            first = 0
            for i, gop in enumerate(self._gops):
                t = gop[0].time(tb)
                if t is not None and t <= start:
                    first = i
            return [p for gop in list(self._gops)[first:] for p in gop]


def write_clip(path: Path, stream: StreamInfo, packets: Iterable[EncodedPacket]) -> tuple[float, float, int]:
    """Remux `packets` (decode order, from a keyframe) into a new file at `path` (its suffix picks
    the container: .mp4 or .mkv), timestamps moved so that the first packet's presentation time is
    0. Returns (first, last) presentation time in the source's seconds and the packets written."""
    packets = list(packets)
    if not packets or not packets[0].keyframe:
        raise ValueError("a clip must start at a keyframe")
    tb = stream.time_base
    start = packets[0].pts
    if start is not None:  # leading pictures of an open GOP (HEVC's RASL) need the GOP before: left out
        packets = [packets[0]] + [p for p in packets[1:] if p.pts is None or p.pts >= start]
    origin = min(p.pts if p.pts is not None else p.dts for p in packets if p.pts is not None or p.dts is not None)
    with av.open(io.BytesIO(stream.template)) as template, \
            av.open(str(path), "w", options={"movflags": "+faststart"} if path.suffix == ".mp4" else {}) as out:
        kwargs = {"codec_tag": "hvc1"} if stream.codec == "hevc" and path.suffix == ".mp4" else {}  # as players ask
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
