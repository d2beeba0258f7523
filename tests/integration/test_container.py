"""The CPU image built for real with no registry (scripts/build_image.sh: a debootstrap base, a
Python base on it, our Dockerfile unchanged) and run the way the Kubernetes manifest runs it:
read-only root, a tmpfs /tmp, uid 10001, every capability dropped, no new privileges, the spool on
a volume. Against the suite's RTSP server and broker (host networking: the engine is ours and
leaves the host's network as it was). What an operator sees: detections from every camera in
Kafka, the image's own HEALTHCHECK healthy on the port the config names, SIGHUP taking a new camera
list, `docker stop` exiting 0 in time, a second container on the same spool volume streaming, and
the log as JSON lines on stdout. Skipped, saying why, where no Docker engine can start."""
import json
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from scripts.lab.broker import consume
from scripts.lab.common import free_port, wait_for
from scripts.lab.dockerd import DockerEngine
from tests.integration.conftest import CPU_IMAGE

pytestmark = pytest.mark.skipif(DockerEngine.unavailable() is not None, reason=str(DockerEngine.unavailable()))
IMAGE = CPU_IMAGE
STOP_TIMEOUT_S = 30


def write_config(folder: Path, cameras: list[tuple[str, str]], bootstrap: str, topic: str, port: int) -> Path:
    config = {
        "model": {"path": "/opt/rtsp-pipeline/engines/shapes-yolov8n.onnx", "input_size": 320, "confidence": 0.35},
        "kafka": {"bootstrap_servers": bootstrap, "topic": topic, "status_topic": f"{topic}-status",
                  "stop_timeout_s": 5},
        "metrics": {"listen": f"0.0.0.0:{port}"},  # not 9108: the HEALTHCHECK must follow it
        "cameras": [{"id": cam, "url": url, "fps": 5} for cam, url in cameras],
    }
    path = folder / "cameras.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))  # in place: the container sees the same inode
    path.chmod(0o644)
    return path


def run_as_kubernetes_does(engine, name: str, config_dir: Path, volume: str):
    return engine.docker(
        "run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
        "--user", "10001:10001", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--health-interval", "2s", "--health-start-period", "60s",  # the image's check, asked more often
        "-v", f"{volume}:/var/lib/rtsp-pipeline", "-v", f"{config_dir}:/etc/rtsp-pipeline:ro", IMAGE).stdout.strip()


def health(engine, name: str) -> str:
    return engine.docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()


def by_run(records, topic):
    out = defaultdict(list)
    for r in records:
        if r.topic == topic:
            out[(r.key, r.value["run_id"])].append(r.value["frame"]["seq"])
    return out


def test_the_cpu_image_builds_without_a_registry_and_fits_an_edge_box(cpu_image):
    assert cpu_image < 1.5e9


def test_the_image_runs_read_only_unprivileged_reloads_stops_and_restarts_on_its_volume(
        docker_engine, cpu_image, rtsp_server, broker):
    engine, topic, port = docker_engine, f"image-{uuid.uuid4().hex[:8]}", free_port()
    config_dir = Path(tempfile.mkdtemp(prefix="image-config-"))
    config_dir.chmod(0o755)
    volume = f"spool-{uuid.uuid4().hex[:8]}"
    cameras = [("classic", rtsp_server.url("classic")), ("wide", rtsp_server.url("wide"))]
    write_config(config_dir, cameras, broker.bootstrap, topic, port)

    def streaming(names, runs=1, per_run=5, timeout=120):
        def enough(records):
            got = by_run(records, topic)
            return all(sum(1 for (c, _), s in got.items() if c == cam and len(s) >= per_run) >= runs for cam in names)
        records = consume(broker.bootstrap, [topic], enough, timeout)
        assert enough(records), {k: len(v) for k, v in by_run(records, topic).items()}
        return records

    first = run_as_kubernetes_does(engine, "pipeline-1", config_dir, volume)
    try:
        streaming(["classic", "wide"])  # detections from every camera
        wait_for(lambda: health(engine, first) == "healthy", 60, "the image's HEALTHCHECK to say healthy")
        cameras.append(("portrait", rtsp_server.url("portrait")))
        write_config(config_dir, cameras, broker.bootstrap, topic, port)
        engine.docker("kill", "-s", "HUP", first)  # docker kill -s HUP: the camera list reloaded
        streaming(["portrait"])
        began = time.monotonic()
        engine.docker("stop", "-t", str(STOP_TIMEOUT_S), first, timeout=STOP_TIMEOUT_S + 30)
        stopped_in = time.monotonic() - began
        state = json.loads(engine.docker("inspect", "-f", "{{json .State}}", first).stdout)
        stdout = engine.docker("logs", first).stdout
        stderr = engine.docker("logs", first).stderr
    finally:
        engine.docker("rm", "-f", "pipeline-1", check=False)
    assert state["ExitCode"] == 0 and stopped_in < STOP_TIMEOUT_S, (state, stopped_in)
    lines = stdout.splitlines()
    events = [json.loads(line) for line in lines]  # every line of the log is a JSON object
    assert any(e["event"] == "config reloaded" and e["added"] == ["portrait"] for e in events)
    assert any(e["event"] == "stopped" for e in events) and stderr.strip() == "", stderr[-2000:]

    second = run_as_kubernetes_does(engine, "pipeline-2", config_dir, volume)  # the same spool volume
    try:
        records = streaming(["classic", "wide", "portrait"], runs=2)
        wait_for(lambda: health(engine, second) == "healthy", 60, "the second container to be healthy")
        log = engine.docker("logs", second).stdout
    finally:
        engine.docker("rm", "-f", "pipeline-2", check=False)
        engine.docker("volume", "rm", volume, check=False)
    assert "Traceback" not in log and '"cannot run"' not in log
    for (cam, run), seqs in by_run(records, topic).items():
        assert sorted(set(seqs)) == list(range(max(seqs) + 1)), (cam, run)  # every run whole, from seq 0
