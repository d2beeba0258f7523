"""Write a raw-head YOLOv8 ONNX model with its NMS appended (the "end2end" layout, [batch, 300, 6]):
what the daemon does at load with `model.nms: engine` (and with TensorRT by default), as a file for
other runtimes or to look at. The thresholds are inputs with these defaults.

    .venv/bin/python -m scripts.model.add_nms engines/yolov8n.onnx .cache/yolov8n.end2end.onnx --confidence 0.1
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.s4_infer.nms_graph import with_nms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--confidence", type=float, default=0.25, help="least score kept")
    parser.add_argument("--iou", type=float, default=0.45)
    parser.add_argument("--max-detections", type=int, default=300)
    args = parser.parse_args()
    args.out.write_bytes(with_nms(args.model.read_bytes(), confidence=args.confidence, iou=args.iou,
                                  max_detections=args.max_detections))
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
