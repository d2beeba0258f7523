"""Soak, 3 minutes (scripts/bench/soak.py; its long run is a benchmark): 4 cameras with a fault every
35 s (camera server killed and restarted, stream stalled, Kafka network path cut): no message lost
and memory flat."""
import json

import pytest

from scripts.bench.soak import run


@pytest.mark.timeout(900)
def test_three_minutes_with_faults_lose_nothing_and_memory_stays_flat(tmp_path):
    result = run(minutes=3, cameras=4, fault_every=35, work=tmp_path)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    assert len(result["faults"]) >= 4 and result["spooled_max"] > 0  # the faults happened, Kafka was cut
    assert not any(result["lost"].values()), result["lost"]
    assert result["rss_mib"]["growth"] <= max(8.0, 0.05 * result["rss_mib"]["baseline"]), result["rss_mib"]
    assert result["exit_code"] == 0
