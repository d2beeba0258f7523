"""Session fixtures: real H.264 clips, GStreamer's RTSP server and a Kafka-protocol broker."""
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from scripts.lab.broker import Broker, tansu_binary
from scripts.lab.cameras import RtspServer
from scripts.lab.clips import corrupt_ts, make_clip, ts_clip
from scripts.lab.common import REPO
from scripts.lab.dockerd import DockerEngine

pytestmark = pytest.mark.integration
CLIPS = {  # name: (width, height) -- three aspect ratios: 16:9, 4:3 and portrait
    "wide": (1280, 720),
    "classic": (640, 480),
    "portrait": (480, 848),
}


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    if not shutil.which("ffmpeg"):
        pytest.fail("ffmpeg is required for integration tests (apt-get install ffmpeg)")
    folder = tmp_path_factory.mktemp("clips")
    clips = {name: make_clip(folder / f"{name}.mp4", w, h) for name, (w, h) in CLIPS.items()}
    clips["gop1s"] = make_clip(folder / "gop1s.mp4", 640, 360, gop=25)  # a keyframe every second
    # a new SPS mid-stream, twice; it ends as it starts, so the server can loop it (rtsp_server.py)
    clips["resize"] = ts_clip(folder / "resize.ts", [(640, 360, 1), (1280, 720, 2), (640, 360, 1)])
    clips["corrupt"] = corrupt_ts(clips["resize"], folder / "corrupt.ts")  # damaged H.264 packets
    return clips


@pytest.fixture(scope="session")
def scene_folder(tmp_path_factory) -> Path:
    """Where the accuracy scenes' clips are made once a session (scripts.lab.accuracy.scene_clip):
    test_accuracy and test_models read the same held-out scenes."""
    return tmp_path_factory.mktemp("scenes")


@pytest.fixture(scope="session")
def _session_rtsp_server(clips):
    with RtspServer(clips) as server:
        yield server


@pytest.fixture(scope="module")
def rtsp_server(_session_rtsp_server):
    """The session's RTSP server, restarted on its port if it stopped answering. GStreamer's RTSP
    server stopped answering for the rest of a CI run when a shared media deadlocked its only
    client thread; scripts/lab/rtsp_server.py now avoids that (unshared media, a thread per client),
    and this check stays as the safety net between modules."""
    server = _session_rtsp_server
    if not server.answers(next(iter(server.mounts))):
        sys.stderr.write(f"RTSP test server stopped answering; restarting it. Its stderr:\n{server.log_tail()}\n")
        server.stop()
        server.start()
    return server


@pytest.fixture(scope="session")
def broker():
    with Broker() as b:
        yield b


# ---------------------------------------------------------------------- containers (a Docker engine of our own)
CPU_IMAGE = "rtsp-pipeline:cpu"


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory):
    engine = DockerEngine(Path(tempfile.mkdtemp(prefix="dkr-", dir="/tmp")))  # a short path: dockerd's sockets
    try:
        engine.start()
    except RuntimeError as exc:
        pytest.skip(f"no Docker engine could start here: {exc}")
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def cpu_image(docker_engine):
    """rtsp-pipeline:cpu from a registry-free base, as scripts/build_image.sh makes it for an operator."""
    started = time.monotonic()
    result = subprocess.run(["bash", "scripts/build_image.sh"], cwd=REPO, env=docker_engine.env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    size = int(docker_engine.docker("image", "inspect", "-f", "{{.Size}}", CPU_IMAGE).stdout)
    print(f"\n{CPU_IMAGE}: built in {time.monotonic() - started:.0f} s, {size / 1e6:.0f} MB")
    return size


TANSU_IMAGE = "local/tansu-standin"


@pytest.fixture(scope="session")
def tansu_image(docker_engine, cpu_image):
    """A stand-in for apache/kafka (no registry here): the Tansu broker on the Debian base that
    scripts/build_image.sh made (tests/compose/tansu.Dockerfile)."""
    with tempfile.TemporaryDirectory() as context:
        shutil.copy(tansu_binary(), Path(context) / "tansu")
        docker_engine.docker("build", "--network", "host", "-f", str(REPO / "tests" / "compose" / "tansu.Dockerfile"),
                             "-t", TANSU_IMAGE, context)
    return TANSU_IMAGE
