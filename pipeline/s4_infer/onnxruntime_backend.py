"""ONNX Runtime backend (CPU): one session, several runs in parallel; runs release the GIL.

Several single-threaded runs at once beat one run on several threads on a busy CPU: measured on
2 vCPU, 2 parallel 1-thread runs gave 34-37 img/s against 27-28 for one 2-thread run, and the
gap widens while camera threads decode (a descheduled worker stalls a whole parallel op).
"""
from __future__ import annotations

import logging
import os

import numpy as np
import onnxruntime as ort

from pipeline.config import ModelConfig
from pipeline.core import EngineError
from pipeline.logs import log_event
from pipeline.s4_infer import nms_graph
from pipeline.s4_infer.engine import model_info

log = logging.getLogger(__name__)


class OnnxRuntimeEngine:
    """A YOLO ONNX model on ONNX Runtime's CPU execution provider."""

    backend = "onnxruntime"

    def __init__(self, config: ModelConfig, confidence: float | None = None) -> None:
        """`confidence`: the least score anything downstream asks for (the tracker's weak boxes
        included): an NMS in the engine keeps boxes from there up (default model.confidence)."""
        options = ort.SessionOptions()
        threads = config.onnxruntime.threads
        options.intra_op_num_threads = threads
        self.concurrency = config.onnxruntime.parallel_runs or max(1, (os.cpu_count() or 1) // threads)
        # batches do not raise CPU throughput; with parallel runs, one frame per run keeps all busy
        self.max_useful_batch = 1 if self.concurrency > 1 else None
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if config.onnxruntime.spinning else "0"
        )
        try:
            self._session = ort.InferenceSession(
                str(config.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise EngineError(f"cannot load model {config.path}: {exc}") from None
        inp = self._session.get_inputs()[0]
        out = self._session.get_outputs()[0]
        self._input_name = inp.name
        metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self.info = model_info(config, tuple(inp.shape), tuple(out.shape), metadata)
        self._feeds: dict[str, np.ndarray] = {}
        self.nms_floor: float | None = None  # NMS in the engine: the least score it keeps
        if nms_graph.in_engine(config, self.backend, tuple(out.shape), metadata):
            floor = config.confidence if confidence is None else confidence
            model = nms_graph.with_nms(config.path.read_bytes(), confidence=floor, iou=config.iou,
                                       max_detections=config.max_detections)
            try:
                self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # ORT raises its own exception types
                raise EngineError(f"cannot load model {config.path} with NMS appended: {exc}; "
                                  "set model.nms: host") from None
            self._feeds = nms_graph.thresholds(floor, config.iou, config.max_detections, nms_graph.ROWS)
            self.info, self.nms_floor = nms_graph.end2end_info(self.info), floor
            out = self._session.get_outputs()[0]
        self._output_name = out.name
        log_event(log, logging.INFO, "model loaded", backend=self.backend, model=self.info.name,
                  input=list(inp.shape), output=list(out.shape), classes=len(self.info.labels),
                  threads=threads, parallel_runs=self.concurrency, nms="engine" if self._feeds else "host")

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run a [B, 3, H, W] float32 batch; return the first output."""
        return self._session.run([self._output_name], {self._input_name: batch, **self._feeds})[0]

    def close(self) -> None:
        """Drop the session."""
        self._session = None

