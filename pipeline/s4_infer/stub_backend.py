"""The stub engine: everything but inference. Frames are decoded, sampled, batched and
preprocessed (on the GPU too: it waits for the preprocessing kernels), then an all-zero output
of the model's layout comes back, so postprocessing finds nothing and messages carry no
detections. It measures the pipeline's own ceiling (`model.backend: stub`)."""
from __future__ import annotations

import numpy as np

from pipeline.config import ModelConfig
from pipeline.s4_infer.engine import describe_onnx


class StubEngine:
    """Skips inference; output shape follows the model's with one candidate box per frame."""

    backend = "stub"
    concurrency = 1
    max_useful_batch = None

    def __init__(self, config: ModelConfig, gpu=None) -> None:
        self.info = describe_onnx(config)
        self._gpu = gpu

    def infer(self, batch) -> np.ndarray:
        """Wait until the batch is ready (GPU: its preprocessing event), return zeros."""
        if isinstance(batch, np.ndarray):
            n = batch.shape[0]
        else:  # a DeviceInput: the kernels must have finished, as before a real engine
            with self._gpu.current():
                batch.ready.synchronize()
            n = batch.shape[0]
        return np.zeros(stub_output_shape(self.info.output_shape, n), np.float32)

    def preprocessors(self, count: int, max_batch: int) -> list:
        """GPU preprocessors (FP32 input buffers of the largest input), when on a GPU."""
        from pipeline.s4_infer.gpu_preprocess import GpuPreprocessor

        size = self.info.input_spec.size
        return [GpuPreprocessor(self.info.input_spec, self._gpu, max_batch, (size, size), False)
                for _ in range(count)]

    def close(self) -> None:
        """Nothing to release."""


def stub_output_shape(model_shape: tuple, batch: int) -> tuple[int, ...]:
    """The model's output shape for `batch` frames, with its (symbolic or large) candidate
    dimension cut to 1: [B, 84, 8400] -> [n, 84, 1]; [B, 25200, 85] -> [n, 1, 85]."""
    dims = [batch]
    for dim in model_shape[1:]:
        dims.append(1 if not isinstance(dim, int) or dim > 1000 else dim)
    return tuple(dims)
