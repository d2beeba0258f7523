"""TensorRT engines: built from the ONNX model per GPU model and TensorRT version, kept in a cache.

A plan only runs on the GPU model and TensorRT version it was built with, so engines are never
committed: `rtsp-pipeline build-engine` (or the daemon's first start) builds one into the cache,
under a key of everything that changes the plan. A changed model, GPU, TensorRT version,
precision, batch or input size gives a new key, hence a rebuild; anything else reuses the plan.

A start reads the cache back, so nothing in it may fail a start: a plan is used only when the
key file beside it matches and its checksum does (a plan cut short by a full disk or a crash, or
copied from another machine, is rebuilt), and a plan TensorRT still refuses is rebuilt once.
Only with `build_if_missing: false` is a missing or unusable plan an error, naming the file and
`build-engine --force`. Half-written files of a crashed build are removed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.core import EngineError
from pipeline.logs import log_event
from pipeline.s4_infer import nms_graph
from pipeline.s4_infer.engine import describe_onnx, file_sha256, input_size

log = logging.getLogger(__name__)
CACHE_FORMAT = 1  # bump when the build recipe below changes what a plan contains
_STALE_TMP_S = 600  # a .tmp file this old in the cache is left by a crashed build (stores take seconds)


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized TensorRT plan depends on."""

    model_sha256: str
    gpu_name: str
    compute_capability: str  # "9.0"
    tensorrt_version: str
    precision: str  # "fp16" or "fp32"
    max_batch: int
    input_size: int  # long side; the profile allows any stride multiple up to it
    cache_format: int = CACHE_FORMAT
    nms: str = ""  # NMS in the engine: its thresholds (written into the plan); "": none

    def digest(self) -> str:
        """A stable hex digest of the key's fields."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def default_cache_dir(environ: dict[str, str] | None = None) -> Path:
    """$RTSP_PIPELINE_ENGINE_CACHE, else $XDG_CACHE_HOME/rtsp-pipeline/engines, else ~/.cache/..."""
    env = os.environ if environ is None else environ
    if env.get("RTSP_PIPELINE_ENGINE_CACHE"):
        return Path(env["RTSP_PIPELINE_ENGINE_CACHE"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "rtsp-pipeline" / "engines"


def engine_path(cache_dir: Path, model_name: str, key: EngineKey) -> Path:
    """Where the plan for `key` lives (its key is written beside it as JSON)."""
    gpu = "".join(c if c.isalnum() else "-" for c in key.gpu_name).strip("-").lower()
    return Path(cache_dir) / f"{model_name}.{gpu}.trt{key.tensorrt_version}.{key.precision}.{key.digest()[:16]}.plan"


def store(path: Path, plan: bytes, key: EngineKey) -> None:
    """Write a plan and its key file, each atomically (a crash never leaves half a file under its
    final name); the key file, written last, carries the plan's size and checksum."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, plan)
    sidecar = {**asdict(key), "plan_bytes": len(plan), "plan_sha256": hashlib.sha256(plan).hexdigest()}
    _write_atomically(path.with_suffix(".json"), json.dumps(sidecar, indent=2, sort_keys=True).encode())


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def unusable(path: Path, key: EngineKey) -> str | None:
    """Why the cached plan at `path` must not be used for `key` (None: use it). Key files of
    releases that wrote no checksum are trusted on their key; TensorRT's load still checks."""
    if not path.exists():
        return "missing"
    try:
        saved = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError) as exc:
        return f"its key file {path.with_suffix('.json').name} is missing or damaged ({exc.__class__.__name__})"
    if not isinstance(saved, dict) or {k: saved.get(k) for k in asdict(key)} != asdict(key):
        return "its key file names another model, GPU, TensorRT version or setting"
    if "plan_sha256" not in saved:
        return None
    data = path.read_bytes()
    if len(data) != saved.get("plan_bytes") or hashlib.sha256(data).hexdigest() != saved["plan_sha256"]:
        return f"it is cut short or damaged ({len(data)} bytes, checksum differs from its key file)"
    return None


def remove_stale_temporaries(cache_dir: Path) -> None:
    """Delete half-written files that a crashed build or store left in the cache."""
    now = time.time()
    for tmp in Path(cache_dir).glob("*.tmp"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                tmp.unlink()
        except OSError:
            pass


def nms_thresholds(model, confidence: float | None, info=None) -> dict | None:
    """The thresholds an NMS in the engine is built with (model.nms), or None for raw heads
    (`info`: the ONNX file's ModelInfo, when the caller has it already)."""
    info = info or describe_onnx(model)
    if not nms_graph.in_engine(model, "tensorrt", info.output_shape, info.metadata):
        return None
    floor = model.confidence if confidence is None else confidence
    return {"confidence": floor, "iou": model.iou, "max_detections": min(model.max_detections, nms_graph.ROWS)}


def plan_for(model, gpu, max_batch: int, build: bool = True, force: bool = False,
             confidence: float | None = None) -> Path:
    """The cached plan of `model` (a ModelConfig) for `gpu` (a pipeline.gpu.Gpu), built first when
    missing or unusable (or when `force`); EngineError then when `build` is False. `confidence`:
    the least score an NMS in the engine keeps (default model.confidence)."""
    import tensorrt as trt  # lazy: only where TensorRT is installed

    info = describe_onnx(model)  # one read of the ONNX file for both
    refuse_models_tensorrt_cannot_build(model, info)
    nms = nms_thresholds(model, confidence, info)
    key = EngineKey(file_sha256(model.path), gpu.name, "%d.%d" % gpu.compute_capability, trt.__version__,
                    model.tensorrt.precision, max_batch, input_size(model, info.metadata),
                    nms=json.dumps(nms, sort_keys=True) if nms else "")
    cache_dir = model.tensorrt.engine_cache or default_cache_dir()
    path = engine_path(cache_dir, model.path.stem, key)
    remove_stale_temporaries(cache_dir)
    why = "rebuild asked for" if force else unusable(path, key)
    if why is None:
        return path
    if not build:
        raise EngineError(
            f"no usable TensorRT engine for this model, GPU ({key.gpu_name}) and TensorRT {key.tensorrt_version}: "
            f"{path} is {why}; build it with `rtsp-pipeline build-engine --force --config <your config>`"
        )
    if why not in ("missing", "rebuild asked for"):
        log_event(log, logging.WARNING, "cached TensorRT engine unusable; rebuilding it", plan=str(path), why=why)
    with gpu.current():
        store(path, build_plan(model.path, key, model.tensorrt.workspace_mb, nms=nms), key)
    return path


def refuse_models_tensorrt_cannot_build(model, info=None) -> None:
    """An ONNX file quantized for ONNX Runtime with asymmetric UINT8 activations (ours:
    scripts/model/quantize_int8.py, U8S8) is refused up front: TensorRT takes symmetric INT8 Q/DQ only."""
    quantized = (info or describe_onnx(model)).metadata.get("quantization", "")
    if "U8" in quantized:
        raise EngineError(f"{model.path.name} is quantized for ONNX Runtime ({quantized}): TensorRT takes symmetric "
                          "INT8 Q/DQ only; with model.backend tensorrt use the float model (e.g. "
                          "engines/shapes-yolov8n.onnx, built as FP16)")


def load(model, gpu, max_batch: int, deserialize, confidence: float | None = None):
    """The deserialized engine of the cached plan (`deserialize`: plan bytes -> engine, or None
    when TensorRT refuses them). A plan TensorRT refuses is rebuilt once when building is allowed."""
    build = model.tensorrt.build_if_missing
    path = plan_for(model, gpu, max_batch, build=build, confidence=confidence)
    engine = deserialize(path.read_bytes())
    if engine is None and build:
        log_event(log, logging.WARNING, "TensorRT refused the cached engine; rebuilding it", plan=str(path))
        path = plan_for(model, gpu, max_batch, build=True, force=True, confidence=confidence)
        engine = deserialize(path.read_bytes())
    if engine is None:
        raise EngineError(f"TensorRT could not load {path}; rebuild it with "
                          "`rtsp-pipeline build-engine --force --config <your config>`")
    log_event(log, logging.INFO, "TensorRT engine loaded", plan=str(path), gpu=gpu.name)
    return engine


def build_plan(onnx_path: Path, key: EngineKey, workspace_mb: int = 2048, progress: bool = True,
               nms: dict | None = None) -> bytes:
    """ONNX -> serialized TensorRT plan with a dynamic-batch (and H/W) profile; with `nms`
    (nms_thresholds), NMS appended to the model with those thresholds written in
    (pipeline.s4_infer.nms_graph: TensorRT's parser maps it to its NMS layer).

    TensorRT 10 (JetPack): FP16 through the builder flag. TensorRT 11 removed that flag (networks
    are strongly typed), so FP16 there means converting the ONNX weights to FP16 first (ONNX
    Runtime's converter, float32 I/O kept; NVIDIA suggests ModelOpt AutoCast, which is not a
    dependency here)."""
    import tensorrt as trt  # lazy: only where TensorRT is installed

    major = int(trt.__version__.split(".")[0])
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = major >= 11  # 11 removed the precision flags; the creation flag is then ignored
    typed_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = 1 << int(typed_flag) if strongly_typed and typed_flag is not None else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    model_bytes = Path(onnx_path).read_bytes()
    if strongly_typed and key.precision == "fp16":
        model_bytes = _fp16_onnx(model_bytes)  # float32 I/O kept: the NMS below stays float32
    if nms:
        model_bytes = nms_graph.with_nms(model_bytes, constant=True, **nms)
    if not parser.parse(model_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if key.precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    inp = network.get_input(0)
    profile = builder.create_optimization_profile()
    size = key.input_size
    profile.set_shape(inp.name, (1, 3, 32, 32), (max(1, key.max_batch // 2), 3, size, size),
                      (key.max_batch, 3, size, size))
    config.add_optimization_profile(profile)
    if progress and hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _progress_monitor(trt)
    started = time.monotonic()
    log_event(log, logging.INFO, "building TensorRT engine (minutes, once per GPU model and version)",
              model=str(onnx_path), precision=key.precision, max_batch=key.max_batch, input_size=size)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    log_event(log, logging.INFO, "TensorRT engine built", seconds=round(time.monotonic() - started, 1))
    return bytes(plan)


def _fp16_onnx(model_bytes: bytes) -> bytes:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load_from_string(model_bytes), keep_io_types=True)
    return model.SerializeToString()


def _progress_monitor(trt):
    """A TensorRT progress monitor that logs each phase's progress at most every 2 s."""

    class Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._last = 0.0

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:
            log_event(log, logging.INFO, "engine build phase", phase=phase_name, steps=num_steps)

        def step_complete(self, phase_name, step) -> bool:
            now = time.monotonic()
            if now - self._last >= 2:
                self._last = now
                log_event(log, logging.INFO, "engine build progress", phase=phase_name, step=step)
            return True  # keep building

        def phase_finish(self, phase_name) -> None:
            pass

    return Progress()
