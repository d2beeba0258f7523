"""The engine interface every backend implements, and the model's description (what the pipeline
needs to know of a model, read from its file). No backend is imported here: pipeline.s4_infer.loader
imports the backends and picks one.

An engine only runs tensors: it takes a float32 NCHW batch in [0, 1] and returns the model's first
output. Decoding that output (YOLO layouts, NMS) is pipeline.s5_postprocess's job.
"""
from __future__ import annotations

import ast
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline.config import ModelConfig
from pipeline.core import EngineError, InputSpec, ModelRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline needs to know about a model, read from the file and its metadata."""

    name: str
    sha256: str
    input_spec: InputSpec
    output_shape: tuple  # symbolic dims are strings
    labels: tuple[str, ...]
    metadata: dict[str, str]

    def ref(self, backend: str) -> ModelRef:
        """How messages name this model."""
        return ModelRef(self.name, self.sha256, backend)


class Engine(Protocol):
    """A loaded model that runs batches."""

    info: ModelInfo
    backend: str
    concurrency: int  # how many infer() calls may usefully run at once
    max_useful_batch: int | None  # larger batches gain nothing on this engine (None: no limit)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run a [B, 3, H, W] float32 batch; return the first output. Thread-safe."""
        ...

    def close(self) -> None:
        """Release the model's resources."""
        ...


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_labels(metadata: dict[str, str], labels_file: Path | None, num_classes: int | None) -> tuple[str, ...]:
    """Class names from a labels file, else ultralytics' `names` metadata, else class_<i>."""
    if labels_file is not None:
        names = [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
        return tuple(names)
    raw = metadata.get("names")
    if raw:
        try:
            parsed = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            parsed = None
        if isinstance(parsed, dict):
            return tuple(str(parsed[k]) for k in sorted(parsed))
        if isinstance(parsed, (list, tuple)):
            return tuple(str(n) for n in parsed)
    return tuple(f"class_{i}" for i in range(num_classes or 0))


def input_spec_from_shape(shape: tuple, input_size: int, stride: int = 32) -> InputSpec:
    """InputSpec from an NCHW input shape whose dims are ints or symbolic names."""
    if len(shape) != 4 or shape[1] not in (3, "3"):
        raise EngineError(f"model input must be [batch, 3, height, width], got {list(shape)}")

    def fixed(dim) -> int | None:
        return dim if isinstance(dim, int) and dim > 0 else None

    return InputSpec(fixed(shape[0]), fixed(shape[2]), fixed(shape[3]), input_size, stride)


def guess_num_classes(shape: tuple) -> int | None:
    """nc from a YOLOv8-style [B, 4+nc, N] output when the middle dim is fixed and small."""
    if len(shape) == 3 and isinstance(shape[1], int) and 4 < shape[1] < 1000:
        return shape[1] - 4
    return None


def model_info(config: ModelConfig, input_shape: tuple, output_shape: tuple, metadata: dict[str, str],
               sha256: str | None = None) -> ModelInfo:
    """ModelInfo of the configured model from its I/O shapes and metadata."""
    spec = input_spec_from_shape(input_shape, input_size(config, metadata), int(metadata.get("stride", 32)))
    labels = parse_labels(metadata, config.labels, guess_num_classes(output_shape))
    return ModelInfo(config.path.stem, sha256 or file_sha256(config.path), spec, output_shape, labels, metadata)


def input_size(config: ModelConfig, metadata: dict[str, str]) -> int:
    """The long side of a dynamic model's input: `input_size` where the config sets it, else the
    size the model was exported at (ultralytics writes `imgsz`, e.g. "[320, 320]"), else 640."""
    if "input_size" in config.model_fields_set:
        return config.input_size
    try:
        exported = ast.literal_eval(metadata.get("imgsz", "None"))
    except (ValueError, SyntaxError):
        exported = None
    if isinstance(exported, int):
        exported = [exported]
    if isinstance(exported, (list, tuple)) and exported and all(isinstance(v, int) and v > 0 for v in exported):
        side = max(exported)
        if side % 32 == 0 and 64 <= side <= 2048:
            return side
    return config.input_size


def describe_onnx(config: ModelConfig) -> ModelInfo:
    """ModelInfo of the configured ONNX file, read with ONNX Runtime (for backends whose own
    artifact lacks the metadata: TensorRT plans, the stub)."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(config.path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for bad files
        raise EngineError(f"cannot load model {config.path}: {exc}") from None
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    return model_info(config, tuple(session.get_inputs()[0].shape), tuple(session.get_outputs()[0].shape),
                      metadata)
