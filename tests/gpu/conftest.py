"""The GPU path's tests run twice: on `standin` (tests/gpu/standin.py: no NVIDIA hardware exists
on CI machines; it checks our use of pycuda and PyNvVideoCodec and runs the arithmetic on the
CPU) and on `nvidia`, a real GPU, where they are marked `gpu` and skipped (not failed) when
there is none or the GPU modules are missing. scripts/gpu_check.sh sets GPU_CHECK_REQUIRE=1:
then a missing GPU fails instead; and it sets GPU_CHECK_CLAIMS, so every test writes its claim
line as it ends (tests/gpu/claims.py). Tests marked `risky` (they drive a driver into an error
path whose aftermath is unknown) run last, so a crash there costs only their own lines."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.gpu import Gpu, probe
from scripts.lab.clips import pyav_clip
from scripts.lab.scenes import Scene
from tests.gpu.claims import pytest_collection_modifyitems as _claims_collected
from tests.gpu.claims import pytest_runtest_logreport  # noqa: F401 - the claim line of each test
from tests.gpu.standin import StandInGpu

REQUIRE = os.environ.get("GPU_CHECK_REQUIRE") == "1"


def _nvidia() -> Gpu:
    found = probe()
    missing = [m for m in ("pycuda", "PyNvVideoCodec") if not found.modules.get(m)]
    why = ("no NVIDIA GPU on this machine" if found.devices == 0 else
           f"GPU modules not installed: {', '.join(missing)} (pip install '.[gpu]')" if missing else None)
    if why:
        (pytest.fail if REQUIRE else pytest.skip)(why)
    return Gpu(0)


@pytest.fixture(scope="session", params=["standin", pytest.param("nvidia", marks=pytest.mark.gpu)])
def gpu(request):
    """The GPU path's Gpu: on the stand-in, then on a real NVIDIA GPU."""
    if request.param == "standin":
        standin = StandInGpu()
        made = Gpu(0, driver=standin.driver, video_codec=standin.video_codec)
        made.standin = standin
    else:
        made = _nvidia()
        made.standin = None
    yield made
    made.close()


@pytest.fixture(scope="session")
def nvidia_gpu():
    """A real NVIDIA GPU only (for claims a stand-in cannot check: timing, the GIL)."""
    made = _nvidia()
    made.standin = None
    yield made
    made.close()


@pytest.fixture
def figure(record_property):
    """Record this test's figure for its CLAIM line: figure("250/250 frames equal")."""
    def record(text) -> None:
        print("figure:", text)  # shown with a failure
        record_property("figure", str(text))
    return record


def pytest_collection_modifyitems(items):
    for item in items:
        if "nvidia_gpu" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.gpu)
    items.sort(key=lambda item: item.get_closest_marker("risky") is not None)  # stable: the rest keep their order
    _claims_collected(items)


# ---------------------------------------------------------------------- clips
def scene_frames(seed: int, width: int, height: int, frames: int):
    """Rendered frames of a generated scene (scripts/lab/scenes.py)."""
    scene = Scene(seed, width, height, frames=frames)
    return (scene.render(i)[0] for i in range(frames))


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    """1080p clips of 50 frames, two GOPs of 25, 8-bit 4:2:0: H.264 and H.265 in MP4."""
    folder = tmp_path_factory.mktemp("gpu-clips")
    return {codec: pyav_clip(folder / f"scene-1080p-{codec}.mp4", scene_frames(77, 1920, 1080, 50), gop=25,
                             codec=encoder)
            for codec, encoder in (("h264", "libx264"), ("h265", "libx265"))}


def raw_stream(folder: Path, parts: list[tuple[int, int, int, int]]) -> Path:
    """One raw H.264 stream joined from parts (seed, width, height, frames): each part is a new
    sequence (a new SPS), as when a camera's settings are changed."""
    joined = folder / "joined.h264"
    data = b""
    for i, (seed, width, height, frames) in enumerate(parts):
        data += pyav_clip(folder / f"part{i}.h264", scene_frames(seed, width, height, frames),
                          gop=frames, container="h264").read_bytes()
    joined.write_bytes(data)
    return joined
