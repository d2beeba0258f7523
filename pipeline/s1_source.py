"""Source: one thread per camera that reads RTSP with PyAV, decodes, samples and hands frames over.

Nothing here can block for long: connecting is bounded by `open_timeout_s`, every read by
`stall_timeout_s` (PyAV's interrupt callback), and a watchdog reconnects a camera that delivers
data but no pictures. Failures lead to exponential backoff with jitter. The camera's state
machine is the TRANSITIONS table; every change is reported to `on_state`.

A file:// camera (a recording) is read as fast as inference takes its frames: each frame waits for
its models' slots instead of replacing an unread one (back-pressure, nothing dropped as superseded
or stale), there is no lag monitor, `captured_at` is the recording's start (its container's
`creation_time`, else the camera's `start_time`) plus the frame's time in it, and at its end the
camera is FINISHED, not reconnected. A failure is retried at the longest backoff delay (from the
file's start again).

RTP comes over TCP (interleaved in the RTSP connection) or UDP; `auto` asks for TCP and, when
the camera answers 461 Unsupported transport (FFmpeg: EPROTONOSUPPORT), UDP in the same attempt,
and keeps what worked for that camera. Over UDP, FFmpeg's warnings about missed and late packets
(captured per camera thread with av.logging.Capture) are counted.
"""
from __future__ import annotations

import errno
import functools
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

import av

from pipeline.clips import EncodedPacket, StreamInfo
from pipeline.config import CameraConfig, SourceConfig
from pipeline.core import CameraState, Frame, FrameMeta, SourceError
from pipeline.logs import log_event
from pipeline.metrics import Metrics

log = logging.getLogger(__name__)
S = CameraState
MAX_RTCP_SKEW_S = 2.0  # how long before its arrival a frame may have been captured (latency)
MAX_RTCP_AHEAD_S = 0.1  # how far a capture time may lie after arrival (camera clock skew)

FPS_WINDOW_S = 10.0  # delivered frame rate measured over this long (a reader that fell behind reads in bursts)
LOSS_LOG_EVERY_S = 60.0  # packet loss is logged at most this often per camera
_MISSED = re.compile(r"RTP: missed (\d+) packets")
_LATE = "RTP: dropping old packet received too late"

# failures that retrying soon will not fix: retried at the longest backoff delay
SLOW_RETRY_KINDS = frozenset({"unauthorized", "forbidden", "not_found", "transport", "gpu_memory"})
TRANSITIONS: dict[CameraState, frozenset[CameraState]] = {
    S.CONNECTING: frozenset({S.STREAMING, S.BACKING_OFF, S.STALLED, S.STOPPED}),
    S.STREAMING: frozenset({S.STALLED, S.BACKING_OFF, S.FINISHED, S.STOPPED}),
    S.STALLED: frozenset({S.BACKING_OFF, S.STOPPED}),
    S.BACKING_OFF: frozenset({S.CONNECTING, S.STOPPED}),
    S.FINISHED: frozenset({S.STOPPED}),
    S.STOPPED: frozenset(),
}

StateListener = Callable[[str, CameraState, str], None]
# a camera's frames go here; with the stop event (file:// cameras), it waits for room instead of
# replacing an unread frame, and returns False if stopped first
FrameSink = Callable[..., object]


class Backoff:
    """Exponential reconnect delays with jitter: initial * 2^n, capped, times a factor in [0.5, 1]."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self._initial, self._max = initial, maximum
        self._attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self, slow: bool = False) -> float:
        """The delay before the next attempt; each call doubles the base. `slow` (a failure that
        will not fix itself soon, such as wrong credentials) goes straight to the longest delay."""
        base = min(self._max, self._initial * (2 ** min(self._attempt, 30)))
        self._attempt += 1
        return (self._max if slow else base) * self._rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        """Start again from the initial delay (after a connection that worked)."""
        self._attempt = 0


class FpsSampler:
    """Keeps frames at most `fps` per second of media time; None keeps every frame."""

    def __init__(self, fps: float | None) -> None:
        self._interval = 1.0 / fps if fps else 0.0
        self._next_due: float | None = None

    def take(self, pts: float) -> bool:
        """True if the frame at media time `pts` (seconds) is due."""
        if not self._interval:
            return True
        # a timestamp jump backwards (camera restart, clip loop) or far ahead restarts the grid
        if self._next_due is None or pts < self._next_due - 2 * self._interval or pts > self._next_due + 10:
            self._next_due = pts
        if pts + 1e-3 < self._next_due:
            return False
        self._next_due = max(self._next_due + self._interval, pts + self._interval / 2)
        return True


class MediaClock:
    """Media time of each picture: its own timestamp, or (FFmpeg gives the first RTSP packet none)
    the previous one plus a frame interval; None when there is nothing to go on."""

    def __init__(self, frame_interval: float) -> None:
        self._interval = frame_interval
        self._last: float | None = None

    def time_of(self, picture_time: float | None) -> float | None:
        """Seconds of media time, or None for a first picture without a timestamp."""
        if picture_time is None:
            if self._last is None:
                return None
            picture_time = self._last + self._interval
        self._last = picture_time
        return picture_time


class KeyframeGate:
    """Decides keyframe-only decoding: only for fps <= 1 and a measured GOP no longer than the
    sampling interval (a 2 s GOP cannot give 1 fps from keyframes)."""

    def __init__(self, fps: float | None, stall_timeout_s: float) -> None:
        self._interval = 1.0 / fps if fps and fps <= 1 else None
        self._stall = stall_timeout_s
        self._last_key: float | None = None
        self.gop: float | None = None

    def keyframe(self, pts: float) -> bool | None:
        """Record a keyframe's time; return the new keyframes-only decision, or None if unknown."""
        if self._interval is None:
            return False
        if self._last_key is not None and pts > self._last_key:
            self.gop = pts - self._last_key
        self._last_key = pts
        if self.gop is None:
            return None
        return self.gop <= self._interval + 0.05 and self.gop < self._stall / 2


class LagMonitor:
    """How far behind real time a live camera is being read: each packet's arrival time minus its
    media time, above the connection's baseline (the least such offset: the network's own delay).
    Past `max_lag_s`, for `PERSIST` packets in a row, the camera should catch up by decoding
    keyframes only, until a keyframe arrives within half of it.

    Damaged timestamps must not look like lag: a lower offset moves the baseline only once it has
    held for `PERSIST` packets (one corrupt timestamp seconds ahead would otherwise make every
    later packet look late), a media-time jump (backwards, or more than JUMP_S ahead) restarts the
    baseline, and the baseline creeps up by 1 ms a second, so a camera clock slower than ours
    (ppm) is never taken for a backlog."""

    DRIFT = 1e-3  # seconds per second
    JUMP_S = 5.0
    PERSIST = 10  # packets: under half a second of a 25 fps stream

    def __init__(self, max_lag_s: float) -> None:
        self._max = max_lag_s
        self._base: float | None = None
        self._last: tuple[float, float] | None = None  # (arrival, media time) of the previous packet
        self._lower = 0  # packets in a row below the baseline
        self._late = 0  # packets in a row past max_lag_s
        self.catching_up = False
        self.lag = 0.0

    def observe(self, arrival: float, media_time: float, keyframe: bool) -> bool | None:
        """Record a packet (decode-order time: its DTS); return the new catch-up decision when it
        changes, else None."""
        offset = arrival - media_time
        if self._base is None or self._last is None or not 0 <= media_time - self._last[1] <= self.JUMP_S:
            self._base, self._lower, self._late = offset, 0, 0  # first packet, or a jump (restart, loop)
        else:
            self._base += self.DRIFT * max(0.0, arrival - self._last[0])
            self._lower = self._lower + 1 if offset < self._base else 0
            if self._lower >= self.PERSIST:
                self._base, self._lower = offset, 0
        self._last = (arrival, media_time)
        self.lag = max(0.0, offset - self._base)
        self._late = self._late + 1 if self.lag > self._max else 0
        if not self.catching_up and self._late >= self.PERSIST:
            self.catching_up = True
            return True
        if self.catching_up and keyframe and self.lag < self._max / 2:
            self.catching_up = False
            return False
        return None


class _TransportRefused(Exception):
    """The camera answered 461 Unsupported transport to every transport we asked for."""

    def __init__(self, refused: list[str], setting: str) -> None:
        names = " and ".join(t.upper() for t in refused)
        if setting == "auto":
            advice = "check how the camera is set to stream"
        else:
            advice = f"set transport: {'udp' if setting == 'tcp' else 'tcp'} (or auto) for this camera"
        self.reason = f"the camera refuses RTP over {names} (461 Unsupported transport): {advice}"
        super().__init__(self.reason)


def ffmpeg_warnings_on() -> None:
    """Let FFmpeg's warnings reach Python, where camera threads capture their own (packet loss);
    nothing else of FFmpeg's is logged, as before."""
    if av.logging.get_level() is None:
        logging.getLogger("libav").setLevel(logging.CRITICAL + 1)
        logging.getLogger("libav").propagate = False
        av.logging.set_skip_repeated(False)  # each "missed N packets" counts
        av.logging.set_level(av.logging.WARNING)


def rtp_losses(logs: list) -> tuple[int, int]:
    """(missed, late) RTP packets that FFmpeg's captured log lines report; clears `logs`."""
    missed = late = 0
    for _level, _name, message in logs:
        found = _MISSED.search(message)
        if found:
            n = int(found.group(1))
            missed += n if n < 32768 else 0  # a sequence number reset (camera restart), not a loss
        elif _LATE in message:
            late += 1
    logs.clear()
    return missed, late


class RateMeter:
    """Pictures per second over windows of about `window_s` of arrival time. A reader that fell
    behind (startup, a busy CPU) reads a backlog in a burst, so a window spans the longer of its
    arrival time and its media time (unless the media time jumped: a loop or restart)."""

    def __init__(self, window_s: float = FPS_WINDOW_S) -> None:
        self._window = window_s
        self._start: tuple[float, float] | None = None  # (arrival, media time) of the window's first picture
        self._count = 0

    def tick(self, arrival: float, media_time: float) -> float | None:
        """Count one picture; returns the rate when a window completes."""
        if self._start is None:
            self._start = (arrival, media_time)
            return None
        self._count += 1
        wall, media = arrival - self._start[0], media_time - self._start[1]
        if wall < self._window:
            return None
        span = media if wall < media < 2 * wall else wall
        rate = self._count / span
        self._start, self._count = (arrival, media_time), 0
        return rate


class RtcpClock:
    """The camera's RTCP clock against our receive clock, for one connection. FFmpeg maps media
    time to wall time with the first RTCP sender report only, so once the media time jumps
    (backwards, or JUMP_S ahead of the arrival times: a looping or restarted source) that
    mapping is wrong and no offset is given until the next connection."""

    JUMP_S = 5.0

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None  # (media time, arrival) of the previous picture
        self.stale = False

    def offset(self, start_realtime_us: int | None, media_time: float, received: float) -> float | None:
        """Capture time minus arrival of this picture; None without RTCP or once stale."""
        if self._last is not None:
            last_media, last_received = self._last
            if media_time < last_media - 1e-3 or (media_time - last_media) - (received - last_received) > self.JUMP_S:
                self.stale = True
        self._last = (media_time, received)
        return None if self.stale else clock_offset(start_realtime_us, media_time, received)


class _Stall(Exception):
    """The camera sends nothing usable; reconnect."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CameraWorker:
    """Reads one camera forever (until stopped), reconnecting with backoff."""

    def __init__(
        self,
        camera: CameraConfig,
        settings: SourceConfig,
        decoder_factory: Callable,
        deliver: FrameSink,
        metrics: Metrics,
        on_state: StateListener,
        ring=None,
    ) -> None:
        self.camera = camera
        self._ring = ring  # pipeline.clips.PacketRing: every packet goes in, as demuxed (clips.enabled)
        self._settings = settings
        self._decoder_factory = decoder_factory
        self._deliver = deliver
        self._metrics = metrics
        self._on_state = on_state
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{camera.id}", daemon=True)
        self.state = CameraState.STOPPED
        self.last_frame_at: float | None = None  # monotonic
        self._streamed = False
        self._epoch = 0  # connection attempts so far
        self._state_lock = threading.Lock()
        self.transport: str | None = None  # what the current or last connection uses
        self._works: str | None = None  # auto: the transport that streamed, kept until restart
        self._refused: set[str] = set()  # transports the camera answered 461 to (logged once each)
        self._clock_warned = False
        self._file = camera.is_file
        self._file_start: tuple[float, str, float] | None = None  # recording's start (epoch s), its clock, first pts
        self.pictures = 0  # decoded by the current (or last) connection
        self.delivered = 0  # a file's frames handed to its models since the start

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Start reading in a background thread."""
        self._set_state(CameraState.CONNECTING, "starting", initial=True)
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Ask the worker to stop and wait up to `timeout` s; False if it is still blocked."""
        self._stop.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def request_stop(self) -> None:
        """Ask the worker to stop without waiting."""
        self._stop.set()

    def health(self) -> dict:
        """State and seconds since the last frame."""
        age = None if self.last_frame_at is None else round(time.monotonic() - self.last_frame_at, 3)
        return {"state": self.state.value, "last_frame_age_s": age}

    # ------------------------------------------------------------------ state machine
    def _set_state(self, new: CameraState, reason: str, initial: bool = False, quiet: bool = False) -> None:
        with self._state_lock:
            old = self.state
            if not initial and new not in TRANSITIONS[old]:
                raise AssertionError(f"camera {self.camera.id}: illegal transition {old} -> {new}")
            self.state = new
        self._metrics.set_camera_state(self.camera.id, new)
        log_event(log, logging.DEBUG if quiet else logging.INFO, "camera state", camera=self.camera.id,
                  state=new.value, previous=old.value, reason=reason)
        self._on_state(self.camera.id, new, reason)

    def _run(self) -> None:
        backoff = Backoff(self._settings.backoff_initial_s, self._settings.backoff_max_s)
        first, last_kind, repeated = True, None, False
        while not self._stop.is_set():
            if not first:
                self._metrics.reconnects.labels(self.camera.id).inc()
                self._set_state(CameraState.CONNECTING, "reconnecting", quiet=repeated)
            first = False
            self._streamed = False  # set when this attempt decodes its first picture
            self.pictures = 0  # decoded by this attempt
            self._epoch += 1  # frames carry it: a new connection ends the camera's tracks
            attempt_started = time.monotonic()
            try:
                self._read_until_failure()
                if self._file and self._streamed and not self._stop.is_set():
                    self._finish()
                    break
                reason, kind = ("no picture in the file", "invalid_data") if self._file else ("end of stream", "eof")
            except _Stall as stall:
                reason, kind = stall.reason, "stalled"
                self._set_state(CameraState.STALLED, reason)
            except _TransportRefused as refused:
                reason, kind = refused.reason, "transport"
            except SourceError as exc:
                reason, kind = exc.reason, exc.kind
            except av.error.FFmpegError as exc:
                # FFmpeg reports an open interrupted by the timeout as "invalid data"
                hit_open_timeout = (not self._streamed and time.monotonic() - attempt_started
                                    >= 0.95 * self._settings.open_timeout_s)
                reason, kind = _describe_av_error(exc, hit_open_timeout)
                if kind == "timeout" and self.transport == "udp" and not self._streamed:
                    reason = ("timed out: no RTP packets came over UDP (a firewall or NAT between the camera "
                              "and us? try transport: tcp)")
            except Exception as exc:  # a bug must not end this camera for good: log, back off
                log.exception("camera worker error", extra={"fields": {"camera": self.camera.id}})
                reason, kind = f"internal error: {type(exc).__name__}", "internal"
            if self._stop.is_set():
                break
            if self._streamed:
                backoff.reset()
                last_kind = None
            self._metrics.source_errors.labels(self.camera.id, kind).inc()
            delay = backoff.next_delay(slow=kind in SLOW_RETRY_KINDS or self._file)  # a file does not heal soon
            # the same failure again is counted and published, but logged at debug level only
            repeated, last_kind = kind == last_kind, kind
            self._set_state(CameraState.BACKING_OFF, f"{reason}; retrying in {delay:.1f}s", quiet=repeated)
            self._stop.wait(delay)
        self._set_state(CameraState.STOPPED, "stopped")

    def _finish(self) -> None:
        """A file read to its end: FINISHED until the camera is stopped (removed, or shutdown)."""
        self._set_state(CameraState.FINISHED, f"end of file: {self.pictures} frames decoded")
        self._stop.wait()

    # ------------------------------------------------------------------ reading
    def _open(self, transport: str) -> av.container.InputContainer:
        s = self._settings
        if self._file:
            path = self.camera.file_path
            if not path.is_file():
                raise SourceError(self.camera.id, f"file {path} does not exist (or is not a file)", "not_found")
            if not os.access(path, os.R_OK):
                raise SourceError(self.camera.id, f"file {path} cannot be read: check its permissions", "forbidden")
            return av.open(str(path), timeout=(s.open_timeout_s, s.stall_timeout_s))
        return av.open(self.camera.url, options=rtsp_options(transport, s),
                       timeout=(s.open_timeout_s, s.stall_timeout_s))

    def _transports(self) -> tuple[str, list[str]]:
        """The transport setting and the transports to ask for, in order."""
        setting = self.camera.transport or self._settings.transport
        if setting != "auto":
            return setting, [setting]
        first = self._works or "tcp"
        return setting, [first, "udp" if first == "tcp" else "tcp"]

    def _connect(self) -> av.container.InputContainer:
        """Open the camera over the first transport it accepts (self.transport)."""
        if self._file:
            self.transport = None
            return self._open("file")
        setting, transports = self._transports()
        refused = []
        for transport in transports:
            self.transport = transport
            try:
                return self._open(transport)
            except av.error.FFmpegError as exc:
                if exc.errno != errno.EPROTONOSUPPORT:
                    raise
            refused.append(transport)
            if transport not in self._refused:
                self._refused.add(transport)
                nxt = transports[len(refused)] if len(refused) < len(transports) else None
                log_event(log, logging.WARNING, f"camera refuses RTP over {transport.upper()} (461 Unsupported "
                          f"transport)" + (f"; trying {nxt.upper()}" if nxt else ""), camera=self.camera.id,
                          transport_setting=setting)
        raise _TransportRefused(refused, setting)

    def _read_until_failure(self) -> None:
        """Stream until the camera ends, fails or stalls (raises), or stop is requested."""
        with av.logging.Capture(local=True) as ffmpeg_logs, self._connect() as container:
            if not container.streams.video:
                raise SourceError(self.camera.id, "stream has no video track")
            stream = container.streams.video[0]
            try:
                decoder = self._decoder_factory(stream)
            except ValueError as exc:  # e.g. a codec the configured decoder cannot take
                raise SourceError(self.camera.id, f"cannot decode this stream: {exc}") from None
            cam = self.camera.id
            if self._file:
                self._file_start = file_start(container, self.camera.start_time)
            for transport in ("tcp", "udp") if not self._file else ():
                self._metrics.camera_transport.labels(cam, transport).set(1 if transport == self.transport else 0)
            rate = stream.average_rate or stream.guessed_rate
            self._metrics.camera_fps.labels(cam, "declared").set(float(rate) if rate else float("nan"))
            if self._ring is not None:  # a new connection: the ring starts again at its first keyframe
                self._ring.reset(stream.time_base, functools.partial(StreamInfo.of, stream))
            try:
                self._stream_packets(container, stream, decoder, ffmpeg_logs)
            finally:
                if self._ring is not None:
                    self._ring.reset()  # packets of two connections make no clip; one collecting ends here
                decoder.close()
                self._metrics.source_lag_seconds.labels(cam).set(0)

    def _stream_packets(self, container, stream, decoder, ffmpeg_logs: list) -> None:
        cam = self.camera.id
        lost_missed = self._metrics.rtp_packets_lost.labels(cam, "missed")
        lost_late = self._metrics.rtp_packets_lost.labels(cam, "late")
        unlogged_losses, next_loss_log = 0, 0.0
        meter, rtcp = RateMeter(), RtcpClock()
        sampler = FpsSampler(self.camera.fps)
        gate = KeyframeGate(self.camera.fps, self._settings.stall_timeout_s)
        lag = LagMonitor(self._settings.max_lag_s)
        lag_gauge = self._metrics.source_lag_seconds.labels(self.camera.id)
        decode_seconds = self._metrics.stage_seconds.labels("decode")
        sampled_keyframes = False  # the gate's decision (fps <= 1 with a short GOP)
        rate = stream.average_rate or stream.guessed_rate
        clock = MediaClock(1 / float(rate) if rate else 0.04)
        last_picture = time.monotonic()
        try:
            for packet in container.demux(stream):
                if self._stop.is_set():
                    return
                if ffmpeg_logs:
                    missed, late = rtp_losses(ffmpeg_logs)
                    lost_missed.inc(missed)
                    lost_late.inc(late)
                    unlogged_losses += missed + late
                if unlogged_losses and time.monotonic() >= next_loss_log:  # the first at once, then a minute's
                    log_event(log, logging.WARNING, "camera is losing RTP packets; pictures are damaged", camera=cam,
                              transport=self.transport, lost=unlogged_losses)
                    unlogged_losses, next_loss_log = 0, time.monotonic() + LOSS_LOG_EVERY_S
                if packet.size == 0:
                    continue
                received = time.time()
                if self._ring is not None:
                    self._keep(container, packet, received)
                if packet.pts is not None and packet.is_keyframe:
                    decision = gate.keyframe(float(packet.pts * packet.time_base))
                    sampled_keyframes = sampled_keyframes if decision is None else decision
                if packet.dts is not None and not self._file:  # decode order: monotonic, also with B-frames
                    if lag.observe(time.monotonic(), float(packet.dts * packet.time_base), packet.is_keyframe) is not None:
                        self._log_lag(lag)
                    lag_gauge.set(lag.lag)
                decoder.keyframes_only(sampled_keyframes or lag.catching_up)
                if lag.catching_up and not packet.is_keyframe:
                    self._metrics.frames_dropped.labels(self.camera.id, "lagging").inc()
                    if time.monotonic() - last_picture > self._settings.stall_timeout_s:
                        raise _Stall(f"behind real time and no keyframe for {self._settings.stall_timeout_s:g}s")
                    continue  # not decoded at all: the decoder skips to the next keyframe
                started = time.monotonic()
                try:
                    pictures = decoder.decode(packet)
                except av.error.InvalidDataError:  # a damaged packet: skip it, count it
                    self._metrics.source_errors.labels(self.camera.id, "decode_error").inc()
                    pictures = []
                now = time.monotonic()
                if pictures:
                    decode_seconds.observe(now - started)
                    last_picture = now
                elif now - last_picture > self._settings.stall_timeout_s:
                    raise _Stall(f"data but no picture for {self._settings.stall_timeout_s:g}s")
                for picture in pictures:
                    self._handle_picture(container, decoder, picture, received, sampler, clock, rtcp, meter)
                if pictures and self._file:
                    last_picture = time.monotonic()  # waiting for room (back-pressure) is not a stall
            if self._file and not self._stop.is_set():  # the end of the file: its held-back pictures
                for picture in decoder.flush():
                    self._handle_picture(container, decoder, picture, time.time(), sampler, clock, rtcp, meter)
        except av.error.ExitError:  # PyAV's read timeout
            if not self._streamed:
                raise
            raise _Stall(f"no data for {self._settings.stall_timeout_s:g}s") from None

    def _keep(self, container, packet, received: float) -> None:
        """Put a packet in the camera's clip ring, stamped as its frame will be (the recording's
        start plus its time, the camera's RTCP time, or the receive time)."""
        stamp = packet.pts if packet.pts is not None else packet.dts
        media = None if stamp is None else float(stamp * packet.time_base)
        if self._file_start is not None and media is not None:
            start, _, first = self._file_start
            captured = start + max(0.0, media - first)
        else:
            captured = capture_time(container.start_time_realtime, media, received, self._settings.max_clock_offset_s)[0]
        self._ring.add(EncodedPacket(bytes(packet), packet.pts, packet.dts, packet.is_keyframe, captured))
        if packet.is_keyframe:  # the ring's size changes by whole GOPs
            self._metrics.clip_ring_bytes.labels(self.camera.id).set(self._ring.bytes)

    def _log_lag(self, lag: LagMonitor) -> None:
        if lag.catching_up:
            log_event(log, logging.WARNING, "camera fell behind real time; decoding keyframes only to catch up",
                      camera=self.camera.id, lag_s=round(lag.lag, 2), max_lag_s=self._settings.max_lag_s)
        else:
            log_event(log, logging.INFO, "camera caught up", camera=self.camera.id, lag_s=round(lag.lag, 2))

    def _handle_picture(
        self, container, decoder, picture, received: float, sampler: FpsSampler, clock: MediaClock,
        rtcp: RtcpClock, meter: RateMeter,
    ) -> None:
        cam = self.camera.id
        self._metrics.frames_decoded.labels(cam).inc()
        self.pictures += 1
        self.last_frame_at = time.monotonic()
        if not self._streamed:
            self._streamed = True
            self._announce_streaming(picture)
        pts = clock.time_of(picture.time)
        if pts is None:
            self._metrics.frames_dropped.labels(cam, "no_timestamp").inc()
            return
        offset = None if self._file else rtcp.offset(container.start_time_realtime, pts, received)
        delivered = meter.tick(received, pts)  # arrival (packet read), not decode: decoders output in bursts
        if delivered is not None:
            self._metrics.camera_fps.labels(cam, "delivered").set(round(delivered, 2))
        if not sampler.take(pts):
            return
        if offset is not None:
            self._metrics.camera_clock_offset.labels(cam).set(round(offset, 3))
            if not self._clock_warned and abs(offset) > self._settings.max_clock_offset_s:
                self._clock_warned = True
                log_event(log, logging.WARNING, "camera clock is off: its RTCP time is far from when frames arrive; "
                          "captured_at uses the receive time", camera=cam, offset_s=round(offset, 3),
                          max_clock_offset_s=self._settings.max_clock_offset_s)
        if self._file_start is not None:
            start, source, first_pts = self._file_start
            captured = start + max(0.0, pts - first_pts)
        else:
            captured, source = capture_time(None if offset is None else container.start_time_realtime, pts, received,
                                            self._settings.max_clock_offset_s)
        kept = decoder.retain(picture)
        while kept is None and self._file and not self._stop.wait(0.005):  # a file waits for a buffer
            kept = decoder.retain(picture)
        if kept is None:
            if not self._stop.is_set():
                self._metrics.frames_dropped.labels(cam, "decoder_buffers_busy").inc()
            return
        meta = FrameMeta(cam, round(pts, 6), captured, source, picture.width, picture.height, self._epoch)
        if self._file:
            if self._deliver(Frame(meta, kept, time.monotonic()), self._stop):  # waits for room
                self.delivered += 1
        else:
            self._deliver(Frame(meta, kept, time.monotonic()))

    def _announce_streaming(self, picture) -> None:
        """The first picture of a connection: streaming, over which transport (kept if auto)."""
        if self._file:
            self._set_state(CameraState.STREAMING, f"{picture.width}x{picture.height} file, read at full speed")
            return
        setting, _ = self._transports()
        fell_back = setting == "auto" and self.transport != "tcp"
        if fell_back and self._works != self.transport:
            log_event(log, logging.WARNING, "camera streams over UDP only; using UDP for it until the daemon "
                      "restarts", camera=self.camera.id)
        if setting == "auto":
            self._works = self.transport
        self._set_state(CameraState.STREAMING, f"{picture.width}x{picture.height} stream over "
                        f"{self.transport.upper()}" + (" (the camera refused TCP)" if fell_back else ""))


def file_start(container, start_time) -> tuple[float, str, float]:
    """A recording's start (epoch seconds), which clock gave it, and the media time of its start:
    the container's creation_time ("file"), else the camera's start_time ("config"), else now
    ("receive"). captured_at is the start plus a frame's media time after the container's start."""
    first = container.start_time / av.time_base if container.start_time is not None else 0.0
    created = parse_creation_time(container.metadata.get("creation_time")
                                  or container.streams.video[0].metadata.get("creation_time"))
    if created is not None:
        return created, "file", first
    if start_time is not None:
        return start_time.timestamp(), "config", first
    return time.time(), "receive", first


def parse_creation_time(value: str | None) -> float | None:
    """Epoch seconds of a container's creation_time (ISO 8601, as FFmpeg gives it; UTC when it has
    no zone); None when absent, unreadable, or the zero date some muxers write."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp() if parsed.year > 1970 else None


def rtsp_options(transport: str, s: SourceConfig) -> dict[str, str]:
    """FFmpeg's options for reading a camera over `transport` ("tcp" or "udp")."""
    options = {
        "rtsp_transport": transport,
        # FFmpeg's socket timeout (microseconds) is only a backstop: PyAV's interrupt
        # timeouts fire first and say "timed out" rather than "invalid data"
        "timeout": str(int((max(s.open_timeout_s, s.stall_timeout_s) + 1) * 1e6)),
        "allowed_media_types": "video",  # audio and data tracks are not even set up
    }
    if transport == "udp":
        options["buffer_size"] = str(int(s.udp_buffer_mb * 2**20))
        options["max_delay"] = str(int(s.udp_reorder_ms * 1000))
        options["reorder_queue_size"] = "500" if s.udp_reorder_ms else "0"
    return options


def clock_offset(start_realtime_us: int | None, media_time: float | None, received: float) -> float | None:
    """The camera's capture time (RTCP) minus the receive time, when the camera sent RTCP."""
    if start_realtime_us is None or media_time is None:
        return None
    return start_realtime_us / 1e6 + media_time - received


def capture_time(start_realtime_us: int | None, media_time: float | None, received: float,
                 max_offset_s: float = MAX_RTCP_SKEW_S) -> tuple[float, str]:
    """Capture time and its clock: the camera's RTCP time when known and plausible, else receive time.

    FFmpeg maps media time to wall time with the first RTCP sender report only
    (`start_time_realtime` is the wall time of media time 0), so after a timestamp jump (camera
    restart, clock change) that mapping is wrong. A mapped time more than `max_offset_s` before
    the receive time, or after it by more than clock skew (MAX_RTCP_AHEAD_S: a frame cannot
    arrive before it was captured), is not trusted.
    """
    offset = clock_offset(start_realtime_us, media_time, received)
    if offset is not None and -max_offset_s <= offset <= MAX_RTCP_AHEAD_S:
        return start_realtime_us / 1e6 + media_time, "rtcp"
    return received, "receive"


def _describe_av_error(exc: av.error.FFmpegError, hit_open_timeout: bool = False) -> tuple[str, str]:
    """A short, credential-free reason and a metric label for a PyAV error."""
    if hit_open_timeout:
        return "timed out connecting (camera silent or unreachable)", "timeout"
    kinds = [
        (av.error.ExitError, "timeout", "timed out (camera silent or unreachable)"),
        (ConnectionRefusedError, "refused", "connection refused"),
        (av.error.HTTPUnauthorizedError, "unauthorized", "unauthorized: check the credentials"),
        (av.error.HTTPForbiddenError, "forbidden", "forbidden: check the credentials"),
        (av.error.HTTPNotFoundError, "not_found", "stream not found: check the URL path"),
        (av.error.InvalidDataError, "invalid_data", "invalid data: not an RTSP/H.264 stream?"),
        (TimeoutError, "timeout", "timed out"),
        (OSError, "network", "network error"),
    ]
    for cls, kind, text in kinds:
        if isinstance(exc, cls):
            return f"{text} ({exc.strerror or type(exc).__name__})", kind
    return f"{type(exc).__name__}: {exc.strerror or ''}".strip(), "other"
