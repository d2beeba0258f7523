"""The memory budget (pipeline/memory.py): each model's share measured as it loads (here on the
CPU, the process's resident memory and what malloc holds, for real), the start refused in one line naming every share when the
models pass gpu.memory_budget_mb or a model its own memory_mb, frame pools counted as cameras
start and a camera whose pool does not fit refused by name while the others keep theirs.
The GPU side of the same accounting runs on the stand-in in tests/gpu/test_gpu_path.py."""
import re
import types

import numpy as np
import pytest

from pipeline.core import EngineError, SourceError
from pipeline.memory import MiB, MemoryBudget
from pipeline.metrics import Metrics
from scripts.lab.daemons import metric_values

kept = []  # what the "models" below hold, as a loaded session holds its weights


def load(mb: int):
    """A stand-in model load that takes `mb` MiB of resident memory (touched pages)."""
    def run():
        block = np.ones(mb * MiB, np.uint8)
        kept.append(block)
        return f"{mb} MiB model"
    return run


def series(metrics: Metrics, name: str) -> dict:
    return metric_values(metrics.render().decode(), f"rtsp_pipeline_{name}")


def test_each_models_share_is_measured_as_it_loads_and_exported():
    metrics = Metrics()
    budget = MemoryBudget(metrics, 1024)
    # memory freed before the loads and kept by malloc, resident: a load that reuses it does not
    # raise RSS and must count all the same (glibc: a freed 24 MiB mmap raises its mmap threshold,
    # so the 16 MiB blocks come from the heap; the block above them keeps the heap from shrinking)
    del kept[:]
    big = np.ones(24 * MiB, np.uint8)
    del big
    freed = [np.ones(16 * MiB, np.uint8) for _ in range(4)]
    kept.append(np.ones(MiB, np.uint8))
    del freed
    assert budget.measure(None, "default", load(48)) == "48 MiB model"
    budget.measure(None, "helmets", load(16))
    budget.check({})
    shares = series(metrics, "gpu_memory_bytes")
    assert 46 * MiB <= shares['{gpu="cpu",use="model:default"}'] <= 56 * MiB, shares
    assert 14 * MiB <= shares['{gpu="cpu",use="model:helmets"}'] <= 24 * MiB, shares
    assert series(metrics, "gpu_memory_budget_bytes") == {'{gpu="cpu"}': 1024 * MiB}


def test_models_over_the_budget_refuse_the_start_in_one_line_naming_each_share():
    budget = MemoryBudget(Metrics(), 40)
    budget.measure(None, "default", load(32))
    budget.measure(None, "helmets", load(24))
    with pytest.raises(EngineError) as refused:
        budget.check({})
    message = str(refused.value)
    assert "\n" not in message
    assert re.search(r"the CPU: models take 5\d MiB, over gpu\.memory_budget_mb 40: default 3\d MiB, helmets 2\d MiB; "
                     r"trim: .*raise gpu\.memory_budget_mb", message), message
    roomy = MemoryBudget(Metrics(), 80)  # the same models under a larger budget: no refusal
    roomy.measure(None, "default", load(32))
    roomy.measure(None, "helmets", load(24))
    roomy.check({})


def test_a_model_over_its_own_memory_mb_is_named():
    budget = MemoryBudget(Metrics(), None)
    budget.measure(None, "default", load(32))
    budget.measure(None, "helmets", load(8))
    budget.check({"default": 64, "helmets": None})
    with pytest.raises(EngineError, match=r"default 3\d MiB \(over its memory_mb 16\), helmets [\d.]+ MiB: over their own limit"):
        budget.check({"default": 16})


def test_frame_pools_count_and_a_camera_whose_pool_does_not_fit_is_refused_by_name():
    metrics = Metrics()
    budget = MemoryBudget(metrics, 100)
    gpu = types.SimpleNamespace(index=0, memory_info=lambda: (100 * MiB, 200 * MiB))  # nothing measured: 0
    budget.measure(gpu, "default", lambda: None)
    budget.reserve_frames(gpu, "gate", 60 * MiB)
    with pytest.raises(SourceError, match=r"camera yard: its frame pool \(50 MiB\) would take GPU 0 to 110 MiB, over "
                                          r"gpu.memory_budget_mb 100 \(models 0.0 MiB, other cameras' pools 60 MiB\)"):
        budget.reserve_frames(gpu, "yard", 50 * MiB)
    assert series(metrics, "gpu_memory_bytes")['{gpu="0",use="frames"}'] == 60 * MiB  # the refused one not counted
    budget.release_frames(gpu, 60 * MiB)  # gate's decoder closed
    budget.reserve_frames(gpu, "yard", 50 * MiB)
    assert series(metrics, "gpu_memory_bytes")['{gpu="0",use="frames"}'] == 50 * MiB


def test_the_context_and_the_decoders_share_come_from_what_nvml_says_the_process_holds():
    """NVML's per-process figure is a GPU's (hardware that cannot exist here: a function stands in)."""
    metrics = Metrics()
    seen = {"bytes": 500 * MiB}  # the process right after its CUDA context was made
    used = {"bytes": 1000 * MiB}
    gpu = types.SimpleNamespace(index=0, memory_info=lambda: (80_000 * MiB - used["bytes"], 80_000 * MiB))

    def engine():
        used["bytes"] += 300 * MiB
        seen["bytes"] += 300 * MiB

    budget = MemoryBudget(metrics, None, lambda index: seen["bytes"] if index == 0 else None)
    budget.measure(gpu, "default", engine)
    budget.reserve_frames(gpu, "gate", 20 * MiB)
    seen["bytes"] += 20 * MiB + 90 * MiB  # the pool and NVDEC's decoder surfaces
    shares = series(metrics, "gpu_memory_bytes")
    assert shares == {'{gpu="0",use="context"}': 500 * MiB, '{gpu="0",use="model:default"}': 300 * MiB,
                      '{gpu="0",use="frames"}': 20 * MiB, '{gpu="0",use="decoder"}': 90 * MiB}
    blind = Metrics()  # NVML does not list this process (a container's own PID namespace): no such series
    MemoryBudget(blind, None, lambda index: None).measure(gpu, "default", lambda: None)
    assert set(series(blind, "gpu_memory_bytes")) == {'{gpu="0",use="model:default"}'}
