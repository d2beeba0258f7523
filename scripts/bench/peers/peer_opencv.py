"""Peer (c) of the CPU benchmark: the straightforward way, one thread per camera running
OpenCV VideoCapture -> letterbox -> ONNX Runtime -> NMS -> Kafka. Runs in the peer environment
(scripts/bench/peers/make_peer_env.sh); scripts/bench/bench_peers.py starts it.

    python -m scripts.bench.peers.peer_opencv --model M --input-size 320 --confidence 0.35 \\
        --bootstrap 127.0.0.1:9092 --topic T --camera cam-a=rtsp://... [--camera ...] --seconds 60

What a user would write: one shared ONNX Runtime session with default options, a square
letterbox at the model's size (cv2.resize + copyMakeBorder), BGR -> RGB, /255, YOLOv8 decoding with
numpy and cv2.dnn.NMSBoxes, each result sent to Kafka with aiokafka. Each message carries the
fields the benchmark scores: camera_id, frame {seq, pts (OpenCV's CAP_PROP_POS_MSEC), captured_at
(when read() returned)}, detections [{class_id, confidence, bbox in source pixels}].
"""
from __future__ import annotations

import argparse
import sys
import threading
import time

import cv2
import numpy as np
import onnxruntime as ort

from scripts.bench.peers.peer_kafka import PeerPublisher, add_peer_arguments, message


def letterbox(bgr: np.ndarray, size: int) -> tuple[np.ndarray, float, int, int]:
    """Square letterbox as ultralytics' examples do: ([1,3,size,size] float32, scale, pad x, pad y)."""
    h, w = bgr.shape[:2]
    scale = min(size / w, size / h)
    nw, nh = round(w * scale), round(h * scale)
    resized = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    px, py = (size - nw) // 2, (size - nh) // 2
    padded = cv2.copyMakeBorder(resized, py, size - nh - py, px, size - nw - px, cv2.BORDER_CONSTANT,
                                value=(114, 114, 114))
    rgb = cv2.cvtColor(padded, cv2.COLOR_BGR2RGB)
    return (rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255.0), scale, px, py


def decode(output: np.ndarray, conf: float, iou: float, scale: float, px: int, py: int) -> list[dict]:
    """YOLOv8 output [1, 4 + classes, anchors] -> detections in source pixels."""
    pred = output[0].T
    scores = pred[:, 4:]
    classes = scores.argmax(1)
    best = scores[np.arange(len(scores)), classes]
    keep = best >= conf
    boxes, best, classes = pred[keep, :4], best[keep], classes[keep]
    xywh = np.stack([boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2, boxes[:, 2], boxes[:, 3]], 1)
    picked = cv2.dnn.NMSBoxesBatched(xywh.tolist(), best.tolist(), classes.tolist(), conf, iou) if len(best) else []
    out = []
    for i in np.array(picked).flatten():
        x, y, w, h = xywh[i]
        x1, y1 = (x - px) / scale, (y - py) / scale
        out.append({"class_id": int(classes[i]), "confidence": round(float(best[i]), 4),
                    "bbox": [round(float(x1), 1), round(float(y1), 1),
                             round(float(x1 + w / scale), 1), round(float(y1 + h / scale), 1)]})
    return out


def camera_loop(cam: str, url: str, session: ort.InferenceSession, args, publisher: PeerPublisher,
                stop: threading.Event) -> None:
    cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
    name = session.get_inputs()[0].name
    seq = 0
    while not stop.is_set():
        ok, frame = cap.read()
        if not ok:
            time.sleep(0.5)
            cap.release()
            cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
            continue
        captured = time.time()
        pts = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000
        inp, scale, px, py = letterbox(frame, args.input_size)
        output = session.run(None, {name: inp})[0]
        dets = decode(output, args.confidence, args.iou, scale, px, py)
        publisher.send(cam, message(cam, seq, pts, captured, frame.shape[1], frame.shape[0], dets))
        seq += 1
    cap.release()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_peer_arguments(parser)
    args = parser.parse_args()
    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    publisher = PeerPublisher(args.bootstrap, args.topic)
    stop = threading.Event()
    threads = [threading.Thread(target=camera_loop, args=(*c.split("=", 1), session, args, publisher, stop),
                                daemon=True) for c in args.camera]
    for t in threads:
        t.start()
    print("READY", flush=True)
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join(10)
    publisher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
