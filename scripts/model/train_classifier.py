"""Train the colour classifier (a small CNN on object crops) on generated scenes and export it to
ONNX. Dev-only, offline (torch: the export venv of scripts/model/make_export_env.sh).

    .venv-export/bin/python -m scripts.model.train_classifier --out engines/colours-cnn.onnx

1. Crops: scenes of the detector's generator (scripts/lab/scenes.py; train seeds 1000+,
   validation seeds 5000+, as the detector's; the tests' seeds 9101+ are used by nothing here),
   encoded to H.264 and decoded again as a camera's stream is; every 4th frame, each object at
   least half visible, its truth box cut from the decoded picture exactly as the daemon cuts a
   detection's box (pipeline.s5_looks.crops: the decoder's YUV planes sampled SIZE x SIZE over the
   box, nearest sample), with the box jittered by up to 10 % of its size (detected boxes are not
   the truth's). Label: the family of the hue the object is drawn in (COLOUR_FAMILIES).
2. Model: three 3x3 convolutions (16, 32, 64 channels, ReLU, the first two max-pooled), global
   average pooling and a linear layer; softmax at the end, so the output is probabilities.
   Adam, seeded, on the CPU.
3. Export: ONNX (opset 17, dynamic batch), input `images` [N, 3, SIZE, SIZE] RGB in [0, 1] as the
   daemon feeds detectors, output `probs` [N, classes], the class names in the metadata `names`
   and `kind: classify`. Accuracy per crop on the validation scenes is printed and written to
   <work>/result.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from scripts.lab.scenes import COLOUR_FAMILIES, Scene, colour_family

SIZES = ((1280, 720), (1920, 1080), (1024, 768))
SIZE = 32


def crops_of(seeds: range, frames: int, every: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """[N, 3, SIZE, SIZE] crops and [N] family labels of the scenes' objects."""
    import av

    from pipeline.s5_looks import crops

    images, labels = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n, seed in enumerate(seeds):
            width, height = SIZES[n % len(SIZES)]
            scene = Scene(seed, width, height, frames=frames)
            clip = scene.write(Path(tmp) / f"{seed}.mp4")
            truth = json.loads(clip.with_suffix(".truth.json").read_text())["frames"]
            with av.open(str(clip)) as container:
                for index, picture in enumerate(container.decode(video=0)):
                    objects = [o for o in truth[index] if o["visible"] >= 0.5] if index % every == 0 else []
                    if not objects:
                        continue
                    boxes = np.array([o["bbox"] for o in objects], np.float64)
                    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, axis=1)
                    boxes = boxes + rng.uniform(-0.1, 0.1, boxes.shape) * size
                    cut, known = crops([picture], boxes, np.zeros(len(boxes), np.int64), SIZE)
                    images.append(cut[known])
                    labels += [colour_family(scene.things[o["object_id"]].color)
                               for o, ok in zip(objects, known) if ok]
    return np.concatenate(images), np.array(labels, np.int64)


def build(classes: int):
    import torch
    from torch import nn

    class ColourNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
            self.head = nn.Linear(64, classes)

        def forward(self, x):
            return self.head(torch.flatten(self.features(x), 1))

    return ColourNet()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(".cache/train-colours"))
    parser.add_argument("--train-scenes", type=int, default=32)
    parser.add_argument("--val-scenes", type=int, default=9)
    parser.add_argument("--frames", type=int, default=120, help="frames per scene (25 fps)")
    parser.add_argument("--every", type=int, default=4, help="keep every Nth frame")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="where to write the ONNX model")
    args = parser.parse_args()

    import onnx
    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    rng = np.random.default_rng(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    cached = args.work / "crops.npz"
    if cached.exists():
        data = np.load(cached)
        x_train, y_train, x_val, y_val = (data[k] for k in ("x_train", "y_train", "x_val", "y_val"))
    else:
        x_train, y_train = crops_of(range(1000, 1000 + args.train_scenes), args.frames, args.every, rng)
        x_val, y_val = crops_of(range(5000, 5000 + args.val_scenes), args.frames, args.every, rng)
        np.savez_compressed(cached, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    print(f"crops: {len(x_train)} training, {len(x_val)} validation; per family "
          f"{np.bincount(y_train, minlength=len(COLOUR_FAMILIES)).tolist()}", flush=True)

    model = build(len(COLOUR_FAMILIES))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.epochs)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    xv, yv = torch.from_numpy(x_val), torch.from_numpy(y_val)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(xt))
        for first in range(0, len(xt), 128):
            pick = order[first:first + 128]
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[pick]), yt[pick])
            loss.backward()
            optimiser.step()
        schedule.step()
        model.eval()
        with torch.no_grad():
            accuracy = float((model(xv).argmax(1) == yv).float().mean())
        print(f"epoch {epoch + 1}/{args.epochs}: loss {float(loss):.4f}, validation accuracy {accuracy:.4f}", flush=True)

    exported = torch.nn.Sequential(model, torch.nn.Softmax(dim=1)).eval()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(exported, torch.zeros(1, 3, SIZE, SIZE), str(args.out), input_names=["images"],
                      output_names=["probs"], dynamic_axes={"images": {0: "batch"}, "probs": {0: "batch"}},
                      opset_version=17, dynamo=False)
    proto = onnx.load(str(args.out))
    for key, value in {"names": str(dict(enumerate(COLOUR_FAMILIES))), "kind": "classify",
                       "imgsz": str([SIZE, SIZE])}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(args.out))
    with torch.no_grad():
        confusion = np.zeros((len(COLOUR_FAMILIES),) * 2, np.int64)
        np.add.at(confusion, (y_val, model(xv).argmax(1).numpy()), 1)
    result = {"validation_accuracy": accuracy, "crops_train": int(len(x_train)), "crops_val": int(len(x_val)),
              "classes": list(COLOUR_FAMILIES), "confusion": confusion.tolist(), "epochs": args.epochs,
              "size": SIZE, "onnx": str(args.out)}
    (args.work / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
