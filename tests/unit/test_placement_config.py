"""Placement's config and CLI: the section's defaults and bounds, the retired --shard refused with
what to use instead, and `rtsp-pipeline placement` saying when there is no map yet."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_config
from pipeline.placement.plan import camera_cost, default_capacity

REPO = Path(__file__).resolve().parents[2]


def config_file(tmp_path, **placement) -> Path:
    path = tmp_path / "cams.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"path": str(REPO / "engines" / "shapes-yolov8n.onnx")}, "kafka": {"bootstrap_servers": "127.0.0.1:9"},
        "placement": placement, "cameras": [{"id": "a", "url": "rtsp://10.0.0.1/a", "fps": 5},
                                            {"id": "b", "url": "rtsp://10.0.0.1/b", "cost": 2.2}]}))
    return path


def test_placement_defaults_to_every_camera_on_this_node(tmp_path):
    config = load_config(config_file(tmp_path))
    assert config.placement.mode == "all" and config.placement.group == "rtsp-pipeline"


def test_a_heartbeat_slower_than_a_third_of_the_session_is_refused_with_the_file_and_line(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(config_file(tmp_path, mode="kafka-group", session_timeout_s=6, heartbeat_s=3))
    assert "cams.yaml" in str(error.value) and "heartbeat_s 3 must be at most a third" in str(error.value)


def test_validate_config_refuses_a_session_timeout_the_brokers_refuse_and_names_the_broker_setting(tmp_path):
    """Apache Kafka refuses a member whose session timeout is below group.min.session.timeout.ms
    (6 s by default) at every JoinGroup: such a node would never join. validate-config says so."""
    path = config_file(tmp_path, mode="kafka-group", session_timeout_s=3, heartbeat_s=1)
    result = subprocess.run([sys.executable, "-m", "pipeline", "validate-config", str(path)], capture_output=True,
                            text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2, result.stdout
    assert "cams.yaml" in result.stdout + result.stderr
    assert "session_timeout_s 3 is below the brokers' group.min.session.timeout.ms" in result.stdout + result.stderr
    assert "broker_min_session_timeout_s" in result.stdout + result.stderr
    lowered = config_file(tmp_path, mode="kafka-group", session_timeout_s=3, heartbeat_s=1,
                          broker_min_session_timeout_s=2)  # the operator lowered the brokers' minimum
    assert load_config(lowered).placement.session_timeout_s == 3
    assert load_config(config_file(tmp_path, mode="kafka-group")).placement.heartbeat_s == 1


def test_camera_costs_and_default_capacities():
    assert camera_cost(5, None) == 5 and camera_cost(None, None) == 25 and camera_cost(5, 2.2) == 2.2
    assert default_capacity(2, 16, on_gpu=True) == 800 and default_capacity(0, 8, on_gpu=False) == 200


def test_the_retired_shard_option_is_refused_saying_what_replaced_it(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", "--config", str(config_file(tmp_path)),
                             "--shard", "0/2"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2 and "--shard was retired" in result.stderr
    assert "placement.mode: kafka-group" in result.stderr


def test_the_placement_command_says_so_when_no_node_has_published_a_map(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipeline", "placement", "--config",
                             str(config_file(tmp_path, mode="kafka-group")), "--timeout", "2"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 1 and "no placement read from rtsp-pipeline.placement within 2 s: Kafka at" in result.stderr, result.stderr
