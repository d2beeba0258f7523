"""On a real NVIDIA GPU: NVDEC decoding through our decoder, the letterbox kernel against its CPU
reference, zero-copy (counted transfers), resolution changes, and TensorRT end to end.

Copies to the host below are the tests' own (to compare results); they bypass the pipeline's
transfer counter on purpose."""
import functools
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.config import ModelConfig
from pipeline.core import Batch, Frame, FrameMeta
from pipeline.s4_infer.gpu_preprocess import GpuPreprocessor, letterbox_nv12_reference

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "engines" / "shapes-yolov8n.onnx"


def nvdec_frames(clip: Path, gpu, keep: int | None = None, events=None):
    """(pts, DeviceFrame kept in the pool) for the clip's frames, via PyAV demux + NvDecoder."""
    from pipeline.s2_nvdec import NvDecoder

    out = []
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        decoder = NvDecoder(stream, gpu, on_event=(events.append if events is not None else lambda k: None))
        for packet in container.demux(stream):
            if packet.size:
                for picture in decoder.decode(packet):
                    kept = decoder.retain(picture) if keep is None or len(out) < keep else None
                    out.append((picture.time, picture.width, picture.height, kept))
    return out


def host_nv12(gpu, frame):
    """The test's own copy of a DeviceFrame's planes to the host."""
    import pycuda.driver as cuda

    w, h = frame.width, frame.height
    luma = np.empty((h, w), np.uint8)
    chroma = np.empty(((h + 1) // 2, w), np.uint8)
    with gpu.current():
        for dst, src, pitch, rows in ((luma, frame.luma_ptr, frame.luma_pitch, h),
                                      (chroma, frame.chroma_ptr, frame.chroma_pitch, (h + 1) // 2)):
            copy = cuda.Memcpy2D()
            copy.set_src_device(src)
            copy.set_dst_host(dst)
            copy.src_pitch, copy.dst_pitch, copy.width_in_bytes, copy.height = pitch, w, w, rows
            copy(aligned=True)
    return luma, chroma.reshape((h + 1) // 2, (w + 1) // 2, 2)


def test_nvdec_decodes_every_frame_with_pyavs_timestamps(gpu, clip_1080p):
    with av.open(str(clip_1080p)) as container:
        expected = [float(f.time) for f in container.decode(video=0)]
    got = nvdec_frames(clip_1080p, gpu, keep=0)
    assert [round(t, 4) for t, *_ in got] == [round(t, 4) for t in expected]
    assert {(w, h) for _, w, h, _ in got} == {(1920, 1080)}


@pytest.mark.parametrize("fp16", [False, True])
def test_letterbox_kernel_matches_the_cpu_reference_on_decoded_frames(gpu, clip_1080p, fp16):
    import pycuda.driver as cuda

    from pipeline.s4_infer.engine import describe_onnx

    frames = [kept for *_, kept in nvdec_frames(clip_1080p, gpu, keep=3)[:3]]
    spec = describe_onnx(ModelConfig(path=MODEL, input_size=640)).input_spec
    pre = GpuPreprocessor(spec, gpu, max_batch=4, max_hw=(640, 640), fp16=fp16)
    batch = Batch(tuple(Frame(FrameMeta("cam", 0.0, 0.0, "receive", f.width, f.height), f, 0.0) for f in frames))
    prepared, boxes = pre(batch)
    n, c, h, w = prepared.shape
    device = np.empty((n, c, h, w), np.float16 if fp16 else np.float32)
    with gpu.current():
        prepared.ready.synchronize()
        cuda.memcpy_dtoh(device, prepared.ptr)
    for i, frame in enumerate(frames):
        expected = np.empty((3, h, w), np.float32)
        letterbox_nv12_reference(*host_nv12(gpu, frame), frame.color, boxes[i], expected)
        error = np.abs(device[i].astype(np.float32) - expected).max()
        assert error <= 1 / 255 + (1e-3 if fp16 else 0), error


def test_no_image_crosses_to_the_host_only_the_pool_copy_on_the_gpu(gpu, clip_1080p):
    from pipeline.s4_infer.stub_backend import StubEngine

    before = gpu.transfers.snapshot()
    frames = [kept for *_, kept in nvdec_frames(clip_1080p, gpu, keep=8)[:8]]
    after_decode = gpu.transfers.snapshot()
    engine = StubEngine(ModelConfig(path=MODEL, backend="stub", input_size=640), gpu)
    pre = engine.preprocessors(1, 8)[0]
    batch = Batch(tuple(Frame(FrameMeta("cam", 0.0, 0.0, "receive", f.width, f.height), f, 0.0) for f in frames))
    engine.infer(pre(batch)[0])
    after = gpu.transfers.snapshot()
    assert after["h2d"] == before["h2d"] and after["d2h"] == before["d2h"]
    frame_bytes = 1920 * 1080 * 3 // 2
    assert after_decode["d2d"][0] - before["d2d"][0] == 2 * 8  # luma + chroma per kept frame
    assert after_decode["d2d"][1] - before["d2d"][1] == 8 * frame_bytes
    assert after["d2d"] == after_decode["d2d"]  # preprocessing reads the pool in place


def test_a_resolution_change_mid_stream_is_decoded_and_counted(gpu, resolution_change_stream):
    events = []
    got = nvdec_frames(resolution_change_stream, gpu, events=events)
    sizes = [(w, h) for _, w, h, _ in got]
    assert (640, 360) in sizes and (1280, 720) in sizes
    assert sizes.index((1280, 720)) == 30 and len(got) == 60
    assert "resolution_change" in events


def test_a_damaged_packet_recreates_only_that_decoder_and_decoding_resumes(gpu, clip_1080p):
    from pipeline.s2_nvdec import NvDecoder

    events, decoded = [], 0
    with av.open(str(clip_1080p)) as container:
        stream = container.streams.video[0]
        decoder = NvDecoder(stream, gpu, on_event=events.append)
        for i, packet in enumerate(container.demux(stream)):
            if not packet.size:
                continue
            if i == 5:  # garbage in place of a frame
                packet = av.Packet(b"\x00\x00\x01\x65" + bytes(range(256)) * 64)
            decoded += len(decoder.decode(packet))
    assert decoded >= 25  # the second GOP (frames 25-49) decodes after any restart


def test_tensorrt_detections_match_onnx_runtime(gpu, clip_1080p, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    from pipeline.core import EngineError
    from pipeline.s4_infer.onnxruntime_backend import OnnxRuntimeEngine
    from pipeline.s4_infer.preprocess import CpuPreprocessor
    from pipeline.s4_infer.tensorrt_backend import TensorRTEngine
    from pipeline.s5_postprocess import detections_for_image

    config = ModelConfig(path=MODEL, input_size=320, confidence=0.35,
                         tensorrt={"engine_cache": tmp_path, "precision": "fp16"})
    try:
        trt_engine = TensorRTEngine(config, gpu, max_batch=4)
    except EngineError as exc:
        pytest.skip(f"TensorRT cannot build here: {exc}")
    ort_engine = OnnxRuntimeEngine(config)
    post = functools.partial(detections_for_image, layout="yolov8", labels=ort_engine.info.labels,
                             confidence=0.35, iou=0.45, max_detections=300)
    with av.open(str(clip_1080p)) as container:
        cpu_frames = [f for _, f in zip(range(4), container.decode(video=0))]
    gpu_frames = [kept for *_, kept in nvdec_frames(clip_1080p, gpu, keep=4)[:4]]

    def batch_of(images):
        return Batch(tuple(Frame(FrameMeta("cam", 0.0, 0.0, "receive", 1920, 1080), im, 0.0) for im in images))

    trt_in, trt_boxes = trt_engine.preprocessors(1, 4)[0](batch_of(gpu_frames))
    ort_in, ort_boxes = CpuPreprocessor(ort_engine.info.input_spec)(batch_of(cpu_frames))
    trt_out, ort_out = trt_engine.infer(trt_in), ort_engine.infer(ort_in)
    matched = total = 0
    for i in range(4):
        ours = post(output=trt_out[i], letterbox=trt_boxes[i])
        reference = post(output=ort_out[i], letterbox=ort_boxes[i])
        total += len(reference)
        for ref in reference:
            matched += any(d.class_id == ref.class_id and _iou(d.bbox, ref.bbox) >= 0.9 for d in ours)
    assert total > 0 and matched / total >= 0.95, (matched, total)


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
