"""CPU preprocessing puts each decoded picture, scaled, in the right place of the batch input."""
import os

import av
import numpy as np
import pytest

from pipeline.core import Batch, Frame, FrameMeta, InputSpec
from pipeline.s4_infer.preprocess import PAD_VALUE, CpuPreprocessor


def picture(width, height, rgb):
    """A YUV420 av.VideoFrame of one flat colour, as a decoder would produce."""
    image = np.empty((height, width, 3), np.uint8)
    image[:] = rgb
    return av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")


def frame(cam, width, height, rgb):
    return Frame(FrameMeta(cam, 0.0, 0.0, "receive", width, height), picture(width, height, rgb), 0.0)


def test_single_16x9_frame_fills_a_640x384_input_with_grey_bands():
    pre = CpuPreprocessor(InputSpec(None, None, None, 640))
    inputs, [lb] = pre(Batch((frame("a", 1920, 1080, (200, 40, 90)),)))
    assert inputs.shape == (1, 3, 384, 640) and inputs.dtype == np.float32
    assert (lb.pad_x, lb.pad_y, lb.scaled_size) == (0, 12, (640, 360))
    pad = PAD_VALUE / 255
    np.testing.assert_allclose(inputs[0, :, :12], pad, atol=1e-6)
    np.testing.assert_allclose(inputs[0, :, 372:], pad, atol=1e-6)
    centre = inputs[0, :, 100:300, 100:500].reshape(3, -1).mean(axis=1) * 255
    np.testing.assert_allclose(centre, (200, 40, 90), atol=3)  # RGB order, YUV round trip


def test_mixed_aspect_batch_uses_the_rectangle_that_holds_both():
    pre = CpuPreprocessor(InputSpec(None, None, None, 640))
    batch = Batch((frame("wide", 1280, 720, (255, 0, 0)), frame("tall", 480, 640, (0, 0, 255))))
    inputs, (wide, tall) = pre(batch)
    assert inputs.shape == (2, 3, 640, 640)
    assert (wide.pad_x, wide.pad_y) == (0, 140) and (tall.pad_x, tall.pad_y) == (80, 0)
    assert inputs[1, 2, 320, 320] * 255 == pytest.approx(255, abs=3)  # blue inside the tall frame
    assert inputs[1, 2, 320, 40] * 255 == pytest.approx(PAD_VALUE, abs=0.5)  # left band


def test_buffers_are_reused_between_batches_of_the_same_shape():
    pre = CpuPreprocessor(InputSpec(None, None, None, 640))
    first, _ = pre(Batch((frame("a", 1280, 720, (1, 2, 3)),) * 2))
    second, _ = pre(Batch((frame("a", 1280, 720, (9, 9, 9)),)))
    assert np.shares_memory(first, second)


def native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc (Linux)")
def test_pictures_in_flight_hold_no_scaling_threads():
    """A lane keeps pictures alive while they wait and are published; scaling one must not start
    threads that live with it (PyAV's per-frame contexts did, two per picture on 2 cores)."""
    pre = CpuPreprocessor(InputSpec(None, None, None, 320))
    before = native_threads()
    in_flight = [frame(f"cam{i}", 1920, 1080, (i, 50, 100)) for i in range(8)]
    inputs, _ = pre(Batch(tuple(in_flight)))
    assert native_threads() == before
    # mixed sizes through the one reused context still scale each picture correctly
    mixed, _ = pre(Batch((frame("a", 640, 360, (60, 180, 90)), frame("b", 1920, 1080, (180, 60, 120)))))
    np.testing.assert_allclose(mixed[0, :, 50:100, 100:200].reshape(3, -1).mean(axis=1) * 255, (60, 180, 90), atol=3)
    np.testing.assert_allclose(mixed[1, :, 50:100, 100:200].reshape(3, -1).mean(axis=1) * 255, (180, 60, 120), atol=3)
