"""The GPU path's pieces that can be checked without a GPU: the preprocessing kernel's numpy
reference (known colours, FFmpeg's own conversion, letterbox geometry), that the shipped kernel
fatbin is current, path selection, camera placement, engine-cache keys, the stub engine's output, and that
no module of the package imports an NVIDIA module at import time."""
import json
import os
import shutil
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.core import ColorSpec, EngineError, Letterbox
from pipeline.gpu import (
    GPU_MODULES, GpuProbe, TransferCounter, choose_path, cuda_device_count, nvdec_problem, assign_gpus, probe,
)
from pipeline.s4_infer import engine_cache
from pipeline.s4_infer.gpu_preprocess import KERNEL_FATBIN, KERNEL_SOURCE, PAD_VALUE, letterbox_nv12_reference
from pipeline.s4_infer.stub_backend import stub_output_shape
from scripts.lab.scenes import Scene


def uniform_nv12(w, h, y, u, v):
    return np.full((h, w), y, np.uint8), np.dstack([np.full((h // 2, w // 2), u, np.uint8),
                                                    np.full((h // 2, w // 2), v, np.uint8)])


def convert(luma, chroma, color, out_hw=None, lb=None):
    h, w = luma.shape
    lb = lb or Letterbox(1.0, 0, 0, w, h)
    out = np.empty((3, *(out_hw or (h, w))), np.float32)
    letterbox_nv12_reference(luma, chroma, color, lb, out)
    return out


@pytest.mark.parametrize("color, yuv, rgb", [
    (ColorSpec("bt601"), (16, 128, 128), (0, 0, 0)),          # limited-range black
    (ColorSpec("bt601"), (235, 128, 128), (1, 1, 1)),         # limited-range white
    (ColorSpec("bt601", True), (0, 128, 128), (0, 0, 0)),     # full-range black
    (ColorSpec("bt601", True), (128, 128, 128), (128 / 255,) * 3),
    (ColorSpec("bt709"), (63, 102, 240), (1, 0, 0)),          # BT.709 limited red
    (ColorSpec("bt601"), (81, 90, 240), (1, 0, 0)),           # BT.601 limited red
    (ColorSpec("bt709"), (173, 42, 26), (0, 1, 0)),           # BT.709 limited green
    (ColorSpec("bt601"), (41, 240, 110), (0, 0, 1)),          # BT.601 limited blue
])
def test_known_colours_convert_to_the_right_rgb(color, yuv, rgb):
    out = convert(*uniform_nv12(16, 8, *yuv), color)
    assert np.allclose(out.reshape(3, -1).mean(axis=1), rgb, atol=2.5 / 255)
    assert out.max() <= 1 and out.min() >= 0


def test_matches_ffmpegs_own_conversion_on_a_decoded_frame(tmp_path):
    clip = Scene(seed=21, width=640, height=480, frames=3).write(tmp_path / "c.mp4")
    with av.open(str(clip)) as container:
        frame = next(container.decode(video=0))
    nv12 = frame.reformat(format="nv12")
    w, h = frame.width, frame.height
    luma = np.frombuffer(nv12.planes[0], np.uint8).reshape(h, -1)[:, :w]
    chroma = np.frombuffer(nv12.planes[1], np.uint8).reshape(h // 2, -1)[:, :w].reshape(h // 2, w // 2, 2)
    ffmpeg = frame.to_ndarray(format="rgb24").transpose(2, 0, 1) / 255
    ours = convert(luma, chroma, ColorSpec.from_av(frame.colorspace, frame.color_range))
    error = np.median(np.abs(ours - ffmpeg)) * 255
    # FFmpeg upsamples chroma its own way, so edges differ; colours and levels must agree
    assert error <= 2, error
    for wrong in (ColorSpec("bt709"), ColorSpec("bt601", full_range=True)):  # the check can fail
        assert np.median(np.abs(convert(luma, chroma, wrong) - ffmpeg)) * 255 > 2 * error, wrong


def test_letterbox_scales_the_picture_into_place_and_pads_the_rest():
    luma, chroma = uniform_nv12(64, 32, 16, 128, 128)
    luma[8:24, 16:48] = 235  # a white block in the middle of a black frame
    lb = Letterbox(0.5, 0, 8, 64, 32)  # 32x16 picture centred in a 32x32 input
    out = convert(luma, chroma, ColorSpec(), out_hw=(32, 32), lb=lb)
    assert np.allclose(out[:, :8], PAD_VALUE) and np.allclose(out[:, 24:], PAD_VALUE)
    assert np.allclose(out[:, 16, 16], 1, atol=1e-3)  # block centre (32, 16) -> (16, 8 + 8)
    assert np.allclose(out[:, 10, 2], 0, atol=1e-3)


def test_the_committed_kernel_fatbins_are_built_from_the_current_source():
    """scripts/model/build_kernels.py --check: the source hash always; where this machine has the very
    toolchain build a fatbin was made with (CI: nvcc 13.0 V13.0.88), it is rebuilt and must be
    the same bytes."""
    result = subprocess.run([sys.executable, "-m", "scripts.model.build_kernels", "--check"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    recorded = json.loads(KERNEL_FATBIN.with_suffix(".fatbin.json").read_text())["build"]
    if shutil.which("nvcc"):
        from scripts.model.build_kernels import nvcc_build

        if nvcc_build("nvcc") == recorded:
            assert f"bytes compared: {KERNEL_FATBIN.name}" in result.stdout, result.stdout


@pytest.mark.parametrize("name", [KERNEL_FATBIN.name, KERNEL_FATBIN.with_suffix(".cuda12.fatbin").name])
def test_the_fatbins_hold_machine_code_for_common_gpus_and_ptx_for_newer_ones(name):
    from scripts.model.build_kernels import PTX, SASS, fatbin_images

    data = (KERNEL_FATBIN.parent / name).read_bytes()
    assert fatbin_images(data) == [("ptx", int(PTX))] + [("sass", int(sm)) for sm in SASS]
    assert b"letterbox_nv12_f32" in data and b"letterbox_nv12_f16" in data


def test_a_stale_fatbin_is_reported(tmp_path, monkeypatch):
    import scripts.model.build_kernels as build

    source = tmp_path / "letterbox_nv12.cu"
    source.write_text(KERNEL_SOURCE.read_text() + "\n// changed\n")
    monkeypatch.setattr(build, "SOURCE", source)
    assert sum("changed since" in problem for problem in build.check(None)) == 2  # both fatbins


def fake_nvcc(folder, build_id: str) -> str:
    """An nvcc that reports `build_id` and writes other bytes than the committed fatbin."""
    build, version = build_id.split(", ")
    script = folder / "nvcc"
    script.write_text("#!/bin/sh\n"
                      f"case \"$1\" in --version) printf 'Cuda compilation tools, release 13.0, {version}\\n"
                      f"Build {build}\\n';;\n"
                      "*) while [ $# -gt 0 ]; do [ \"$1\" = -o ] && printf 'other bytes' > \"$2\"; shift; done;; esac\n")
    script.chmod(0o755)
    return str(script)


def test_the_fatbin_bytes_are_compared_only_with_the_very_build_that_made_them(tmp_path):
    from scripts.model.build_kernels import check

    recorded = json.loads(KERNEL_FATBIN.with_suffix(".fatbin.json").read_text())["build"]
    build_no = recorded.rsplit("V13.0.", 1)[1]
    same_release_other_build = recorded.replace(f"V13.0.{build_no}", "V13.0.999")
    assert check(fake_nvcc(tmp_path, same_release_other_build)) == []  # not compared: may differ
    assert any("builds a different" in p for p in check(fake_nvcc(tmp_path, recorded)))  # compared, differs


@pytest.mark.parametrize("codes, expected", [
    ((1, 1), ColorSpec("bt709", False)), ((2, 0), ColorSpec("bt601", False)),
    ((5, 2), ColorSpec("bt601", True)), ((9, 1), ColorSpec("bt2020", False)), ((None, None), ColorSpec()),
])
def test_stream_colour_codes_choose_matrix_and_range(codes, expected):
    assert ColorSpec.from_av(*codes) == expected


NO_GPU = GpuProbe(0, {m: False for m in GPU_MODULES})
GPU_BUT_NO_TRT = GpuProbe(1, {"pycuda": True, "PyNvVideoCodec": True, "tensorrt": False})
FULL_GPU = GpuProbe(2, {m: True for m in GPU_MODULES})


@pytest.mark.parametrize("backend, decoder, found, expected", [
    ("auto", "auto", NO_GPU, ("onnxruntime", "pyav")),
    ("auto", "auto", FULL_GPU, ("tensorrt", "nvdec")),
    ("auto", "auto", GPU_BUT_NO_TRT, ("onnxruntime", "pyav")),
    ("auto", "pyav", FULL_GPU, ("tensorrt", "pyav")),
    ("stub", "auto", NO_GPU, ("stub", "pyav")),
    ("stub", "auto", GPU_BUT_NO_TRT, ("stub", "nvdec")),
    ("onnxruntime", "auto", FULL_GPU, ("onnxruntime", "pyav")),
])
def test_path_choice(backend, decoder, found, expected):
    choice = choose_path(backend, decoder, found)
    assert (choice.backend, choice.decoder) == expected
    assert choice.on_gpu == (expected[0] == "tensorrt" or expected[1] == "nvdec")


def test_auto_on_a_gpu_without_tensorrt_says_why_it_stays_on_the_cpu():
    assert "tensorrt" in choose_path("auto", "auto", GPU_BUT_NO_TRT).why


@pytest.mark.parametrize("backend, decoder, found, message", [
    ("tensorrt", "auto", NO_GPU, "needs an NVIDIA GPU"),
    ("tensorrt", "auto", GPU_BUT_NO_TRT, "lacks tensorrt"),
    ("stub", "nvdec", NO_GPU, "gpu.decoder nvdec needs an NVIDIA GPU"),
    ("onnxruntime", "nvdec", FULL_GPU, "ONNX Runtime"),
])
def test_impossible_choices_are_refused_saying_what_is_missing(backend, decoder, found, message):
    with pytest.raises(EngineError, match=message):
        choose_path(backend, decoder, found)


STANDIN_LIBCUDA = r"""
/* Stands in for the NVIDIA driver library (no NVIDIA hardware here): STANDIN_GPUS GPUs, of which
   CUDA_VISIBLE_DEVICES (a comma list) leaves as many visible as it names, as the driver does. */
#include <stdlib.h>
int cuInit(unsigned flags) { const char *n = getenv("STANDIN_GPUS"); return n && atoi(n) > 0 ? 0 : 100; }
int cuDeviceGetCount(int *count) {
    int n = atoi(getenv("STANDIN_GPUS")); const char *visible = getenv("CUDA_VISIBLE_DEVICES");
    if (visible) { int k = *visible ? 1 : 0; for (const char *p = visible; *p; p++) k += *p == ','; if (k < n) n = k; }
    *count = n; return 0;
}
"""


def shared_library(folder, name: str, source: str = "") -> Path:
    """A real shared object built with gcc (a stand-in for a driver library this machine lacks)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.c").write_text(source or "int standin;\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(folder / name), str(folder / f"{name}.c")], check=True)
    return folder / name


def probe_in_child(library_dir, **env) -> subprocess.CompletedProcess:
    code = "from pipeline.gpu import probe; found = probe(); print(found.devices, '|', found.why)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**_env(LD_LIBRARY_PATH=str(library_dir)), **env})


@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc to build the stand-in driver library")
def test_gpus_are_counted_by_the_driver_honouring_cuda_visible_devices_without_proc(tmp_path):
    """Not by listing /proc/driver/nvidia/gpus: sandboxed runtimes hide it (it is absent here), and it
    lists every GPU of the host, so CUDA_VISIBLE_DEVICES made lanes for GPUs CUDA then refused."""
    shared_library(tmp_path, "libcuda.so.1", STANDIN_LIBCUDA)
    assert not Path("/proc/driver/nvidia").exists()
    assert probe_in_child(tmp_path, STANDIN_GPUS="2").stdout.startswith("2 | 2 GPU(s)")
    assert probe_in_child(tmp_path, STANDIN_GPUS="2", CUDA_VISIBLE_DEVICES="1").stdout.startswith("1 |")
    none = probe_in_child(tmp_path, STANDIN_GPUS="0").stdout
    assert none.startswith("0 |") and "no CUDA-capable device" in none


def test_without_a_driver_library_there_is_no_gpu_and_the_reason_says_so():
    found = probe(count=lambda: cuda_device_count("libcuda-absent.so.1"))
    assert found.devices == 0 and "no NVIDIA driver library" in found.why
    with pytest.raises(EngineError, match=r"has 0 GPU\(s\) \(no NVIDIA driver library"):
        choose_path("tensorrt", "auto", found)


def test_cameras_go_to_their_configured_gpu_and_the_rest_spread_evenly():
    placed = assign_gpus({"a": None, "b": 1, "c": None, "d": None, "e": 1, "f": None}, [0, 1])
    assert placed["b"] == placed["e"] == 1
    counts = [list(placed.values()).count(g) for g in (0, 1)]
    assert counts == [3, 3] and placed["a"] == 0


def test_a_camera_set_to_a_missing_gpu_is_named():
    with pytest.raises(EngineError, match=r"cam-7 \(gpu 3\)"):
        assign_gpus({"cam-1": None, "cam-7": 3}, [0, 1])


KEY = engine_cache.EngineKey("ab" * 32, "NVIDIA H100 80GB HBM3", "9.0", "10.13.0", "fp16", 8, 640)


@pytest.mark.parametrize("change", [
    {"model_sha256": "cd" * 32}, {"gpu_name": "NVIDIA L4"}, {"compute_capability": "8.9"},
    {"tensorrt_version": "11.4.0"}, {"precision": "fp32"}, {"max_batch": 16}, {"input_size": 320},
])
def test_engine_cache_key_changes_with_anything_that_changes_the_plan(change, tmp_path):
    same = engine_cache.engine_path(tmp_path, "yolo", replace(KEY))
    assert same == engine_cache.engine_path(tmp_path, "yolo", KEY)
    assert engine_cache.engine_path(tmp_path, "yolo", replace(KEY, **change)) != same


def test_engine_cache_stores_the_plan_with_its_key_and_names_gpu_and_version(tmp_path):
    path = engine_cache.engine_path(tmp_path / "cache", "shapes", KEY)
    engine_cache.store(path, b"plan-bytes", KEY)
    assert path.read_bytes() == b"plan-bytes"
    assert json.loads(path.with_suffix(".json").read_text())["gpu_name"] == KEY.gpu_name
    assert "nvidia-h100-80gb-hbm3" in path.name and "trt10.13.0" in path.name
    assert not list(path.parent.glob("*.tmp"))


def test_engine_cache_location_follows_the_environment(tmp_path):
    assert engine_cache.default_cache_dir({"RTSP_PIPELINE_ENGINE_CACHE": "/var/cache/x"}) == Path("/var/cache/x")
    assert engine_cache.default_cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/rtsp-pipeline/engines")


@pytest.mark.parametrize("model_shape, expected", [
    ((1, 84, 8400), (4, 84, 1)), (("batch", 8, "anchors"), (4, 8, 1)),
    ((1, 25200, 85), (4, 1, 85)), ((1, 300, 6), (4, 300, 6)),
])
def test_stub_output_keeps_the_models_layout_with_one_empty_candidate(model_shape, expected):
    assert stub_output_shape(model_shape, 4) == expected


def test_transfer_counter_counts_each_direction_and_reports_each_copy():
    seen = []
    counter = TransferCounter(lambda d, n: seen.append((d, n)))
    counter.add("d2d", 100)
    counter.add("d2h", 8)
    counter.add("d2h", 8)
    assert counter.snapshot() == {"h2d": (0, 0), "d2h": (2, 16), "d2d": (1, 100)}
    assert seen == [("d2d", 100), ("d2h", 8), ("d2h", 8)]


def test_no_module_of_the_package_imports_an_nvidia_module():
    code = f"""
import importlib, pkgutil, sys, pipeline
for mod in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
    if not mod.name.endswith("__main__"):
        importlib.import_module(mod.name)
print(sorted(m for m in {GPU_MODULES!r} if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


REPO = Path(__file__).resolve().parents[2]


def _env(**extra) -> dict:
    """A small environment for the CLI, keeping PYTHONPATH (the GPU machine's packages live there)."""
    env = {"PATH": "/usr/bin:/bin", **extra}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def test_example_config_with_every_setting_is_valid():
    env = _env(GATE_PASS="secret")
    result = subprocess.run([sys.executable, "-m", "pipeline", "validate-config", str(REPO / "configs" / "example.yaml")],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr


def test_build_engine_without_a_gpu_exits_1_saying_what_is_missing():
    env = _env(GATE_PASS="secret")
    result = subprocess.run([sys.executable, "-m", "pipeline", "build-engine", "--config",
                             str(REPO / "configs" / "example.yaml")], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert "needs an NVIDIA GPU" in result.stderr + result.stdout


def test_fp16_conversion_for_strongly_typed_tensorrt_keeps_float_io_and_the_detections(tmp_path):
    import onnxruntime as ort

    from pipeline.s4_infer.engine_cache import _fp16_onnx

    model = REPO / "engines" / "shapes-yolov8n.onnx"
    half = tmp_path / "half.onnx"
    half.write_bytes(_fp16_onnx(model.read_bytes()))
    assert half.stat().st_size < 0.6 * model.stat().st_size  # weights are half as large
    scene = Scene(seed=31, width=320, height=320, frames=1)
    image = scene.render(0)[0].transpose(2, 0, 1)[None].astype(np.float32) / 255
    outputs = []
    for path in (model, half):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert session.get_inputs()[0].type == "tensor(float)"
        outputs.append(session.run(None, {session.get_inputs()[0].name: image})[0])
    full, reduced = outputs
    assert reduced.dtype == np.float32 and reduced.shape == full.shape
    scores_full, scores_half = full[0, 4:].max(axis=0), reduced[0, 4:].max(axis=0)
    confident = scores_full > 0.5
    assert confident.any() and np.abs(scores_half[confident] - scores_full[confident]).max() < 0.02


class FakeNvml:
    """Stands in for NVML (nvidia-ml-py), which needs an NVIDIA driver and GPU this machine lacks."""

    def __init__(self, gpus: int, fail_on: int | None = None) -> None:
        self.gpus, self.fail_on = gpus, fail_on

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, index):
        if index == self.fail_on:
            raise RuntimeError("GPU is lost")
        return index

    def nvmlDeviceGetUtilizationRates(self, handle):
        return types.SimpleNamespace(gpu=40 + handle, memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(used=(handle + 1) * 2**30, total=80 * 2**30, free=0)


def test_gpu_utilisation_and_memory_are_exported_per_gpu_at_each_scrape():
    from pipeline.metrics import Metrics
    from scripts.lab.daemons import metric_values

    metrics = Metrics()
    assert metrics.watch_gpus(FakeNvml(2, fail_on=1))
    text = metrics.render().decode()
    assert metric_values(text, "rtsp_pipeline_gpu_utilization_ratio") == {'{gpu="0"}': 0.4}  # GPU 1 lost: skipped
    assert metric_values(text, "rtsp_pipeline_gpu_memory_used_bytes") == {'{gpu="0"}': 2**30}
    assert metric_values(text, "rtsp_pipeline_gpu_memory_total_bytes") == {'{gpu="0"}': 80 * 2**30}


def test_without_nvml_or_gpus_no_gpu_series_appear():
    from pipeline.metrics import Metrics

    metrics = Metrics()
    assert not metrics.watch_gpus(FakeNvml(0))
    assert "gpu_utilization" not in metrics.render().decode()
    assert not Metrics().watch_gpus()  # this machine: no pynvml or no GPU


# ---------------------------------------------------------------------- the kernel on older drivers
@pytest.mark.parametrize("driver, loads", [(13000, ".fatbin"), (13010, ".fatbin"), (12080, ".cuda12.fatbin"),
                                           (12060, ".cuda12.fatbin"), (12020, ".cuda12.fatbin")])
def test_the_kernel_build_is_chosen_by_the_drivers_cuda_version(driver, loads):
    """R580 (CUDA 13) loads the CUDA 13 build; R535-R575 (CUDA 12.x: the GPU image's TensorRT 24.12
    base) the CUDA 12.8 one, on the stand-in GPU whose loader refuses a newer toolkit's code."""
    from pipeline.gpu import Gpu
    from tests.gpu.standin import StandInGpu

    standin = StandInGpu(driver_version=driver)
    gpu = Gpu(0, driver=standin.driver, video_codec=standin.video_codec)
    try:
        assert gpu.kernel(KERNEL_FATBIN, "letterbox_nv12_f32") is not None
        assert standin.loaded == [KERNEL_FATBIN.with_suffix(loads).read_bytes()]
    finally:
        gpu.close()


def test_on_a_cuda_12_driver_the_cuda_13_build_alone_fails_as_the_image_did():
    from tests.gpu.standin import StandInError, StandInGpu

    standin = StandInGpu(driver_version=12060)
    with pytest.raises(StandInError, match="UNSUPPORTED_PTX_VERSION"):
        standin.driver.module_from_buffer(KERNEL_FATBIN.read_bytes())


def test_a_driver_older_than_cuda_12_is_refused_in_one_line_saying_what_to_do():
    from pipeline.gpu import Gpu
    from tests.gpu.standin import StandInGpu

    standin = StandInGpu(driver_version=11080)
    gpu = Gpu(0, driver=standin.driver, video_codec=standin.video_codec)
    try:
        with pytest.raises(EngineError, match=r"supports CUDA 11\.8; the GPU path needs a driver for CUDA 12 or newer "
                                              r"\(R525 or newer\): update the driver"):
            gpu.kernel(KERNEL_FATBIN, "letterbox_nv12_f32")
    finally:
        gpu.close()


# ---------------------------------------------------------------------- NVDEC's libraries, checked once at start
def test_missing_nvdec_libraries_are_named_in_one_line_with_the_capability_to_set():
    problem = nvdec_problem()  # this machine has no NVIDIA driver: both are missing
    assert problem.startswith("NVDEC cannot work here: libnvcuvid.so.1, libnvidia-encode.so.1 not found;")
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video" in problem and "\n" not in problem


FAILING_PYNVVIDEOCODEC = '''
import sys
sys.stderr.write("=== TROUBLESHOOTING STEPS ===\\n")
raise RuntimeError("Failed to load NVENC library: libnvidia-encode.so.1: version mismatch")
'''


@pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc to build stand-in driver libraries")
def test_a_pynvvideocodec_that_fails_to_import_is_said_with_its_cause_not_its_advice(tmp_path):
    libs = tmp_path / "libs"
    for name in ("libnvcuvid.so.1", "libnvidia-encode.so.1"):
        shared_library(libs, name)  # present, but (stand-in) PyNvVideoCodec still refuses
    package = tmp_path / "site" / "PyNvVideoCodec"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAILING_PYNVVIDEOCODEC)
    code = "from pipeline.gpu import nvdec_problem; print(nvdec_problem())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                            env={**_env(LD_LIBRARY_PATH=str(libs)), "PYTHONPATH": f"{tmp_path / 'site'}:{REPO}"})
    line = result.stdout.strip()
    assert line.startswith("NVDEC cannot work here: PyNvVideoCodec failed (RuntimeError: Failed to load NVENC library")
    assert "TROUBLESHOOTING" not in line


NATIVE_PRINTS = r'''
import ctypes, logging, sys, time
from pipeline.logs import setup_logging
from pipeline.native_output import NativeStdout
setup_logging("INFO")
counted = []
capture = NativeStdout(counted.append)
capture.start()
libc = ctypes.CDLL(None)
for n in range(50):  # as PyNvVideoCodec does for each concealed picture: C's printf, on fd 1
    libc.printf(b"Decode Error occurred for picture %d\n", n)
libc.printf(b"Session Initialization Time: 12 ms\n")
print("python's own stdout still works")
capture.stop()
print("kinds", sorted(set(counted)), "lines", len(counted))
'''


def test_what_pynvvideocodec_prints_on_stdout_is_counted_and_kept_out_of_the_log_stream():
    result = subprocess.run([sys.executable, "-c", NATIVE_PRINTS], capture_output=True, text=True, timeout=60, cwd=REPO,
                            env=_env())
    assert result.returncode == 0, result.stderr
    raw = [line for line in result.stdout.splitlines() if not line.startswith("{")]  # all but our JSON log
    assert not any("Decode Error" in line or "Session" in line for line in raw), raw  # not a line of it as printed
    assert "python's own stdout still works" in result.stdout
    assert "kinds ['concealed_picture', 'timer'] lines 51" in result.stdout
    logged = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]  # our JSON log
    concealed = [e for e in logged if e.get("kind") == "concealed_picture"]
    assert sum(e["lines"] for e in concealed) == 50 and len(concealed) <= 2  # one line, and the rest at stop


# ---------------------------------------------------------------------- sequences
def nal(kind: int, body: bytes, codec: str = "h264") -> bytes:
    header = bytes([0x60 | kind]) if codec == "h264" else bytes([kind << 1, 1])
    return b"\x00\x00\x00\x01" + header + body


@pytest.mark.parametrize("codec, sps, pps, idr", [("h264", 7, 8, 5), ("hevc", 33, 34, 19)])
def test_the_in_band_sps_decides_a_new_sequence_not_the_sdps_copy_in_front_of_it(codec, sps, pps, idr):
    """The first keyframe of a connection has the SDP's SPS put in front of the camera's own; when
    the two differ in bytes only (VUI, level), the next keyframe must not look like a new sequence."""
    from pipeline.s2_nvdec import sequence_header

    sdp_sps, camera_sps = nal(sps, b"\x64\x00\x28\xac", codec), nal(sps, b"\x64\x00\x28\xac\xd9\x40\x78", codec)
    first = sdp_sps + nal(pps, b"\xeb", codec) + camera_sps + nal(pps, b"\xeb", codec) + nal(idr, b"\x88\x84", codec)
    second = camera_sps + nal(pps, b"\xeb", codec) + nal(idr, b"\x88\x84", codec)
    assert sequence_header(first, codec) == sequence_header(second, codec) == camera_sps[4:]
    assert sequence_header(nal(idr, b"\x88", codec) + camera_sps, codec) is None  # only before the first slice
