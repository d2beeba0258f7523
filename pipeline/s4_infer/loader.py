"""Backend selection: the one module that imports every backend (each backend imports only the
interface in pipeline.s4_infer.engine). TensorRT itself, pycuda and PyNvVideoCodec stay lazy inside
the TensorRT backend: importing this module needs none of them."""
from __future__ import annotations

from pipeline.config import ModelConfig
from pipeline.gpu import Gpu, choose_path, probe
from pipeline.s4_infer.engine import Engine
from pipeline.s4_infer.onnxruntime_backend import OnnxRuntimeEngine
from pipeline.s4_infer.stub_backend import StubEngine
from pipeline.s4_infer.tensorrt_backend import TensorRTEngine


def load_engine(config: ModelConfig, backend: str | None = None, gpu=None, max_batch: int = 8,
                confidence: float | None = None) -> Engine:
    """Load the model with `backend` (default: the configured one; "auto" resolves to TensorRT
    when the GPU path is usable here, else ONNX Runtime). `gpu` (a pipeline.gpu.Gpu) is the GPU
    the engine runs on; `max_batch` sizes TensorRT's profile and input buffers; `confidence`: the
    least score downstream asks for, kept by an NMS in the engine (model.nms)."""
    backend = backend or config.backend
    if backend in ("auto", "tensorrt") and gpu is None:
        backend = choose_path(backend, "pyav", probe()).backend  # EngineError: what is missing
    if backend == "tensorrt":
        return TensorRTEngine(config, gpu or Gpu(0), max_batch, confidence)
    if backend == "stub":
        return StubEngine(config, gpu)
    return OnnxRuntimeEngine(config, confidence)
