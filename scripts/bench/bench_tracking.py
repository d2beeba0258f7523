"""Tracking benchmarks: the tracker's cost per frame, and tracking quality on the tracking scenes
without RTSP or Kafka (the daemon's own stages in one process), for tuning.

    python -m scripts.bench.bench_tracking cost                 # ms per frame at 10, 30, 100 objects, and the model's
    python -m scripts.bench.bench_tracking score --fps 25 5     # MOTA/IDF1 per scene and sampling rate
    python -m scripts.bench.bench_tracking batch --objects 20   # us per frame, a lane's cameras a batch at a time

`score` renders scripts/lab/scenes.py's tracking scenes, encodes and decodes them (PyAV), runs the
model with the daemon's preprocessing, postprocessing and tracker (pipeline.s5_track), encodes
each frame as the daemon does (detections/v1) and scores it with scripts/lab/track_score.py. The end
to end test (tests/integration/test_tracking.py) runs the real daemon instead.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import av
import numpy as np

from pipeline.config import ModelConfig, TrackingConfig
from pipeline.core import Batch, Detection, Frame, FrameMeta, FrameResult, ModelRef, TrackEvents
from pipeline.s4_infer.onnxruntime_backend import OnnxRuntimeEngine
from pipeline.s4_infer.preprocess import CpuPreprocessor
from pipeline.s5_looks import LOOK_BINS, looks
from pipeline.s5_postprocess import detections_for_image
from pipeline.s5_track import CameraTracker, TrackSettings
from pipeline.messages import encode_detections
from scripts.lab.scenes import Scene, Truth, truth_path
from scripts.lab.track_e2e import CONFIDENCE, INPUT_SIZE, MODEL
from scripts.lab.track_score import HEADER, score, truth_crossings

REPO = Path(__file__).resolve().parents[2]
TRACKING_CAMERAS = {"trk-720p": (9201, 1280, 720), "trk-540p": (9202, 960, 540), "trk-4x3": (9203, 800, 600)}
BREAKER_CAMERAS = {"brk-540p": (31, 960, 540), "brk-720p": (32, 1280, 720), "brk-4x3": (33, 800, 600)}
FRAMES = 375  # 15 s at 25 fps


def tracking_clip(folder: Path, seed: int, width: int, height: int, frames: int = FRAMES) -> Path:
    """A tracking scene's clip and truth (cached in `folder`)."""
    clip = Path(folder) / f"tracking-{seed}-{width}x{height}-{frames}.mp4"
    if not clip.exists() or not truth_path(clip).exists():
        Scene(seed, width, height, frames=frames, tracking=True).write(clip)
    return clip


def cost(objects: int, frames: int = 300) -> float:
    """Mean ms per tracker update with `objects` moving boxes per frame (after a warm-up)."""
    rng = np.random.default_rng(objects)
    start = rng.uniform(0, 1800, (objects, 2))
    speed = rng.uniform(-8, 8, (objects, 2))
    tracker = CameraTracker(TrackSettings(high_confidence=0.35, max_tracks=1000))
    spent = []
    for i in range(frames):
        xy = start + speed * i
        dets = [Detection(k % 4, "c", 0.9 if k % 5 else 0.2, (x, y, x + 60, y + 60)) for k, (x, y) in enumerate(xy)]
        began = time.perf_counter()
        tracker.update(dets, i / 25, 1e9 + i / 25)
        spent.append(time.perf_counter() - began)
    return 1000 * float(np.mean(spent[30:]))


def batch_cost(cameras: int, objects: int, batch: int, per_frame: bool, rounds: int = 60) -> float:
    """Mean us per frame of the lane's tracker as the finish stage drives it: `cameras` cameras of
    bench_host's scene (objects that move, stop, cross, flicker and are missed), their frames in
    batches of `batch` (each camera seen at 7 fps: a loaded node), all at once (Trackers.track_batch)
    or frame by frame (Trackers.track, with Detection objects in). The first quarter is warm-up."""
    from pipeline.metrics import Metrics
    from pipeline.s5_postprocess import BatchDetections
    from pipeline.s5_track import Trackers
    from scripts.bench.bench_host import Scene

    scene, names = Scene(objects, 80), [f"cam{i:03d}" for i in range(cameras)]
    labels = tuple(f"class{i}" for i in range(80))
    trackers = Trackers(lambda cam: TrackSettings(0.25), Metrics())
    batches = []
    for step in range(rounds):
        for first in range(0, cameras, batch):
            group, t = names[first:first + batch], step / 7
            boxes, classes, scores, seen = scene.arrays(group, [t] * len(group))
            image = np.repeat(np.arange(len(group)), seen.sum(axis=1))
            found = BatchDetections(image, np.round(boxes[seen], 1), np.round(scores[seen], 4), classes[seen], labels)
            batches.append(([FrameMeta(cam, t, 1e9 + t, "receive", 1920, 1080) for cam in group], found))
    spent, frames = 0.0, 0
    for k, (metas, found) in enumerate(batches):
        began = time.perf_counter()
        if per_frame:
            for i, meta in enumerate(metas):
                trackers.track(meta, found.for_image(i))
        else:
            trackers.track_batch(metas, found, list(range(len(metas))))
        if k >= len(batches) // 4:
            spent, frames = spent + time.perf_counter() - began, frames + len(metas)
    return 1e6 * spent / frames


def inference_ms(runs: int = 50) -> float:
    """Mean ms of one inference of the shapes model at 320 with the daemon's ONNX Runtime settings:
    the least a frame costs the daemon, against which the tracker's share is given."""
    engine = OnnxRuntimeEngine(ModelConfig(path=MODEL, input_size=320))
    spec = engine.info.input_spec
    inputs = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32).astype(spec.dtype if hasattr(spec, "dtype") else np.float32)
    for _ in range(5):
        engine.infer(inputs)
    began = time.perf_counter()
    for _ in range(runs):
        engine.infer(inputs)
    return 1000 * (time.perf_counter() - began) / runs


def detect_scene(clip: Path, low: float = 0.1, model: Path = MODEL,
                 input_size: int = INPUT_SIZE) -> list[tuple[float, int, int, list[Detection], np.ndarray]]:
    """The model's detections (down to `low`) on every frame of a clip, with the daemon's
    preprocessing and postprocessing, and their looks (pipeline.s5_looks, from the decoded
    picture, as the daemon's tracker gets them): (pts, width, height, detections, looks); cached
    beside the clip, under the model file's hash and input size (either changes the detections)."""
    from pipeline.s4_infer.engine import file_sha256

    size = "" if input_size == 320 else f".in{input_size}"  # (caches made before --input-size are 320's)
    cache = clip.with_suffix(f".dets-{low:g}{size}.{file_sha256(model)[:12]}.looks-1.json")
    if cache.exists():
        return [(pts, w, h, [Detection(*d[:3], tuple(d[3])) for d in dets], np.array(looks, np.float64).reshape(-1, LOOK_BINS))
                for pts, w, h, dets, looks in json.loads(cache.read_text())]
    engine = OnnxRuntimeEngine(ModelConfig(path=model, input_size=input_size, confidence=low))
    post = functools.partial(detections_for_image, layout="yolov8", labels=engine.info.labels,
                             confidence=low, iou=0.45, max_detections=300)
    pre = CpuPreprocessor(engine.info.input_spec)
    out = []
    with av.open(str(clip)) as container:
        for i, picture in enumerate(container.decode(video=0)):
            meta = FrameMeta("cam", i / 25, 1e9 + i / 25, "receive", picture.width, picture.height)
            inputs, (box,) = pre(Batch((Frame(meta, picture, 0.0),)))
            dets = post(output=engine.infer(inputs)[0], letterbox=box)
            boxes = np.array([d.bbox for d in dets], np.float64).reshape(-1, 4)
            out.append((i / 25, picture.width, picture.height, dets, looks([picture], boxes, np.zeros(len(dets), np.int64))))
    cache.write_text(json.dumps([(pts, w, h, [(d.class_id, d.label, d.confidence, list(d.bbox)) for d in dets],
                                  np.round(found, 4).tolist()) for pts, w, h, dets, found in out]))
    return out


def score_scene(clip: Path, fps: float, confidence: float = CONFIDENCE, low: float = 0.1, model: Path = MODEL,
                input_size: int = INPUT_SIZE, **tracking) -> tuple[list[dict], Truth]:
    """The daemon's stages on one clip, sampled at `fps` (None: every frame) -> messages;
    `tracking`: settings other than the daemon's defaults (e.g. appearance=False)."""
    # the daemon's defaults, as pipeline.lanes applies them to a camera of this fps
    tracker = CameraTracker(TrackSettings.of(TrackingConfig(**tracking), confidence, fps))
    messages, due = [], 0.0
    for pts, width, height, detections, found in detect_scene(clip, low, model, input_size):
        if pts + 1e-6 < due:
            continue
        due += 1 / fps
        meta = FrameMeta("cam", pts, 1e9 + pts, "receive", width, height)
        frame = tracker.update(detections, pts, meta.captured_at, looks=found)
        result = FrameResult(meta, len(messages), frame.detections,
                             TrackEvents(tuple(frame.started), tuple(frame.ended), tuple(frame.refound)))
        messages.append(json.loads(encode_detections(result, ModelRef("m", "0" * 64, "onnxruntime"), "r" * 32)))
    return messages, Truth.load(truth_path(clip))


def scene_set(name: str) -> tuple[dict, object]:
    """(cameras: name -> (seed, width, height), the clip maker) of a set of scenes."""
    from scripts.lab.breaker_scenes import breaker_clip
    from scripts.lab.occluder_scenes import HELD_OUT_SEEDS, TUNING_SEEDS, occluder_clip

    return {"tracking": (TRACKING_CAMERAS, tracking_clip), "breakers": (BREAKER_CAMERAS, breaker_clip),
            "occluders": (TUNING_SEEDS, occluder_clip), "occluders-held-out": (HELD_OUT_SEEDS, occluder_clip)}[name]


def mutations(args) -> dict:
    """The tracking settings --no-appearance and --lost-is-ended change (the issue 35 mutations)."""
    return {**({"appearance": False} if args.no_appearance else {}),
            **({"lost_s": TrackingConfig().max_age_s} if args.lost_is_ended else {})}


def end_to_end(args) -> int:
    """The scenes over RTSP through the daemon (its tracking defaults, or a mutation) and Kafka."""
    import tempfile

    from scripts.lab.broker import Broker
    from scripts.lab.track_e2e import scenes_by_class

    cameras, make = scene_set(args.scenes)
    tracking = mutations(args)
    args.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp, Broker() as broker:
        clips = Path(args.work)  # clips are kept between runs; each run's daemons and messages in its own folder
        scenes_by_class(Path(tmp), broker, cameras, lambda _, *scene: make(clips, *scene), tuple(args.fps),
                        tracking=tracking or None, prefix=args.scenes, model=args.model,
                        input_size=args.input_size, confidence=args.confidence)
    print(f"tracking settings: {tracking or 'the defaults'}")
    return 0


def _tracker_and_model(parser: argparse.ArgumentParser) -> None:
    """The arguments `e2e` and `score` share: the issue 35 mutations and the detector's settings."""
    parser.add_argument("--no-appearance", action="store_true", help="tracking.appearance: false (a mutation)")
    parser.add_argument("--lost-is-ended", action="store_true", help="tracking.lost_s = max_age_s (a mutation)")
    parser.add_argument("--model", type=Path, default=MODEL,
                        help="the detector (e.g. a retrained one before it is committed)")
    parser.add_argument("--input-size", type=int, default=INPUT_SIZE, help="model.input_size")
    parser.add_argument("--confidence", type=float, default=CONFIDENCE, help="model.confidence")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("cost")
    bt = sub.add_parser("batch")
    bt.add_argument("--cameras", type=int, default=150)
    bt.add_argument("--objects", type=int, nargs="+", default=[20, 50])
    bt.add_argument("--batch", type=int, default=8)
    e2e = sub.add_parser("e2e", help="end to end: RTSP -> daemon -> Kafka -> scores and the alerting consumer's counts")
    e2e.add_argument("--fps", type=int, nargs="+", default=[10, 5])
    e2e.add_argument("--work", type=Path, default=REPO / ".cache" / "tracking-e2e")
    e2e.add_argument("--scenes", choices=("tracking", "breakers", "occluders", "occluders-held-out"),
                     default="occluders-held-out")
    _tracker_and_model(e2e)
    sc = sub.add_parser("score")
    sc.add_argument("--fps", type=float, nargs="+", default=[25, 5])
    sc.add_argument("--work", type=Path, default=REPO / ".cache" / "tracking")
    _tracker_and_model(sc)
    sc.add_argument("--scenes", choices=("tracking", "breakers", "occluders", "occluders-held-out"), default="tracking",
                    help="the tracking scenes (tuned on), the breaker scenes (scripts/lab/breaker_scenes.py), or the "
                         "occlusion scenes (scripts/lab/occluder_scenes.py): their tuning seeds or their held-out ones")
    args = parser.parse_args()
    if args.what == "cost":
        frame = inference_ms()
        print(f"the model on one frame (engines/shapes-yolov8n.onnx, 320, daemon's ONNX Runtime settings): {frame:.2f} ms")
        for n in (10, 30, 100):
            spent = cost(n)
            print(f"{n} objects: {spent:.3f} ms per frame, {100 * spent / frame:.1f} % of the model's time")
        return 0
    if args.what == "batch":
        for k in args.objects:
            alone, batched = (batch_cost(args.cameras, k, args.batch, per_frame) for per_frame in (True, False))
            print(f"{k} objects, {args.cameras} cameras, batch {args.batch}: frame by frame {alone:.0f} us a frame, "
                  f"a batch at a time {batched:.0f} us a frame")
        return 0
    if args.what == "e2e":
        return end_to_end(args)
    args.work.mkdir(parents=True, exist_ok=True)
    changed = mutations(args)
    print(HEADER)
    from scripts.lab.scenes import CLASSES

    crossings = {(fps, label): {"counted": 0, "truth": 0} for fps in args.fps for label in CLASSES}
    cameras, make = scene_set(args.scenes)
    for cam, (seed, w, h) in cameras.items():
        clip = make(args.work, seed, w, h)
        for fps in args.fps:
            messages, truth = score_scene(clip, fps, args.confidence, model=args.model, input_size=args.input_size,
                                          **changed)
            print(score(messages, truth).row(f"{cam} @ {fps:g} fps"), flush=True)
            for line in middle_lines(w, h):
                for label in CLASSES:
                    crossings[fps, label]["counted"] += sum(line_counts(messages, line, [label]).values())
                    crossings[fps, label]["truth"] += sum(truth_crossings(messages, truth, line, [label]).values())
    print("\nline crossings by class (middle lines across and along, both ways): counted / truth")
    for fps in args.fps:
        print(f"{fps:g} fps: " + ", ".join(f"{label} {crossings[fps, label]['counted']}/{crossings[fps, label]['truth']}"
                                          for label in CLASSES))
    return 0


def middle_lines(width: int, height: int) -> list:
    """A horizontal and a vertical line through the middle of the picture."""
    from pipeline.alerting.rules import Line

    return [Line(camera="cam", points=[(0, height / 2), (width, height / 2)], in_side="right"),
            Line(camera="cam", points=[(width / 2, 0), (width / 2, height)], in_side="left")]


def line_counts(messages: list[dict], line, classes=None) -> dict[str, int]:
    """Crossings of `line` by the messages' tracks (of `classes`: by the track's class where the
    message has one, as the alerting consumer's rules filter), as the alerting consumer counts them."""
    from pipeline.alerting.rules import LineCounter

    counter = LineCounter(line)
    for m in messages:
        for det in m["detections"]:
            if det.get("track_id") is not None and (classes is None or det.get("track_label", det["label"]) in classes):
                counter.observe(det["track_id"], det["bbox"], 0.0)
    return counter.counts


if __name__ == "__main__":
    sys.exit(main())
