"""Backend selection: the CPU path runs without any GPU module; TensorRT without a GPU is refused clearly."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ModelConfig
from pipeline.core import EngineError
from pipeline.s4_infer.loader import load_engine

MODEL = Path(__file__).resolve().parents[2] / "engines" / "yolov8n.onnx"
GPU_MODULES = ("PyNvVideoCodec", "pycuda", "tensorrt")


def test_auto_backend_runs_the_model_on_the_cpu_without_importing_gpu_modules():
    code = f"""
import sys, numpy as np
from pipeline.config import ModelConfig
from pipeline.s4_infer.loader import load_engine
engine = load_engine(ModelConfig(path={str(MODEL)!r}))
out = engine.infer(np.zeros((1, 3, 384, 640), np.float32))
loaded = [m for m in {GPU_MODULES!r} if m in sys.modules]
print(engine.backend, out.shape, loaded)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "onnxruntime (1, 84, 5040) []"


def test_model_metadata_gives_input_rules_and_labels():
    engine = load_engine(ModelConfig(path=MODEL))
    info = engine.info
    assert info.input_spec.dynamic_hw and info.input_spec.batch is None
    assert len(info.labels) == 80 and info.labels[0] == "class_0"
    assert len(info.sha256) == 64
    batch = engine.infer(np.zeros((2, 3, 640, 384), np.float32))
    assert batch.shape == (2, 84, 5040)


def test_tensorrt_backend_without_a_gpu_is_refused_saying_what_is_missing():
    with pytest.raises(EngineError, match=r"needs an NVIDIA GPU .* this machine has 0 GPU\(s\) \(no NVIDIA driver library.*\) and lacks pycuda"):
        load_engine(ModelConfig(path=MODEL, backend="tensorrt"))


def test_a_file_that_is_not_a_model_gives_an_engine_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(EngineError, match="cannot load model"):
        load_engine(ModelConfig(path=bad))


def test_labels_file_overrides_model_metadata(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("person\ncar\n\ndog\n")
    engine = load_engine(ModelConfig(path=MODEL, labels=labels))
    assert engine.info.labels == ("person", "car", "dog")


def test_a_model_runs_at_the_size_it_was_exported_at_unless_the_config_says_otherwise():
    shapes = MODEL.with_name("shapes-yolov8n.int8.onnx")  # exported at 320 (its `imgsz` metadata)
    assert load_engine(ModelConfig(path=shapes)).info.input_spec.size == 320
    assert load_engine(ModelConfig(path=MODEL)).info.input_spec.size == 640  # exported at 640
    assert load_engine(ModelConfig(path=shapes, input_size=480)).info.input_spec.size == 480  # set: the config's
