"""Detection quality of one or more detector files per scene generator, on held-out seeds, for a
before/after comparison of a retrained model (issue 35: "recall per generator before and after").

Each generator's held-out scenes are written as H.264 clips (as cameras send them) with their
truth, decoded with PyAV, and every `--every`-th frame goes through the daemon's own preprocessing,
ONNX Runtime and postprocessing at the operating point (confidence 0.35, input 320); detections are
matched to the truth per class at IoU 0.5 (scripts/lab/accuracy.match_frame). Scenes are drawn
with no injected misses or class flicker: this scores the detector, not the tracker.

    .venv/bin/python -m scripts.model.eval_detector engines/shapes-yolov8n.onnx .cache/stage2.onnx

Seeds: the shapes generator's test scenes (scripts/lab/accuracy TEST_CAMERAS) and the tracking
scenes (bench_tracking's), the breaker generator's held-out 61-63 and the occluder generator's
HELD_OUT_SEEDS; none of them is among the training seeds of scripts/model/train_detector.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import av

from pipeline.config import ModelConfig
from pipeline.core import Batch, Frame, FrameMeta
from pipeline.s4_infer.onnxruntime_backend import OnnxRuntimeEngine
from pipeline.s4_infer.preprocess import CpuPreprocessor
from pipeline.s5_postprocess import detections_for_image
from scripts.lab.accuracy import TEST_CAMERAS, match_frame
from scripts.lab.common import REPO
from scripts.lab.scenes import Truth, truth_path


def scenes() -> dict[str, list]:
    """generator -> its held-out scenes (objects with no injected misses or flicker)."""
    from scripts.bench.bench_tracking import TRACKING_CAMERAS
    from scripts.lab.breaker_scenes import BreakerScene
    from scripts.lab.occluder_scenes import HELD_OUT_SEEDS, OccluderScene
    from scripts.lab.scenes import Scene

    sizes = ((960, 540), (1280, 720), (800, 600))
    return {
        "shapes": [Scene(seed, w, h, frames=200) for seed, w, h in TEST_CAMERAS.values()],
        "shapes-tracking": [Scene(seed, w, h, frames=375, tracking=True) for seed, w, h in TRACKING_CAMERAS.values()],
        "breakers": [BreakerScene(61 + i, w, h, flicker=0.0, miss=0.0) for i, (w, h) in enumerate(sizes)],
        "occluders": [OccluderScene(seed, w, h, miss=0.0) for seed, w, h in HELD_OUT_SEEDS.values()],
    }


def clip_of(scene, folder: Path, generator: str) -> Path:
    clip = folder / f"{generator}-{scene.seed}-{scene.width}x{scene.height}.mp4"
    if not clip.exists() or not truth_path(clip).exists():
        scene.write(clip)
    return clip


def score(model: Path, clips: dict[str, list[Path]], every: int, confidence: float,
          input_size: int = 320) -> dict[str, dict]:
    """generator -> recall, precision, objects, and the objects never found in any frame."""
    engine = OnnxRuntimeEngine(ModelConfig(path=model, input_size=input_size, confidence=confidence))
    pre = CpuPreprocessor(engine.info.input_spec)
    out = {}
    for generator, paths in clips.items():
        hits = misses = false = 0
        for clip in paths:
            truth = Truth.load(truth_path(clip))
            with av.open(str(clip)) as container:
                for i, picture in enumerate(container.decode(video=0)):
                    if i % every:
                        continue
                    meta = FrameMeta("eval", float(picture.time), 0.0, "receive", picture.width, picture.height)
                    inputs, (box,) = pre(Batch((Frame(meta, picture, 0.0),)))
                    dets = detections_for_image(output=engine.infer(inputs)[0], letterbox=box, layout="yolov8",
                                                labels=engine.info.labels, confidence=confidence, iou=0.45,
                                                max_detections=300)
                    found = match_frame([{"class_id": d.class_id, "confidence": d.confidence, "bbox": d.bbox}
                                         for d in dets], truth.at_pts(float(picture.time)))
                    hits += sum(1 for *_, ok in found.scored if ok)
                    false += sum(1 for *_, ok in found.scored if not ok)
                    misses += found.missed
        out[generator] = {"recall": hits / max(1, hits + misses), "precision": hits / max(1, hits + false),
                          "objects": hits + misses}
    engine.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "eval-detector")
    parser.add_argument("--every", type=int, default=5, help="score every n-th frame")
    parser.add_argument("--confidence", type=float, default=0.35)
    parser.add_argument("--input-size", type=int, default=320, help="the model's input size (model.input_size)")
    parser.add_argument("--only", nargs="*", help="these generators only")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    clips = {g: [clip_of(s, args.work, g) for s in made] for g, made in scenes().items()
             if not args.only or g in args.only}
    results = {str(m): score(m, clips, args.every, args.confidence, args.input_size) for m in args.models}
    print(f"{'generator':<16}" + "".join(f"{m.name[:28]:>32}" for m in args.models))
    for generator in clips:
        row = [results[str(m)][generator] for m in args.models]
        print(f"{generator:<16}" + "".join(f"{'R %.3f P %.3f (%d)' % (r['recall'], r['precision'], r['objects']):>32}"
                                           for r in row))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
