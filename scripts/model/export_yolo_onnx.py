"""Export a YOLOv8n ONNX model built from ultralytics' architecture yaml (no weights downloaded).

Dev-only: needs torch and ultralytics (scripts/model/make_export_env.sh builds a separate venv), and
ffmpeg. The model has the real YOLOv8n compute graph with dynamic batch, height and width, so the
pipeline and benchmarks run on real work. It is NOT trained: weights are ultralytics' seeded
initialisation. Untouched, such a net outputs the same tiny score everywhere (its features vanish
through default BatchNorm statistics), so nothing would ever be detected. Two steps make it emit
boxes that depend on the picture: BatchNorm statistics are recomputed on ffmpeg test-pattern frames
(forward passes only, no training), and the class bias is set to --cls-bias. Its boxes are
arbitrary: they exercise NMS, box mapping and publishing, not accuracy.

    .venv-export/bin/python -m scripts.model.export_yolo_onnx --out engines/yolov8n.onnx
"""
from __future__ import annotations

import argparse
import importlib.machinery
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path


def stand_in_torchvision() -> None:
    """The registry's torchvision does not match the local CPU torch. ultralytics reads its version
    and uses `torchvision.ops.nms` in validation: stand in a module whose NMS is ultralytics' own."""
    try:
        import torchvision  # noqa: F401
        return
    except Exception:
        pass
    tv = types.ModuleType("torchvision")
    tv.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    tv.__version__ = "0.0.0"
    ops = types.ModuleType("torchvision.ops")

    def nms(boxes, scores, iou_threshold):
        from ultralytics.utils.nms import TorchNMS

        return TorchNMS.nms(boxes, scores, iou_threshold)

    ops.nms = nms
    tv.ops = ops
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.ops"] = ops
    real_version = importlib.metadata.version

    def version(name: str) -> str:  # ultralytics reads torchvision's version from metadata
        return tv.__version__ if name == "torchvision" else real_version(name)

    importlib.metadata.version = version


def _test_pattern_frames(count: int = 24, width: int = 640, height: int = 384):
    """RGB frames of ffmpeg's moving test pattern as a float tensor [N, 3, H, W] in [0, 1]."""
    import numpy as np
    import torch

    raw = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=5",
         "-frames:v", str(count), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True, capture_output=True,
    ).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(count, height, width, 3)
    return torch.from_numpy(frames.copy()).permute(0, 3, 1, 2).float() / 255


def _calibrate(net, frames, cls_bias: float) -> None:
    """Recompute BatchNorm statistics on `frames` (no gradients) and set the class bias."""
    import torch

    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration pass
    net.train()
    with torch.no_grad():
        net(frames)
        for branch in net.model[-1].cv3:
            branch[-1].bias.fill_(cls_bias)
    net.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="yolov8n.yaml", help="ultralytics architecture yaml")
    parser.add_argument("--classes", type=int, default=80, help="number of classes")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cls-bias", type=float, default=-6.0, help="class-score bias of the head")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-config-"))
    stand_in_torchvision()
    import torch
    from ultralytics import YOLO

    torch.manual_seed(args.seed)
    model = YOLO(args.arch)  # architecture only: builds from the yaml, downloads nothing
    model.model.names = {i: f"class_{i}" for i in range(args.classes)}
    _calibrate(model.model, _test_pattern_frames(), args.cls_bias)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.pt"
        model.save(weights)
        exported = YOLO(weights).export(
            format="onnx", dynamic=True, imgsz=args.imgsz, opset=17, simplify=True, batch=1
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(exported, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
