"""Peer (b) of the CPU benchmark: Ultralytics multi-stream predict on the same ONNX model, its
results published to Kafka. Runs in the peer environment (scripts/bench/peers/make_peer_env.sh);
scripts/bench/bench_peers.py starts it.

    python -m scripts.bench.peers.peer_ultralytics --model M --input-size 320 --confidence 0.35 \\
        --bootstrap 127.0.0.1:9092 --topic T --camera cam-a=rtsp://... [--camera ...] --seconds 60

Ultralytics as its users run it: `YOLO(model).predict(source="cameras.streams", stream=True, ...)`
(LoadStreams: one OpenCV reader thread per camera keeping the latest frame, all cameras inferred
as one batch). Two things are added around it, neither in its compute path: OpenCV's
VideoCapture is wrapped to note each frame's pts (CAP_PROP_POS_MSEC) and read time, so messages
can be scored against ground truth and timed like the others, and to report no frame count, as a
live camera does (the test server announces its looping clip's duration); and the registry's torchvision
does not match the local CPU torch, so `torchvision.ops.nms` is stood in by ultralytics' own
torch NMS (scripts/model/export_yolo_onnx.py).
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2

from scripts.bench.peers.peer_kafka import PeerPublisher, add_peer_arguments, message
from scripts.model.export_yolo_onnx import stand_in_torchvision

_STAMPS: collections.OrderedDict[int, tuple] = collections.OrderedDict()  # id(image) -> (image, pts, read at)
_STAMPS_LOCK = threading.Lock()


class _NotingCapture(cv2.VideoCapture):
    """cv2.VideoCapture that notes the pts and read time of every frame it hands out."""

    def retrieve(self, *args):
        ok, image = super().retrieve(*args)
        if ok:
            with _STAMPS_LOCK:
                _STAMPS[id(image)] = (image, self.get(cv2.CAP_PROP_POS_MSEC) / 1000, time.time())
                while len(_STAMPS) > 256:  # bounded: keeps the images alive so ids stay unique
                    _STAMPS.popitem(last=False)
        return ok, image

    def read(self, *args):
        return self.retrieve() if self.grab() else (False, None)

    def get(self, prop):
        # the test server's looping clip announces a duration, so OpenCV reports a frame count and
        # LoadStreams would stop after that many frames; real cameras are live (no count)
        return 0 if prop == cv2.CAP_PROP_FRAME_COUNT else super().get(prop)


def stamp_of(image) -> tuple[float, float]:
    with _STAMPS_LOCK:
        entry = _STAMPS.get(id(image))
    return (entry[1], entry[2]) if entry else (float("nan"), time.time())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_peer_arguments(parser)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (ultralytics sets 1 on CPU)")
    args = parser.parse_args()

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))
    stand_in_torchvision()
    cv2.VideoCapture = _NotingCapture  # ultralytics' LoadStreams opens cameras with cv2.VideoCapture
    import torch
    from ultralytics import YOLO
    from ultralytics.utils.ops import clean_str

    torch.set_num_threads(args.threads)
    cameras = dict(c.split("=", 1) for c in args.camera)
    by_path = {clean_str(url).replace(os.sep, "_"): cam for cam, url in cameras.items()}  # as LoadStreams names them
    streams = Path(tempfile.mkdtemp()) / "cameras.streams"
    streams.write_text("\n".join(cameras.values()) + "\n")
    publisher = PeerPublisher(args.bootstrap, args.topic)
    model = YOLO(args.model, task="detect")
    seq = collections.Counter()
    end = None
    for result in model.predict(source=str(streams), stream=True, imgsz=args.input_size, conf=args.confidence,
                                iou=args.iou, device="cpu", verbose=False):
        if end is None:
            print("READY", flush=True)
            end = time.monotonic() + args.seconds
        cam = by_path[result.path]
        pts, read_at = stamp_of(result.orig_img)
        boxes = result.boxes
        dets = [{"class_id": int(c), "confidence": round(float(p), 4), "bbox": [round(float(v), 1) for v in xyxy]}
                for xyxy, p, c in zip(boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist())]
        h, w = result.orig_shape
        publisher.send(cam, message(cam, seq[cam], pts, read_at, w, h, dets))
        seq[cam] += 1
        if time.monotonic() > end:
            break
    publisher.close()
    os._exit(0)  # LoadStreams' reader threads do not stop by themselves


if __name__ == "__main__":
    sys.exit(main())
