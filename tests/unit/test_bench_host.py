"""The host-path benchmark (scripts/bench/bench_host.py) runs: the daemon's real Runtime on its
GPU path with the two named stand-ins (synthetic NVDEC frames, an engine with the shipped model's
output layout). A short run, so a change that breaks the GPU path's lanes (which only a GPU or
this benchmark builds) fails here, not on the first lent GPU."""
import json
import subprocess
import sys

from scripts.lab.common import REPO


def test_a_short_host_path_run_infers_and_publishes_what_is_offered():
    # 8 x 25 fps: the finish thread's share (3-4 % of a core) well above the 1 % the benchmark lists threads from
    run = subprocess.run([sys.executable, "-m", "scripts.bench.bench_host", "--cameras", "8", "--fps", "25",
                          "--objects", "5", "--seconds", "2", "--warmup", "1", "--sink", "null", "--processes", "1"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["offered_per_s"] > 30 and figures["inferred_per_s"] >= 0.8 * figures["offered_per_s"], figures
    assert abs(figures["published_per_s"] - figures["inferred_per_s"]) <= 0.1 * figures["inferred_per_s"], figures
    assert "finish-gpu" in figures["cpu_percent_by_thread"]  # the GPU path's lane, as on a GPU node
