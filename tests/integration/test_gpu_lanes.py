"""Multi-GPU wiring on a machine without GPUs: one lane (engine, batcher, inference threads) per
GPU, cameras placed by `gpu:` or spread evenly, every camera's messages complete and in order.

FakeGpu stands in for an NVIDIA GPU, which cannot exist on this machine; each lane's engine is
ONNX Runtime on the CPU and frames are decoded with PyAV (gpu.decoder: pyav), so everything else
(the RTSP cameras, the daemon's Runtime, the broker) is real."""
import asyncio
import threading
import uuid
from collections import defaultdict

import pytest
import yaml

from pipeline.config import load_config
from pipeline.gpu import GPU_MODULES, GpuProbe
from pipeline.s4_infer.onnxruntime_backend import OnnxRuntimeEngine
from scripts.lab.broker import consume
from scripts.lab.common import REPO, free_port
from scripts.lab.daemons import daemon_config, http_get, metric_values

MODEL = REPO / "engines" / "shapes-yolov8n.onnx"


class FakeGpu:
    """Stands in for a GPU (none exists here): its index, and a memory that loading models leaves as it is."""

    def __init__(self, index, transfers):
        self.index, self.transfers = index, transfers

    def memory_info(self):
        return 80 << 30, 80 << 30

    def close(self):
        pass


def test_each_gpu_gets_its_own_lane_and_cameras_are_placed_on_them(tmp_path, rtsp_server, broker):
    from pipeline.app import Runtime

    topic, port = f"lanes-{uuid.uuid4().hex[:8]}", free_port()
    cameras = [("wide", rtsp_server.url("wide"), 5), ("classic", rtsp_server.url("classic"), 5),
               ("portrait", rtsp_server.url("portrait"), 5)]
    path = daemon_config(tmp_path / "lanes.yaml", {"path": MODEL, "backend": "tensorrt"}, broker.bootstrap,
                         cameras, topic=topic, status_topic=f"{topic}-status", metrics_port=port,
                         gpu={"decoder": "pyav"})
    data = yaml.safe_load(path.read_text())
    data["cameras"][2]["gpu"] = 0  # pinned; the others go to the least-loaded GPU in turn
    path.write_text(yaml.safe_dump(data))
    loaded = []

    def engine_loader(model, backend, gpu, max_batch, confidence=None):
        loaded.append((backend, gpu.index, threading.current_thread().name))
        return OnnxRuntimeEngine(model)

    runtime = Runtime(load_config(path), engine_loader=engine_loader,
                      gpu_probe=lambda: GpuProbe(2, {m: True for m in GPU_MODULES}), gpu_factory=FakeGpu)

    def enough(records):
        counts = defaultdict(int)
        for r in records:
            counts[r.key] += 1
        return len(counts) == 3 and min(counts.values()) >= 8

    async def main():  # the Runtime on this (main) thread, as the CLI runs it; the consumer beside
        task = asyncio.create_task(runtime.run())
        try:
            records = await asyncio.to_thread(consume, broker.bootstrap, [topic], enough, 90)
            text = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
            threads = sorted(t.name for t in threading.enumerate())
        finally:
            runtime.request_stop()
            await asyncio.wait_for(task, 30)
        return records, metric_values(text[1], "rtsp_pipeline_camera_gpu"), threads

    records, placed, threads = asyncio.run(main())
    assert sorted(index for _, index, _ in loaded) == [0, 1] and {b for b, _, _ in loaded} == {"tensorrt"}
    # portrait pinned to 0; wide -> 1 (empty); classic -> 0 (tie, lowest index)
    assert placed == {'{camera="wide"}': 1.0, '{camera="classic"}': 0.0, '{camera="portrait"}': 0.0}
    assert [n for n in threads if n.startswith("finish")] == ["finish-gpu0", "finish-gpu1"]  # a pipeline per GPU
    for cam in ("wide", "classic", "portrait"):
        seqs = [r.value["frame"]["seq"] for r in records if r.key == cam]
        assert seqs == list(range(len(seqs))) and len(seqs) >= 8


def test_a_cameras_models_run_on_the_gpu_it_is_decoded_on_one_lane_per_gpu_and_model(tmp_path, rtsp_server, broker):
    """Several models over two (stand-in) GPUs: a lane per (GPU, model) that has cameras, and a
    camera's models all on its own GPU, the one its frames are decoded to."""
    from pipeline.app import Runtime

    topic, port = f"gpumodels-{uuid.uuid4().hex[:8]}", free_port()
    cameras = [("wide", rtsp_server.url("wide"), 5, {"models": ["default", "int8"]}),
               ("classic", rtsp_server.url("classic"), 5), ("portrait", rtsp_server.url("portrait"), 5,
                                                             {"models": ["int8"], "gpu": 1})]
    int8 = {"path": str(MODEL.with_name("shapes-yolov8n.int8.onnx")), "backend": "tensorrt", "topic": f"{topic}-int8"}
    path = daemon_config(tmp_path / "gpumodels.yaml", {"path": MODEL, "backend": "tensorrt"}, broker.bootstrap,
                         cameras, topic=topic, status_topic=f"{topic}-status", metrics_port=port,
                         gpu={"decoder": "pyav"}, models={"int8": int8})
    loaded = []

    def engine_loader(model, backend, gpu, max_batch, confidence=None):
        loaded.append((gpu.index, model.path.name))
        return OnnxRuntimeEngine(model)

    runtime = Runtime(load_config(path), engine_loader=engine_loader,
                      gpu_probe=lambda: GpuProbe(2, {m: True for m in GPU_MODULES}), gpu_factory=FakeGpu)
    want = {("wide", "shapes-yolov8n"), ("wide", "int8"), ("classic", "shapes-yolov8n"), ("portrait", "int8")}

    def enough(records):
        counts = defaultdict(int)
        for r in records:
            counts[(r.key, r.value["model"]["name"])] += 1
        return set(counts) == want and min(counts.values()) >= 5

    async def main():
        task = asyncio.create_task(runtime.run())
        try:
            records = await asyncio.to_thread(consume, broker.bootstrap, [topic, f"{topic}-int8"], enough, 90)
            text = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
        finally:
            runtime.request_stop()
            await asyncio.wait_for(task, 30)
        return records, metric_values(text[1], "rtsp_pipeline_camera_gpu")

    records, placed = asyncio.run(main())
    assert sorted(loaded) == [(0, "shapes-yolov8n.int8.onnx"), (0, "shapes-yolov8n.onnx"), (1, "shapes-yolov8n.int8.onnx")]
    assert placed == {'{camera="wide"}': 0.0, '{camera="classic"}': 0.0, '{camera="portrait"}': 1.0}
    assert {(r.key, r.value["model"]["name"]) for r in records} == want


NO_VIDEO_LIBRARIES = ("NVDEC cannot work here: libnvcuvid.so.1, libnvidia-encode.so.1 not found; they come with the "
                      "full NVIDIA driver (not compute-only packages); in a container, set "
                      "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video")


def run_briefly(runtime, bootstrap, topic, cameras):
    async def main():
        task = asyncio.create_task(runtime.run())
        try:
            return await asyncio.to_thread(consume, bootstrap, [topic], lambda rs: len(rs) >= 2 * cameras, 60)
        finally:
            runtime.request_stop()
            await asyncio.wait_for(task, 30)
    return asyncio.run(main())


def test_a_gpu_node_without_nvdecs_libraries_says_so_once_and_decodes_on_the_cpu(tmp_path, rtsp_server, broker, caplog):
    """gpu.decoder auto on a GPU node whose driver lacks the video libraries (compute-only packages,
    a container without the `video` capability): one line at start, then the cameras run on PyAV
    (before, every camera looped on 'internal error: RuntimeError')."""
    from pipeline.app import Runtime

    topic = f"nonvdec-{uuid.uuid4().hex[:8]}"
    path = daemon_config(tmp_path / "nonvdec.yaml", {"path": MODEL, "backend": "stub"}, broker.bootstrap,
                         [("a", rtsp_server.url("classic"), 5), ("b", rtsp_server.url("wide"), 5)],
                         topic=topic, status_topic=f"{topic}-status", metrics_port=free_port(), gpu={"decoder": "auto"})
    runtime = Runtime(load_config(path), gpu_probe=lambda: GpuProbe(1, {m: True for m in GPU_MODULES}),
                      gpu_factory=FakeGpu, nvdec_check=lambda: NO_VIDEO_LIBRARIES)
    with caplog.at_level("INFO"):
        records = run_briefly(runtime, broker.bootstrap, topic, 2)
    assert {r.key for r in records} == {"a", "b"}  # both cameras stream, decoded on the CPU
    lines = [r for r in caplog.records if "NVDEC unusable" in r.getMessage()]
    assert len(lines) == 1 and lines[0].fields["why"] == NO_VIDEO_LIBRARIES
    assert "internal error" not in caplog.text


def test_gpu_decoder_nvdec_on_such_a_node_is_refused_at_start_naming_the_libraries(tmp_path, rtsp_server, broker):
    from pipeline.app import Runtime
    from pipeline.core import EngineError

    path = daemon_config(tmp_path / "nvdec.yaml", {"path": MODEL, "backend": "stub"}, broker.bootstrap,
                         [("a", rtsp_server.url("classic"), 5)], metrics_port=free_port(), gpu={"decoder": "nvdec"})
    runtime = Runtime(load_config(path), gpu_probe=lambda: GpuProbe(1, {m: True for m in GPU_MODULES}),
                      gpu_factory=FakeGpu, nvdec_check=lambda: NO_VIDEO_LIBRARIES)
    with pytest.raises(EngineError, match=r"libnvcuvid\.so\.1, libnvidia-encode\.so\.1 not found.*gpu\.decoder: pyav"):
        asyncio.run(runtime.run())
