"""Per-camera logic that needs no network: backoff, sampling, keyframe-only choice, clocks, states."""
import random

import pytest

from pipeline.core import CameraState
from pipeline.s1_source import TRANSITIONS, Backoff, FpsSampler, KeyframeGate, MediaClock, capture_time


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
