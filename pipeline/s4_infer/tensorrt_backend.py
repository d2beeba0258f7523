"""TensorRT backend (GPU): a serialized plan from the engine cache, run with named I/O tensors.

Per batch: `set_input_shape` (dynamic batch and H/W within the plan's optimization profile),
`set_tensor_address` for the input (the preprocessor's device buffer: the input is
double-buffered, so batch n + 1 is letterboxed while batch n runs) and the outputs,
`execute_async_v3` on this engine's stream after waiting (on the GPU) for the preprocessing
event, then the only device->host copy of the path: the outputs, into pinned memory. The outputs
are decoded by the same postprocess functions as the CPU path.

Works with TensorRT 10 and 11: only the runtime API both share is used here; the builder
differences are in engine_cache.build_plan.
"""
from __future__ import annotations

import logging

import numpy as np

from pipeline.config import ModelConfig
from pipeline.core import EngineError
from pipeline.gpu import Gpu
from pipeline.logs import log_event
from pipeline.s4_infer import engine_cache, nms_graph
from pipeline.s4_infer.engine import describe_onnx, file_sha256, model_info
from pipeline.s4_infer.gpu_preprocess import DeviceInput, GpuPreprocessor

log = logging.getLogger(__name__)


class TensorRTEngine:
    """One plan, one execution context and one stream on one GPU."""

    backend = "tensorrt"
    concurrency = 1  # one execution context per GPU; batches do the parallel work
    max_useful_batch = None

    def __init__(self, config: ModelConfig, gpu: Gpu, max_batch: int, confidence: float | None = None) -> None:
        import tensorrt as trt  # lazy: only where TensorRT is installed

        self._trt, self._gpu, self._config = trt, gpu, config
        self.max_batch = max_batch
        self._staging, self._staging_bytes = None, 0  # input from CPU preprocessing (pyav decoder)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # kept: it must outlive its engines
        self._onnx = describe_onnx(config)  # labels and metadata live in the ONNX file
        self._nms = engine_cache.nms_thresholds(config, confidence, self._onnx)  # model.nms: written into the plan
        self.nms_floor = self._nms["confidence"] if self._nms else None
        with gpu.current():
            self._engine = engine_cache.load(config, gpu, max_batch, self._deserialize, confidence)
            self._context = self._engine.create_execution_context()
        self._bind(file_sha256(config.path))

    def _deserialize(self, plan: bytes):
        """The engine, or None when TensorRT refuses the plan (it may raise instead: same answer)."""
        try:
            return self._runtime.deserialize_cuda_engine(plan)
        except Exception as exc:  # noqa: BLE001 - a damaged plan is rebuilt, whatever TensorRT raises
            log_event(log, logging.WARNING, "TensorRT refused a plan", error=repr(exc))
            return None

    def _bind(self, sha: str) -> None:
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not self._outputs:
            raise EngineError(f"expected one input and at least one output, got {names}")
        self._input = inputs[0]
        self.input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self._input)))
        _, _, max_shape = engine.get_tensor_profile_shape(self._input, 0)
        self.max_input_hw = (int(max_shape[2]), int(max_shape[3]))
        out_shape = tuple(engine.get_tensor_shape(self._outputs[0]))
        self._stream = self._gpu.stream()
        self._out_dtype = [np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in self._outputs]
        self._out_device, self._out_host = [], []
        with self._gpu.current():
            self._context.set_input_shape(self._input, tuple(max_shape))
            for name, dtype in zip(self._outputs, self._out_dtype):
                shape = tuple(self._context.get_tensor_shape(name))
                self._out_device.append(self._gpu.alloc(int(np.prod(shape)) * dtype.itemsize))
                self._out_host.append(self._gpu.pinned(int(np.prod(shape)), dtype))  # PinnedMemory
        onnx = self._onnx  # the ONNX file's labels and metadata (the plan has none)
        if self._nms:  # [batch, 300, 6]; labels as the raw head's classes
            raw = model_info(self._config, ("batch", 3, "height", "width"), onnx.output_shape, onnx.metadata, sha)
            self.info = nms_graph.end2end_info(raw)
            return
        symbolic = tuple(d if d >= 0 else f"d{i}" for i, d in enumerate(out_shape))
        self.info = model_info(self._config, ("batch", 3, "height", "width"), symbolic, onnx.metadata, sha)

    def preprocessors(self, count: int, max_batch: int) -> list[GpuPreprocessor]:
        """`count` preprocessors, each owning a device input buffer of the plan's largest shape."""
        fp16 = self.input_dtype == np.float16
        batch = min(max_batch, self.max_batch)
        return [GpuPreprocessor(self.info.input_spec, self._gpu, batch, self.max_input_hw, fp16)
                for _ in range(count)]

    def infer(self, batch: DeviceInput | np.ndarray) -> np.ndarray:
        """Run a prepared device batch (or a host array from CPU preprocessing); return output 0."""
        with self._gpu.current():
            if isinstance(batch, np.ndarray):
                batch = self._upload(batch)
            else:
                self._stream.wait_for_event(batch.ready)
            ctx = self._context
            if not ctx.set_input_shape(self._input, batch.shape):
                raise EngineError(f"batch shape {tuple(batch.shape)} is outside the engine's profile (up to "
                                  f"{self.max_batch} x 3 x {self.max_input_hw[0]} x {self.max_input_hw[1]})")
            ctx.set_tensor_address(self._input, batch.ptr)
            for name, buf in zip(self._outputs, self._out_device):
                ctx.set_tensor_address(name, buf.ptr)
            if not ctx.execute_async_v3(self._stream.handle):
                raise EngineError("TensorRT execute_async_v3 failed")
            shape = tuple(ctx.get_tensor_shape(self._outputs[0]))
            count = int(np.prod(shape))
            host = self._out_host[0].array[:count]
            self._gpu.copy_d2h(host, self._out_device[0].ptr, host.nbytes, self._stream)
            self._stream.synchronize()
        return host.reshape(shape).astype(np.float32)  # a copy: the pinned buffer is reused

    def _upload(self, array: np.ndarray) -> DeviceInput:
        """Host batch -> this engine's staging input (for PyAV decode with TensorRT)."""
        array = np.ascontiguousarray(array, dtype=self.input_dtype)
        if self._staging_bytes < array.nbytes:
            if self._staging is not None:
                self._staging.close()
            self._staging = self._gpu.alloc(array.nbytes)
            self._staging_bytes = array.nbytes
        self._gpu.copy_h2d(self._staging.ptr, array)
        return DeviceInput(self._staging.ptr, tuple(array.shape), None)

    def close(self) -> None:
        """Free our buffers and stream, then TensorRT's context and engine, inside the context."""
        for obj in (*self._out_device, *self._out_host, self._staging, self._stream):
            if obj is not None:
                obj.close()
        self._out_device, self._out_host, self._staging = [], [], None
        with self._gpu.current():
            self._context = None
            self._engine = None

