"""The live preview hub: nothing kept or encoded while nobody watches; annotated JPEGs on demand."""
import io

import av
import numpy as np
from PIL import Image

from pipeline.core import Detection, DeviceFrame, Frame, FrameMeta, FrameResult
from pipeline.preview import PreviewHub


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def picture(width=1280, height=720) -> av.VideoFrame:
    grey = np.full((height, width, 3), 90, np.uint8)
    return av.VideoFrame.from_ndarray(grey, format="rgb24").reformat(format="yuv420p")


def result(cam="cam-a", seq=0, width=1280, height=720, boxes=((200, 100, 600, 500),)) -> FrameResult:
    meta = FrameMeta(cam, seq / 25, 1.7e9, "receive", width, height)
    dets = tuple(Detection(0, "square", 0.9, box) for box in boxes)
    return FrameResult(meta, seq, dets)


def offer(hub, cam="cam-a", seq=0, image=None):
    r = result(cam, seq)
    hub.offer((Frame(r.meta, image if image is not None else picture(), 0.0),), [r])


def test_nothing_is_kept_or_encoded_while_nobody_watches():
    hub = PreviewHub(clock=Clock())
    for seq in range(5):
        offer(hub, seq=seq)
    assert hub.jpeg("cam-a") is None  # this request is the first viewer: nothing was kept before it
    assert hub.encoded == 0


def test_a_viewer_gets_the_latest_picture_with_its_boxes_drawn():
    hub = PreviewHub(clock=Clock(), width=640)
    hub.touch()
    offer(hub, seq=0)
    offer(hub, seq=1)
    summary = hub.summary()
    assert summary["cam-a"]["seq"] == 1 and summary["cam-a"]["detections"] == 1 and summary["cam-a"]["snapshot"]
    body = hub.jpeg("cam-a")
    image = np.asarray(Image.open(io.BytesIO(body)).convert("RGB")).astype(int)
    assert image.shape == (360, 640, 3)  # scaled to the preview width, aspect kept
    # the box (200,100)-(600,500) in source pixels is at (100,50)-(300,250) in the preview:
    # its outline is red-ish, its inside and the far corner keep the grey picture
    edge = image[150, 99:102]
    assert (edge[:, 0] > 180).any() and (edge[:, 1] < 120).any()
    assert abs(image[150, 200] - 90).max() < 12 and abs(image[330, 600] - 90).max() < 12
    assert hub.jpeg("cam-a") is body and hub.encoded == 1  # encoded once per picture


def test_pictures_are_released_once_viewers_leave():
    clock = Clock()
    hub = PreviewHub(viewer_ttl_s=10, clock=clock)
    hub.touch()
    offer(hub)
    assert hub.summary()
    clock.now += 11
    offer(hub, seq=1)
    assert not hub.watching and hub._latest == {}


def test_gpu_pictures_are_never_held():
    # a DeviceFrame holds a pool buffer of the GPU decoder: keeping it would starve decoding
    hub = PreviewHub(clock=Clock())
    hub.touch()
    offer(hub, image=DeviceFrame(1280, 720, 0.0, 0, 0, 0, 0, None, 0, lease=object()))
    assert hub.summary()["cam-a"]["snapshot"] is False
    assert hub._latest["cam-a"].image is None
    assert hub.jpeg("cam-a") is None
