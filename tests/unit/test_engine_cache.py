"""The TensorRT engine cache is state a start reads back: whatever an earlier run, another
machine or a full disk left in it, a start uses a good plan, or rebuilds, and never fails on it.

TensorRT's builder cannot be installed here and needs a GPU: `StandInBuilder` stands in for it
(named as such) and produces plan bytes; a stand-in `tensorrt` module gives the version. The
cache's own logic (keys, checksums, rebuilds, errors) runs for real on the filesystem."""
import contextlib
import json
import logging
import os
import sys
import time
import types

import pytest

from pipeline.config import ModelConfig
from pipeline.core import EngineError
from pipeline.s4_infer import engine_cache
from scripts.lab.common import REPO

MODEL = REPO / "engines" / "shapes-yolov8n.onnx"


class StandInGpu:
    """Stands in for an NVIDIA GPU (none here): only its name and compute capability are read."""

    name, compute_capability = "NVIDIA H100 80GB HBM3", (9, 0)

    @contextlib.contextmanager
    def current(self):
        yield


class StandInBuilder:
    """Stands in for TensorRT's builder: a 'plan' of recognisable bytes; counts its builds."""

    def __init__(self):
        self.builds = 0
        self.nms = []  # the NMS thresholds each build was asked to write into its plan

    def __call__(self, onnx_path, key, workspace_mb, nms=None):
        self.builds += 1
        self.nms.append(nms)
        return b"PLAN" + key.digest().encode() * 200


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.13.0"))
    builder = StandInBuilder()
    monkeypatch.setattr(engine_cache, "build_plan", builder)
    model = ModelConfig(path=MODEL, backend="tensorrt", tensorrt={"engine_cache": tmp_path / "engines"})
    return model, builder


def deserialize_good(plan: bytes):
    """What TensorRT's deserialize does, as far as the cache can tell: None for bytes it refuses."""
    return {"engine": len(plan)} if plan.startswith(b"PLAN") else None


def test_a_second_start_reuses_the_plan_the_first_built(cache):
    model, builder = cache
    first = engine_cache.plan_for(model, StandInGpu(), 8)
    again = engine_cache.plan_for(model, StandInGpu(), 8)
    assert first == again and builder.builds == 1
    assert json.loads(first.with_suffix(".json").read_text())["plan_bytes"] == first.stat().st_size


@pytest.mark.parametrize("damage", ["truncated", "flipped", "no key file", "foreign key file", "empty"])
def test_a_damaged_or_foreign_plan_is_rebuilt_not_a_failed_start(cache, damage, caplog):
    model, builder = cache
    path = engine_cache.plan_for(model, StandInGpu(), 8)
    data = path.read_bytes()
    if damage == "truncated":  # a full disk or a crash cut it short
        path.write_bytes(data[: len(data) // 3])
    elif damage == "flipped":
        path.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    elif damage == "no key file":
        path.with_suffix(".json").unlink()
    elif damage == "foreign key file":  # copied from a node with another GPU
        key = json.loads(path.with_suffix(".json").read_text())
        path.with_suffix(".json").write_text(json.dumps({**key, "gpu_name": "NVIDIA L4"}))
    else:
        path.write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        engine = engine_cache.load(model, StandInGpu(), 8, deserialize_good)
    assert engine == {"engine": len(data)} and builder.builds == 2
    assert "cached TensorRT engine unusable; rebuilding it" in caplog.text
    engine_cache.load(model, StandInGpu(), 8, deserialize_good)  # and the next start uses the rebuilt one
    assert builder.builds == 2


def test_a_plan_tensorrt_refuses_is_rebuilt_once_then_the_start_fails_naming_it(cache):
    model, builder = cache
    calls = []

    def refuse_the_first(plan):
        calls.append(plan)
        return None if len(calls) == 1 else deserialize_good(plan)
    engine = engine_cache.load(model, StandInGpu(), 8, refuse_the_first)
    assert engine is not None and builder.builds == 2  # e.g. a TensorRT upgrade with the same version string
    with pytest.raises(EngineError, match=r"TensorRT could not load .*\.plan; rebuild it with .*build-engine --force"):
        engine_cache.load(model, StandInGpu(), 8, lambda plan: None)
    assert builder.builds == 3  # one rebuild, not a loop


def test_without_building_at_start_an_unusable_plan_is_an_error_naming_the_file_and_the_fix(cache):
    model, builder = cache
    path = engine_cache.plan_for(model, StandInGpu(), 8)
    path.write_bytes(path.read_bytes()[:10])
    strict = model.model_copy(update={"tensorrt": model.tensorrt.model_copy(update={"build_if_missing": False})})
    with pytest.raises(EngineError) as error:
        engine_cache.load(strict, StandInGpu(), 8, deserialize_good)
    assert str(path) in str(error.value) and "cut short or damaged" in str(error.value)
    assert "build-engine --force" in str(error.value) and builder.builds == 1


def test_a_key_file_from_a_release_without_checksums_is_trusted_on_its_key(cache):
    model, builder = cache
    path = engine_cache.plan_for(model, StandInGpu(), 8)
    key = json.loads(path.with_suffix(".json").read_text())
    del key["plan_bytes"], key["plan_sha256"]
    path.with_suffix(".json").write_text(json.dumps(key))
    assert engine_cache.load(model, StandInGpu(), 8, deserialize_good) is not None and builder.builds == 1


def test_half_written_files_of_a_crashed_build_are_removed_and_a_fresh_one_kept(cache):
    model, _ = cache
    folder = model.tensorrt.engine_cache
    folder.mkdir(parents=True)
    stale, fresh = folder / "shapes.plan123.tmp", folder / "shapes.plan456.tmp"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"being written by another build right now")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    engine_cache.plan_for(model, StandInGpu(), 8)
    assert not stale.exists() and fresh.exists()


def test_the_int8_model_made_for_onnx_runtime_is_refused_for_tensorrt_before_any_build(cache):
    model, builder = cache
    int8 = model.model_copy(update={"path": REPO / "engines" / "shapes-yolov8n.int8.onnx"})
    with pytest.raises(EngineError, match=r"quantized for ONNX Runtime .*U8S8.*symmetric INT8 Q/DQ only.*float model"):
        engine_cache.plan_for(int8, StandInGpu(), 8)
    assert builder.builds == 0


def test_a_plan_has_nms_in_the_engine_with_the_thresholds_it_was_built_for(cache):
    """model.nms auto with TensorRT: NMS goes into the plan, keeping boxes from the least score
    asked for (the tracker's weak boxes); other thresholds are another plan, host NMS yet another."""
    model, builder = cache
    gpu = StandInGpu()
    first = engine_cache.plan_for(model, gpu, 8, confidence=0.1)
    assert builder.nms == [{"confidence": 0.1, "iou": 0.45, "max_detections": 300}]
    assert engine_cache.plan_for(model, gpu, 8, confidence=0.1) == first and builder.builds == 1
    other = engine_cache.plan_for(model.model_copy(update={"iou": 0.6}), gpu, 8, confidence=0.1)
    host = engine_cache.plan_for(model.model_copy(update={"nms": "host"}), gpu, 8, confidence=0.1)
    assert len({first, other, host}) == 3 and builder.nms[1]["iou"] == 0.6 and builder.nms[2] is None
