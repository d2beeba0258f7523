"""GPU path benchmark: NVDEC decode against a bare PyNvVideoCodec loop, the pipeline's own ceiling
with the stub engine on N 1080p streams, and the host<->device copies per frame. One JSON report;
the zero-copy claims as PASS/FAIL lines (exit 1 when one fails), the decode and ceiling ratios as
FIGURE lines: recorded, not judged. That was decided before any GPU run: the per-frame Python work
(PyAV demux, two context switches per packet, the pool copy and its sync, the batcher) serialises
on the GIL, so how close to bare NVDEC the pipeline gets is a figure to learn, not a bar we know.

    python -m scripts.bench.bench_gpu --streams 8 --seconds 20 --out gpu-report.json
    python -m scripts.bench.bench_gpu --cpu --streams 2 --seconds 5     # same harness on the CPU path

1. decode: frames/s of PyNvVideoCodec's own demuxer + decoder on a local 1080p clip (the bare
   loop) and of ours (PyAV demux + pipeline.s2_nvdec.NvDecoder) on the same clip: their ratio.
2. ceiling: N threads, each looping the clip as one camera at full speed: PyAV demux -> NvDecoder
   -> retain into the camera's frame pool -> deadline batcher -> GPU letterbox kernel -> stub
   engine (waits for the kernels) -> postprocess, against N bare PyNvVideoCodec loops on the
   same clip at once (what NVDEC gives with nothing else): their ratio. Files, not RTSP, and
   no Kafka: this is the ceiling of decode + batching + preprocessing.
3. copies: the transfer counter over the ceiling run, per inferred frame: h2d and d2h must be 0
   (the stub engine returns no device output); d2d is the decoder-surface -> pool copy (2 per
   kept frame: luma and chroma).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import av

from pipeline.config import ModelConfig
from pipeline.core import Frame, FrameMeta
from pipeline.inference_worker import InferenceWorker
from pipeline.metrics import Metrics
from pipeline.s2_decode import PyAVDecoder
from pipeline.s3_batch import DeadlineBatcher
from pipeline.s4_infer.preprocess import CpuPreprocessor
from pipeline.s4_infer.stub_backend import StubEngine
from pipeline.s5_postprocess import detections_for_image
from scripts.lab.clips import pyav_clip
from scripts.lab.common import REPO
from scripts.lab.scenes import Scene

MODEL = REPO / "engines" / "shapes-yolov8n.onnx"


def make_clip(folder: Path, width: int = 1920, height: int = 1080, seconds: float = 10) -> Path:
    """A generated-scene H.264 clip (PyAV's libx264; the GPU machine has no ffmpeg program)."""
    clip = folder / f"bench-{width}x{height}.mp4"
    if not clip.exists():
        scene = Scene(4242, width, height, frames=int(seconds * 25))
        pyav_clip(clip, (scene.render(i)[0] for i in range(scene.frames)))
    return clip


def bare_decode_fps(clip: Path, gpu_index: int, seconds: float, streams: int = 1) -> dict:
    """PyNvVideoCodec alone: its demuxer and decoder looping the clip, in `streams` threads at once."""
    import PyNvVideoCodec as nvc

    counts = [0] * streams
    start = time.monotonic()

    def loop(i: int) -> None:
        while time.monotonic() - start < seconds:
            demuxer = nvc.CreateDemuxer(filename=str(clip))
            decoder = nvc.CreateDecoder(gpuid=gpu_index, codec=demuxer.GetNvCodecId(), usedevicememory=True)
            for packet in demuxer:
                counts[i] += len(decoder.Decode(packet))

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)  # a stuck decoder must not hang the run (the thread is a daemon)
    elapsed = time.monotonic() - start
    return {"fps": sum(counts) / elapsed, "frames": sum(counts), "streams": streams}


def nvdec_engines(gpu_index: int) -> int | None:
    """NVDEC engines of the GPU, as the driver reports them (None: not reported)."""
    import PyNvVideoCodec as nvc

    try:
        caps = nvc.GetDecoderCaps(gpuid=gpu_index, codec=nvc.cudaVideoCodec.H264,
                                  chromaformat=getattr(nvc.cudaVideoChromaFormat, "420"), bitdepth=8)
        return int(caps["num_decoder_engines"])
    except Exception as exc:  # older drivers do not report it: say so rather than guess
        print(f"NVDEC engine count unknown ({exc!r})", file=sys.stderr)
        return None


def our_decode_fps(clip: Path, gpu, seconds: float, retain: bool) -> dict:
    """PyAV demux + our NvDecoder (optionally keeping every frame, as sampled frames are kept)."""
    from pipeline.s2_nvdec import NvDecoder

    frames, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        with av.open(str(clip)) as container:
            stream = container.streams.video[0]
            decoder = NvDecoder(stream, gpu)
            for packet in container.demux(stream):
                if packet.size:
                    for picture in decoder.decode(packet):
                        frames += 1
                        if retain:
                            decoder.retain(picture)
            decoder.close()
    elapsed = time.monotonic() - start
    return {"fps": frames / elapsed, "frames": frames}


def ceiling(clip: Path, streams: int, seconds: float, gpu) -> dict:
    """N looping streams through decode -> batch -> preprocess -> stub engine; frames/s."""
    metrics = Metrics()
    model = ModelConfig(path=MODEL, backend="stub", input_size=640)
    engine = StubEngine(model, gpu)
    drops: Counter[str] = Counter()
    batcher = DeadlineBatcher(streams, 0.005, 1.0, on_drop=lambda cam, reason: drops.update([reason]))
    preprocessors = (engine.preprocessors(2, streams) if gpu else
                     [CpuPreprocessor(engine.info.input_spec) for _ in range(2)])
    inferred: Counter[str] = Counter()
    postprocess = functools.partial(detections_for_image, layout="yolov8", labels=engine.info.labels,
                                    confidence=0.25, iou=0.45, max_detections=300)
    worker = InferenceWorker(batcher.next_batch, preprocessors, engine.infer, 1, postprocess,
                             lambda results: inferred.update(r.meta.camera_id for r in results), metrics)
    stop, decoded = threading.Event(), Counter()
    threads = [threading.Thread(target=_camera, args=(f"cam{i}", clip, gpu, batcher, stop, decoded), daemon=True)
               for i in range(streams)]
    worker.start()
    before = gpu.transfers.snapshot() if gpu else None
    for thread in threads:
        thread.start()
    time.sleep(2)  # warm-up: decoders created, the kernel loaded
    start_inferred, start_decoded, start = sum(inferred.values()), sum(decoded.values()), time.monotonic()
    time.sleep(seconds)
    done, elapsed = sum(inferred.values()) - start_inferred, time.monotonic() - start
    decoded_n = sum(decoded.values()) - start_decoded
    stop.set()
    batcher.close()
    worker.stop(5)
    for thread in threads:
        thread.join(5)
    worker.close()
    report = {"streams": streams, "inferred_fps": done / elapsed, "decoded_fps": decoded_n / elapsed,
              "per_stream_inferred_fps": done / elapsed / streams, "drops": dict(drops),
              "batches": worker.batches}
    if gpu:
        after = gpu.transfers.snapshot()
        total = sum(inferred.values()) or 1  # since `before`: warm-up included on both sides
        report["copies_per_inferred_frame"] = {
            d: {"calls": (after[d][0] - before[d][0]) / total, "bytes": (after[d][1] - before[d][1]) / total}
            for d in after}
    return report


def _camera(cam: str, clip: Path, gpu, batcher: DeadlineBatcher, stop: threading.Event, decoded: Counter) -> None:
    """One camera: loop the clip through the decoder into the batcher as fast as it goes."""
    while not stop.is_set():
        with av.open(str(clip)) as container:
            stream = container.streams.video[0]
            decoder = _decoder(stream, gpu)
            for packet in container.demux(stream):
                if stop.is_set():
                    break
                for picture in decoder.decode(packet) if packet.size else ():
                    decoded[cam] += 1
                    kept = decoder.retain(picture)
                    if kept is not None:
                        meta = FrameMeta(cam, picture.time or 0.0, time.time(), "receive", picture.width, picture.height)
                        batcher.put(Frame(meta, kept, time.monotonic()))
            decoder.close()


def _decoder(stream, gpu):
    if gpu is None:
        return PyAVDecoder(stream)
    from pipeline.s2_nvdec import NvDecoder

    return NvDecoder(stream, gpu)


def checks(report: dict) -> list[tuple[str, float, str, float]]:
    """(what, measured, ">=" or "<=", target) of every claim the report is held to (GPU runs)."""
    if "decode" not in report:
        return []
    copies = report["ceiling"]["copies_per_inferred_frame"]
    return [
        ("host->device copies per inferred frame", copies["h2d"]["calls"], "<=", 0),
        ("device->host copies per inferred frame", copies["d2h"]["calls"], "<=", 0),
    ]


def figures(report: dict) -> list[tuple[str, str]]:
    """(what, figure) of what is measured and recorded, not judged."""
    ceiling = report["ceiling"]
    out = [(f"pipeline ceiling, {ceiling['streams']} x 1080p streams, frames/s inferred", f"{ceiling['inferred_fps']:.1f}")]
    if "decode" in report:
        decode = report["decode"]
        out += [("our NVDEC decode / bare PyNvVideoCodec, 1 stream", f"{decode['ratio']:.3f} "
                 f"({decode['ours']['fps']:.0f} / {decode['bare_pynvvideocodec']['fps']:.0f} frames/s)"),
                (f"pipeline ceiling / bare NVDEC, {ceiling['streams']} streams", f"{ceiling['ratio_to_bare']:.3f} "
                 f"(bare {report['bare_streams']['fps']:.0f} frames/s)"),
                ("NVDEC engines reported", str(decode["nvdec_engines"]))]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--cpu", action="store_true", help="PyAV decode + CPU letterbox (checks the harness)")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench-gpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    clip = make_clip(args.work)
    report: dict = {"clip": str(clip), "streams": args.streams}
    gpu = None
    if not args.cpu:
        from pipeline.gpu import Gpu

        gpu = Gpu(args.gpu)
        report["gpu"] = gpu.name
        bare = bare_decode_fps(clip, args.gpu, args.seconds / 2)
        ours = our_decode_fps(clip, gpu, args.seconds / 2, retain=False)
        kept = our_decode_fps(clip, gpu, args.seconds / 2, retain=True)
        report["decode"] = {"bare_pynvvideocodec": bare, "ours": ours, "ours_keeping_every_frame": kept,
                            "ratio": ours["fps"] / bare["fps"], "nvdec_engines": nvdec_engines(args.gpu)}
        report["bare_streams"] = bare_decode_fps(clip, args.gpu, args.seconds, args.streams)
    report["ceiling"] = ceiling(clip, args.streams, args.seconds, gpu)
    if gpu:
        report["ceiling"]["ratio_to_bare"] = report["ceiling"]["inferred_fps"] / report["bare_streams"]["fps"]
        gpu.close()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    for what, figure in figures(report):
        print(f"FIGURE | {what} | {figure}")
    failed = 0
    for what, measured, op, target in checks(report):
        ok = measured >= target if op == ">=" else measured <= target
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} | {what} | {measured:.3f} (target {op} {target:g})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
