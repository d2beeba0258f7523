"""Train the shapes detector (YOLOv8n) on generated scenes and export it to ONNX. Dev-only, offline.

    bash scripts/model/make_export_env.sh .venv-export
    .venv-export/bin/python -m scripts.model.train_detector --work .cache/train --train-scenes 32 \\
        --epochs 30 --distractors 0 --out .cache/stage1.onnx                       # stage 1
    .venv-export/bin/python -m scripts.model.train_detector --work .cache/train2 --train-scenes 64 \\
        --epochs 15 --init .cache/train/run/weights/best.pt --warmup-epochs 1 --close-mosaic 3 \\
        --out engines/shapes-yolov8n.onnx                                          # stage 2
(the two stages of the committed model: engines/README.md). Stage 2 may add scenes of the other two
generators (`--breaker-scenes`, `--occluder-scenes`: seeds 2000+ and 2100+, none of them a tracking
scene's tuning or held-out seed; flicker and injected misses off, since a flickered object is
drawn as another class's shape while its truth keeps its own class). A run stopped part way (a
session's end, kill) goes on from its last epoch when the same command is run again.

1. Dataset: scenes from scripts/lab/scenes.py, with distractors unless `--distractors 0` (train seeds
   1000+, validation seeds 5000+; the accuracy test uses other seeds) at 1280x720, 1920x1080 and
   1024x768, encoded to H.264 and decoded again
   (so training sees the compression the pipeline sees), every 4th frame scaled to 480 px on the
   long side, YOLO labels for objects at least 35% visible.
2. Training: ultralytics YOLOv8n from its architecture yaml (no weights downloaded) or from an
   earlier run's weights (`--init`), seeded, deterministic, on the CPU with 2 threads, images of
   320 px (the daemon's `input_size: 320`).
3. Export: best weights to ONNX (dynamic batch and H/W, opset 17), labels in its metadata.
Training metrics (mAP50 on the validation scenes) are printed and written to <work>/result.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from scripts.lab.scenes import CLASSES, Scene
from scripts.model.export_yolo_onnx import stand_in_torchvision

SIZES = ((1280, 720), (1920, 1080), (1024, 768))
LABEL_MIN_VISIBLE = 0.35
IMAGE_LONG_SIDE = 480


def shapes_scenes(seeds: range, frames: int, distractors: float):
    """The detector's own generator's scenes, sizes in turn."""
    for n, seed in enumerate(seeds):
        width, height = SIZES[n % len(SIZES)]
        yield Scene(seed, width, height, frames=frames, distractors=distractors)


def other_scenes(generator: str, count: int):
    """Scenes of the breaker or occluder generator (their own sizes, 15 s each), for stage 2: seeds
    2000+ / 2100+, apart from the tracking figures' tuning (31-33, 41-43) and held-out (61-69,
    141-143) seeds; flicker and misses off (see the module docstring)."""
    from scripts.lab.breaker_scenes import BreakerScene
    from scripts.lab.occluder_scenes import OccluderScene

    sizes = ((960, 540), (1280, 720), (800, 600))
    for n in range(count):
        width, height = sizes[n % len(sizes)]
        if generator == "breaker":
            yield BreakerScene(2000 + n, width, height, flicker=0.0, miss=0.0)
        else:
            yield OccluderScene(2100 + n, width, height, miss=0.0)


def build_split(root: Path, split: str, scenes, every: int) -> int:
    """Render, encode, decode and label the scenes of one split; returns the image count."""
    import av
    import cv2

    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    count = 0
    with tempfile.TemporaryDirectory() as tmp:
        for scene in scenes:
            seed, width, height = scene.seed, scene.width, scene.height
            clip = scene.write(Path(tmp) / f"{seed}.mp4")
            truth = json.loads(clip.with_suffix(".truth.json").read_text())["frames"]
            scale = IMAGE_LONG_SIDE / max(width, height)
            size = (round(width * scale), round(height * scale))
            with av.open(str(clip)) as container:
                for index, frame in enumerate(container.decode(video=0)):
                    if index % every:
                        continue
                    rgb = frame.to_ndarray(format="rgb24")
                    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
                    name = f"s{seed}_f{index:04d}"
                    cv2.imwrite(str(images / f"{name}.jpg"), small[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
                    rows = [_yolo_row(o, width, height) for o in truth[index] if o["visible"] >= LABEL_MIN_VISIBLE]
                    (labels / f"{name}.txt").write_text("".join(rows))
                    count += 1
    return count


def _yolo_row(obj: dict, width: int, height: int) -> str:
    x1, y1, x2, y2 = obj["bbox"]
    cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
    return f"{obj['class_id']} {cx:.6f} {cy:.6f} {(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}\n"


def _train(args, spec: Path) -> None:
    from ultralytics import YOLO

    model = YOLO(str(args.init) if args.init else "yolov8n.yaml")  # yaml: architecture only
    model.train(
        data=str(spec), imgsz=args.imgsz, epochs=args.epochs, batch=args.batch, workers=2, device="cpu",
        seed=args.seed, deterministic=True, pretrained=args.init is not None, amp=False, plots=False, cache="ram",
        project=str(args.work.resolve()), name="run", exist_ok=True, flipud=0.0, fliplr=0.5,
        degrees=0.0, mosaic=1.0, close_mosaic=args.close_mosaic, patience=100,
        warmup_epochs=args.warmup_epochs, verbose=False,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(".cache/train"))
    parser.add_argument("--train-scenes", type=int, default=48)
    parser.add_argument("--val-scenes", type=int, default=9)
    parser.add_argument("--frames", type=int, default=120, help="frames per scene (25 fps)")
    parser.add_argument("--every", type=int, default=4, help="keep every Nth frame")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distractors", type=float, default=1.5,
                        help="scenes' distractors in view (0: none, as the first model was trained)")
    parser.add_argument("--init", type=Path,
                        help="start from these weights (a .pt of an earlier run) instead of the yaml")
    parser.add_argument("--warmup-epochs", type=float, default=3.0)
    parser.add_argument("--close-mosaic", type=int, default=5, help="last N epochs without mosaic")
    parser.add_argument("--breaker-scenes", type=int, default=0,
                        help="training scenes of scripts/lab/breaker_scenes.py added (seeds 2000+)")
    parser.add_argument("--occluder-scenes", type=int, default=0,
                        help="training scenes of scripts/lab/occluder_scenes.py added (seeds 2100+)")
    parser.add_argument("--other-every", type=int, default=12,
                        help="keep every Nth frame of the other generators' 375-frame scenes")
    parser.add_argument("--out", type=Path, help="where to write the ONNX model")
    parser.add_argument("--dataset-only", action="store_true",
                        help="build the dataset and stop (e.g. for scripts.model.weights_from_onnx)")
    args = parser.parse_args()
    if args.out is None and not args.dataset_only:
        parser.error("--out is required")

    data = args.work / "dataset"
    if not (data / "done").exists():
        shutil.rmtree(data, ignore_errors=True)
        n_train = build_split(data, "train", shapes_scenes(range(1000, 1000 + args.train_scenes), args.frames,
                                                           args.distractors), args.every)
        n_train += build_split(data, "train", other_scenes("breaker", args.breaker_scenes), args.other_every)
        n_train += build_split(data, "train", other_scenes("occluder", args.occluder_scenes), args.other_every)
        n_val = build_split(data, "val", shapes_scenes(range(5000, 5000 + args.val_scenes), args.frames,
                                                       args.distractors), args.every)
        (data / "done").write_text(f"{n_train} {n_val}\n")
        print(f"dataset: {n_train} training and {n_val} validation images", flush=True)
    if args.dataset_only:
        return 0
    spec = data / "shapes.yaml"
    spec.write_text(json.dumps({"path": str(data.resolve()), "train": "images/train", "val": "images/val",
                                "names": dict(enumerate(CLASSES))}))

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", str((args.work / "yolo-config").resolve()))
    stand_in_torchvision()
    import torch
    from ultralytics import YOLO

    torch.set_num_threads(2)  # ultralytics uses one thread on the CPU by default
    torch.manual_seed(args.seed)
    last = args.work / "run" / "weights" / "last.pt"
    if (args.work / "run" / "finished").exists():
        print("trained already: exporting its best weights", flush=True)
    elif last.exists():
        print(f"resuming from {last}", flush=True)  # ultralytics keeps the epoch, optimiser and seed state there
        YOLO(str(last)).train(resume=True)
    else:
        _train(args, spec)
    (args.work / "run" / "finished").write_text("")
    best = args.work / "run" / "weights" / "best.pt"

    trained = YOLO(str(best))
    metrics = trained.val(data=str(spec), imgsz=args.imgsz, batch=args.batch, device="cpu", plots=False,
                          project=str(args.work.resolve()), name="val", exist_ok=True)
    exported = trained.export(format="onnx", dynamic=True, imgsz=args.imgsz, opset=17, simplify=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(exported, args.out)
    result = {"map50": float(metrics.box.map50), "map50_95": float(metrics.box.map),
              "per_class_map50": dict(zip(CLASSES, (float(v) for v in metrics.box.ap50))),
              "epochs": args.epochs, "imgsz": args.imgsz, "onnx": str(args.out),
              "init": str(args.init) if args.init else None, "train_scenes": args.train_scenes,
              "distractors": args.distractors, "breaker_scenes": args.breaker_scenes,
              "occluder_scenes": args.occluder_scenes}
    (args.work / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
