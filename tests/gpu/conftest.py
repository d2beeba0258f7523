"""GPU tests: marked `gpu`, and skipped (not failed) where there is no NVIDIA GPU or the GPU
modules are not installed. scripts/gpu_check.sh installs them and runs these on a GPU machine."""
from pathlib import Path

import pytest

from pipeline.gpu import probe
from scripts.scenes import Scene
from scripts.testbed import pyav_clip


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/gpu" in str(item.fspath):
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(scope="session")
def gpu():
    found = probe()
    if found.devices == 0:
        pytest.skip("no NVIDIA GPU on this machine")
    missing = [m for m in ("pycuda", "PyNvVideoCodec") if not found.modules.get(m)]
    if missing:
        pytest.skip(f"GPU modules not installed: {', '.join(missing)} (pip install '.[gpu]')")
    from pipeline.gpu import Gpu

    return Gpu(0)


def scene_frames(seed: int, width: int, height: int, frames: int):
    scene = Scene(seed, width, height, frames=frames)
    return (scene.render(i)[0] for i in range(frames))


@pytest.fixture(scope="session")
def clip_1080p(tmp_path_factory) -> Path:
    return pyav_clip(tmp_path_factory.mktemp("gpu") / "scene-1080p.mp4", scene_frames(77, 1920, 1080, 50))


@pytest.fixture(scope="session")
def resolution_change_stream(tmp_path_factory) -> Path:
    """One raw H.264 stream whose resolution changes at a keyframe (a new SPS), as when a camera's
    settings are changed."""
    folder = tmp_path_factory.mktemp("gpu-sps")
    first = pyav_clip(folder / "a.h264", scene_frames(5, 640, 360, 30), container="h264")
    second = pyav_clip(folder / "b.h264", scene_frames(6, 1280, 720, 30), container="h264")
    joined = folder / "joined.h264"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    return joined
