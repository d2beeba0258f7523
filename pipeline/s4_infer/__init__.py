"""Infer: preprocess frames into the engine's input buffer and run the model on a batch.

engine (the interface and the model's description) <- the backends (onnxruntime_backend,
tensorrt_backend, stub_backend) <- loader (picks one); preprocess and gpu_preprocess letterbox the
pictures into the input buffer; engine_cache keeps built TensorRT plans."""
from pipeline.s4_infer.engine import Engine, ModelInfo

__all__ = ["Engine", "ModelInfo"]
