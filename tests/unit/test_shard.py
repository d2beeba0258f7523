"""Splitting the camera list across replicas (`run --shard INDEX/COUNT`, a StatefulSet's ordinal)."""
import subprocess
import sys
from collections import Counter

import pytest
import yaml

from pipeline.config import load_config, parse_shard, shard_assignment

IDS = [f"cam-{i:02d}" for i in range(40)]


def test_every_camera_is_served_by_exactly_one_replica_and_loads_are_balanced():
    for count in (1, 2, 3, 5, 7):
        placed = shard_assignment(IDS, count)
        assert sorted(placed) == sorted(IDS)
        loads = Counter(placed.values())
        assert max(loads.values()) <= -(-len(IDS) // count)  # at most ceil(40 / count)


def test_the_split_does_not_depend_on_list_order_and_changes_little():
    placed = shard_assignment(IDS, 3)
    assert shard_assignment(list(reversed(IDS)), 3) == placed  # every replica computes the same
    grown = shard_assignment([*IDS, "cam-new"], 3)
    assert sum(placed[c] != grown[c] for c in IDS) <= 2  # adding a camera moves almost nothing
    more = shard_assignment(IDS, 4)
    assert sum(placed[c] != more[c] for c in IDS) <= len(IDS) // 2  # a 4th replica takes a share


def test_config_shards_partition_the_cameras(tmp_path):
    path = tmp_path / "cams.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"path": str(tmp_path / "m.onnx")}, "kafka": {"bootstrap_servers": "k:9092"},
        "cameras": [{"id": c, "url": f"rtsp://10.0.0.1/{c}"} for c in IDS],
        "canary": {"model": {"path": str(tmp_path / "m.onnx")}, "cameras": IDS[:3]},
    }))
    (tmp_path / "m.onnx").write_bytes(b"x")
    config = load_config(path)
    shards = [config.shard(i, 3) for i in range(3)]
    served = [c.id for s in shards for c in s.cameras]
    assert sorted(served) == IDS
    assert [c.id for c in config.shard(0, 1).cameras] == IDS
    # replicas started from one file on one host must not share a spool (it has a single owner)
    assert len({s.kafka.spool.folder for s in shards}) == 3


@pytest.mark.parametrize("text", ["3/3", "1", "a/2", "-1/2", "0/0"])
def test_bad_shard_arguments_are_refused(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


def test_the_cli_refuses_a_bad_shard_with_exit_code_2(tmp_path):
    config = tmp_path / "cams.yaml"
    config.write_text(yaml.safe_dump({"model": {"path": __file__}, "kafka": {"bootstrap_servers": "k:9092"},
                                      "cameras": [{"id": "a", "url": "rtsp://10.0.0.1/a"}]}))
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", "--config", str(config), "--shard", "2/2"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "INDEX must be in 0..COUNT-1" in result.stderr
