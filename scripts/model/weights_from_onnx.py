"""Rebuild trainable YOLOv8 weights (an ultralytics .pt) from an exported ONNX model. Dev-only, offline.

    .venv-export/bin/python -m scripts.model.weights_from_onnx --onnx engines/shapes-yolov8n.onnx \\
        --images .cache/train3/dataset/images/train --out .cache/shapes-from-onnx.pt

Why: a new training stage starts from the committed model's weights (train_detector --init), but
the .pt files of earlier stages live only on the machine that trained them. The ONNX export keeps
every weight under its module's name, with each convolution's batch norm folded into it
(w' = w * g / s, b' = b - m * g / s + beta). Folding cannot be undone exactly, so the batch norms
are rebuilt to be the identity on the data: for each folded convolution the rebuilt one keeps w'
(no bias) and its batch norm gets the mean m and deviation s of w' * x over training images
(measured here, each layer fed by the layers before it, all exact), weight s and bias b' + m. In
evaluation that is w' * x + b' again, exactly; in training, where the batch's own statistics are
used, it is close to it as long as a batch looks like the training images, so fine-tuning starts
from the model's function rather than from a shock. The result is checked against the ONNX model
(ONNX Runtime) on the images before it is written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from scripts.model.export_yolo_onnx import stand_in_torchvision


def _onnx_weights(path: Path) -> tuple[dict[str, np.ndarray], dict[int, str], int]:
    """(initializers by name, class names, input size) of an ultralytics export."""
    import ast

    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    meta = {p.key: p.value for p in model.metadata_props}
    return weights, ast.literal_eval(meta["names"]), ast.literal_eval(meta["imgsz"])[0]


def _letterboxed(images: list[Path], size: int) -> np.ndarray:
    """Images as the model's input [N, 3, size, size] (RGB, 0-1, padded with 114 as ultralytics does)."""
    import cv2

    out = np.full((len(images), size, size, 3), 114, np.uint8)
    for k, path in enumerate(images):
        bgr = cv2.imread(str(path))
        h, w = bgr.shape[:2]
        scale = size / max(h, w)
        nh, nw = round(h * scale), round(w * scale)
        top, left = (size - nh) // 2, (size - nw) // 2
        out[k, top:top + nh, left:left + nw] = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(out[..., ::-1].transpose(0, 3, 1, 2)).astype(np.float32) / 255


def rebuild(onnx_path: Path, images: list[Path], cfg: str = "yolov8n.yaml"):
    """The DetectionModel with the ONNX model's weights and batch norms rebuilt on `images`."""
    import torch
    from ultralytics.nn.modules.conv import Conv
    from ultralytics.nn.tasks import DetectionModel

    weights, names, size = _onnx_weights(onnx_path)
    model = DetectionModel(cfg, nc=len(names), verbose=False)
    model.names = names
    convs = {name: m for name, m in model.named_modules() if isinstance(m, Conv)}
    used = set()
    with torch.no_grad():
        for name, m in convs.items():  # first as the folded model: batch norm = + b'
            w, b = weights[f"{name}.conv.weight"], weights[f"{name}.conv.bias"]
            m.conv.weight.copy_(torch.from_numpy(w))
            m.bn.running_mean.zero_()
            m.bn.running_var.fill_(1 - m.bn.eps)
            m.bn.weight.fill_(1.0)
            m.bn.bias.copy_(torch.from_numpy(b))
            used.update((f"{name}.conv.weight", f"{name}.conv.bias"))
        state = model.state_dict()
        for key, value in weights.items():  # the head's plain convolutions and the DFL
            if key not in used and key in state:
                state[key].copy_(torch.from_numpy(value))
                used.add(key)
    norms = {f"{n}.bn.{p}" for n in convs for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    missing = [k for k in state if k not in used and k not in norms]
    if missing:
        raise ValueError(f"{onnx_path}: no weights for {missing[:5]} (another architecture than {cfg}?)")
    inputs = torch.from_numpy(_letterboxed(images, size))
    model.eval()
    sums: dict[str, list] = {}

    def measure(name):
        def hook(module, args, output):
            z = output.double().transpose(0, 1).reshape(output.shape[1], -1)  # w' * x, before the batch norm
            s = sums.setdefault(name, [0, 0.0, 0.0])
            s[0] += z.shape[1]
            s[1] = s[1] + z.sum(1)
            s[2] = s[2] + (z * z).sum(1)
        return hook

    hooks = [m.conv.register_forward_hook(measure(name)) for name, m in convs.items()]
    with torch.no_grad():
        for start in range(0, len(inputs), 16):
            model(inputs[start:start + 16])
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for name, m in convs.items():
            n, total, squares = sums[name]
            mean = total / n
            var = (squares / n - mean * mean).clamp(min=1e-6)
            b = m.bn.bias.detach().double().clone()
            m.bn.running_mean.copy_(mean.float())
            m.bn.running_var.copy_(var.float())
            m.bn.weight.copy_(torch.sqrt(var + m.bn.eps).float())
            m.bn.bias.copy_((b + mean).float())
    return model, inputs


def check(model, onnx_path: Path, inputs) -> float:
    """The largest difference between the rebuilt model's raw output and the ONNX model's."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    worst = 0.0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(inputs), 16):
            batch = inputs[start:start + 16]
            ours = model(batch)[0].numpy()
            theirs = session.run(None, {name: batch.numpy()})[0]
            worst = max(worst, float(np.abs(ours - theirs).max()))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="a folder of training images (JPEG)")
    parser.add_argument("--count", type=int, default=256, help="images to measure the batch norms on")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    stand_in_torchvision()
    import torch

    torch.set_num_threads(2)
    images = sorted(args.images.glob("*.jpg"))
    if not images:
        print(f"{args.images}: no .jpg images", file=sys.stderr)
        return 2
    images = images[:: max(1, len(images) // args.count)][: args.count]
    model, inputs = rebuild(args.onnx, images)
    worst = check(model, args.onnx, inputs)
    print(f"rebuilt from {args.onnx}: largest difference from the ONNX model's output on {len(images)} images: {worst:.2e}")
    if worst > 1e-2:
        print("too far from the ONNX model: not written", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.float(), "train_args": {}, "epoch": -1, "date": None}, args.out)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
