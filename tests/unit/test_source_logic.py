"""Per-camera logic that needs no network: backoff, sampling, keyframe-only choice, clocks, states."""
import random

import pytest

from pipeline.core import CameraState
from pipeline.s1_source import (TRANSITIONS, Backoff, FpsSampler, KeyframeGate, MediaClock, RateMeter, RtcpClock,
                                capture_time, clock_offset, rtp_losses)


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets():
    backoff = Backoff(1.0, 8.0, random.Random(1))
    delays = [backoff.next_delay() for _ in range(6)]
    bases = [1, 2, 4, 8, 8, 8]
    assert all(0.5 * b <= d <= b for d, b in zip(delays, bases)), delays
    assert len({round(d, 6) for d in delays}) == 6  # jittered, not identical
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_failures_that_will_not_fix_themselves_retry_at_the_longest_delay():
    backoff = Backoff(1.0, 8.0, random.Random(2))
    assert all(4.0 <= backoff.next_delay(slow=True) <= 8.0 for _ in range(5))


def test_sampler_keeps_target_rate_from_a_25fps_stream():
    sampler = FpsSampler(5)
    kept = [i for i in range(250) if sampler.take(i * 0.04)]  # 10 s at 25 fps
    assert len(kept) == 50
    assert {b - a for a, b in zip(kept, kept[1:])} == {5}


def test_sampler_restarts_after_a_timestamp_jump_back():
    sampler = FpsSampler(1)
    assert sampler.take(100.0) and not sampler.take(100.5)
    assert sampler.take(0.0)  # the clip looped / camera restarted: take at once, do not stall
    assert not sampler.take(0.5) and sampler.take(1.0)


def test_sampler_without_fps_keeps_everything():
    sampler = FpsSampler(None)
    assert all(sampler.take(t / 25) for t in range(100))


@pytest.mark.parametrize(
    ("fps", "gop", "expected"),
    [(1, 1.0, True), (0.5, 2.0, True), (1, 2.0, False), (5, 1.0, False), (0.1, 8.0, False)],
)
def test_keyframes_only_when_gop_fits_the_sampling_interval(fps, gop, expected):
    gate = KeyframeGate(fps, stall_timeout_s=10)
    assert gate.keyframe(10.0) in (None, False)
    assert gate.keyframe(10.0 + gop) is expected


def test_capture_time_prefers_plausible_rtcp_and_falls_back_to_receive():
    assert capture_time(1_000_000_000, 0.5, 1000.6) == (pytest.approx(1000.5), "rtcp")
    assert capture_time(1_000_000_000, 50.0, 1000.6) == (1000.6, "receive")  # stale mapping
    assert capture_time(1_000_000_000, 1.3, 1000.6) == (1000.6, "receive")  # "captured" after arrival
    assert capture_time(1_000_000_000, 0.65, 1000.6) == (pytest.approx(1000.65), "rtcp")  # clock skew
    assert capture_time(None, 0.5, 1000.6) == (1000.6, "receive")
    # the bound is the operator's (source.max_clock_offset_s): a camera 5 s behind is trusted under 10 s
    assert capture_time(1_000_000_000, 0.5, 1005.6, 10.0) == (pytest.approx(1000.5), "rtcp")
    assert capture_time(1_000_000_000, 0.5, 1005.6, 2.0) == (1005.6, "receive")
    assert clock_offset(1_000_000_000, 0.5, 1005.6) == pytest.approx(-5.1)
    assert clock_offset(None, 0.5, 1005.6) is None


def test_packet_losses_are_read_from_ffmpegs_warnings_and_cleared():
    logs = [(24, "rtsp", "RTP: missed 3 packets\n"), (24, "h264", "concealing 120 DC errors\n"),
            (24, "rtsp", "RTP: dropping old packet received too late\n"), (24, "rtsp", "RTP: missed 1 packets\n"),
            (24, "rtsp", "RTP: missed 65533 packets\n")]  # a sequence number reset (camera restarted)
    assert rtp_losses(logs) == (4, 1)
    assert logs == []


def test_delivered_rate_is_measured_over_windows_and_not_fooled_by_a_backlog():
    meter = RateMeter(window_s=10.0)
    rates = [meter.tick(i / 12.5, i / 12.5) for i in range(400)]  # 12.5 pictures a second for 32 s
    measured = [r for r in rates if r is not None]
    assert len(measured) == 3 and all(r == pytest.approx(12.5, rel=0.02) for r in measured)
    # a reader 3 s behind at first reads its backlog in a burst: 25 fps media, 13 s of it in 10 s
    meter = RateMeter(window_s=10.0)
    rates = [meter.tick(min(i / 25, 3 + i / 25 * 7 / 13) if i < 325 else 3 + 7 + (i - 325) / 25, i / 25)
             for i in range(600)]
    assert [round(r) for r in rates if r is not None] == [25, 25]
    # timestamps that claim 25 fps from a camera that sends 12.5 a second: the arrival rate wins
    meter = RateMeter(window_s=10.0)
    rates = [meter.tick(i / 12.5, i / 25) for i in range(200)]
    assert [round(r, 1) for r in rates if r is not None] == [12.5]


def test_state_table_every_state_can_stop_and_stopped_is_final():
    for state, targets in TRANSITIONS.items():
        if state is not CameraState.STOPPED:
            assert CameraState.STOPPED in targets
    assert TRANSITIONS[CameraState.STOPPED] == frozenset()
    assert CameraState.STREAMING not in TRANSITIONS[CameraState.BACKING_OFF]  # must reconnect first


def test_media_clock_fills_missing_timestamps_and_skips_a_first_one():
    clock = MediaClock(0.04)
    assert clock.time_of(None) is None  # FFmpeg's first RTSP packet has no timestamp
    assert clock.time_of(0.04) == 0.04
    assert clock.time_of(None) == pytest.approx(0.08)
    assert clock.time_of(0.12) == 0.12


def test_lag_monitor_catches_up_after_a_backlog_and_ignores_clock_drift():
    from pipeline.s1_source import LagMonitor

    lag = LagMonitor(max_lag_s=1.0)
    decisions = []
    # 10 s live at 25 fps, keyframe every 2 s, arriving 50 ms after capture
    for i in range(250):
        decisions.append(lag.observe(100 + i / 25 + 0.05, i / 25, i % 50 == 0))
    assert set(decisions) == {None} and not lag.catching_up
    # the reader stalls for 3 s, then reads the backlog 10x faster than real time
    t = 100 + 250 / 25 + 3
    for i in range(250, 400):
        d = lag.observe(t, i / 25, i % 50 == 0)
        t += 0.004
        if d is not None:
            decisions.append((i, d))
    events = [d for d in decisions if isinstance(d, tuple)]
    assert events[0][1] is True and 250 < events[0][0] <= 250 + LagMonitor.PERSIST  # within 10 packets
    assert events[-1][1] is False and events[-1][0] % 50 == 0  # back at a keyframe, within 0.5 s
    assert not lag.catching_up


def test_lag_monitor_takes_slow_camera_clocks_and_media_jumps_for_what_they_are():
    from pipeline.s1_source import LagMonitor

    lag = LagMonitor(max_lag_s=1.0)
    # a camera clock 200 ppm slow for 3 hours at 5 fps: 2.2 s of drift, never a backlog
    for i in range(3 * 3600 * 5):
        assert lag.observe(i / 5, (i / 5) * (1 - 200e-6), i % 10 == 0) is None
    # the camera restarts: media time back to 0, not a lag
    assert lag.observe(3 * 3600 + 1, 0.0, True) is None and not lag.catching_up


def test_lag_monitor_is_not_fooled_by_a_corrupt_timestamp():
    from pipeline.s1_source import LagMonitor

    lag = LagMonitor(max_lag_s=1.0)
    for i in range(500):
        media = i / 25 + (3.0 if i in (100, 300, 301) else 0.0)  # damaged packets say 3 s later
        media -= 4.0 if i == 200 else 0.0  # and one says 4 s earlier
        assert lag.observe(10 + i / 25, media, i % 50 == 0) is None, i
    assert not lag.catching_up


def test_the_rtcp_offset_is_given_until_the_media_time_jumps_then_not_on_that_connection():
    rtcp = RtcpClock()
    start = 1_000_000_000  # wall time of media time 0 (µs), from the first sender report
    offsets = [rtcp.offset(start, t / 25, 1000.05 + t / 25) for t in range(50)]
    assert offsets == [pytest.approx(-0.05)] * 50
    assert rtcp.offset(start, 0.0, 1002.1) is None  # the source looped: its mapping is wrong now
    assert rtcp.offset(start, 0.04, 1002.14) is None and rtcp.stale
    burst = RtcpClock()  # a backlog arriving at once is not a jump: 3 s of media in 0.1 s
    assert all(burst.offset(start, t / 25, 1003 + t / 750) is not None for t in range(75))
    ahead = RtcpClock()
    ahead.offset(start, 1.0, 1001.05)
    assert ahead.offset(start, 20.0, 1001.1) is None  # 19 s of media in 0.05 s of arrival
    assert RtcpClock().offset(None, 1.0, 1001.0) is None  # no sender report yet


@pytest.mark.parametrize("value, expected", [
    ("2026-12-06T14:03:12.000000Z", 1796565792.0),  # as FFmpeg gives an MP4's creation_time
    ("2026-12-06T15:03:12+01:00", 1796565792.0),
    ("2026-12-06 14:03:12", 1796565792.0),  # no zone: UTC, as MP4 stores it
    ("1970-01-01T00:00:00.000000Z", None),  # the zero date some muxers write
    ("yesterday", None),
    (None, None),
])
def test_a_recordings_creation_time_is_read_as_utc_or_ignored(value, expected):
    from pipeline.s1_source import parse_creation_time

    assert parse_creation_time(value) == expected
