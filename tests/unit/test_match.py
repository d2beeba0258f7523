"""The tracker's compiled round (pipeline.s5_match): its assignment against lap.lapjv, the solver
it replaced, and its numba cache read back over starts (a damaged cache is built again)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import lap
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.s5_match import assign

REPO = Path(__file__).resolve().parents[2]


@st.composite
def problems(draw):
    rows, cols = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    cells = st.one_of(st.floats(0.0, 1.6, allow_nan=False), st.just(float("inf")))
    cost = np.array(draw(st.lists(cells, min_size=rows * cols, max_size=rows * cols)), np.float64).reshape(rows, cols)
    return cost, draw(st.floats(0.05, 1.3))


def total(cost: np.ndarray, limit: float, col_of) -> float:
    """What lapjv's extended problem minimises: each pair's cost, limit / 2 for each row and column left out."""
    pairs = [(r, c) for r, c in enumerate(col_of) if c >= 0]
    left = cost.shape[0] + cost.shape[1] - 2 * len(pairs)
    return sum(cost[r, c] for r, c in pairs) + left * limit / 2


@settings(max_examples=300, deadline=None)
@given(problems())
def test_the_assignment_costs_what_lapjv_s_costs_and_never_pairs_over_the_limit(problem):
    cost, limit = problem
    ours = assign(cost, limit).tolist()
    _, theirs, _ = lap.lapjv(np.where(np.isinf(cost), limit + 1, cost), extend_cost=True, cost_limit=limit)
    assert abs(total(cost, limit, ours) - total(cost, limit, theirs.tolist())) < 1e-9
    taken = [c for c in ours if c >= 0]
    assert len(taken) == len(set(taken))  # one to one
    assert all(cost[r, c] < limit for r, c in enumerate(ours) if c >= 0)


def test_crossing_tracks_take_the_cheaper_pairing_not_the_first_come():
    # row 0 would take column 0 greedily (0.1), but 0.1 + 0.7 is dearer than 0.2 + 0.3
    cost = np.array([[0.1, 0.2], [0.3, 0.7]])
    assert assign(cost, 0.8).tolist() == [1, 0]
    assert assign(cost, 0.25).tolist() == [0, -1]  # the limit cuts 0.3 and 0.7: row 1 is left out


KERNEL = """
import sys
sys.path.insert(0, {repo!r})
import numba
from pipeline.s5_match import compile_cached

@numba.njit(cache=True)
def inner(x):
    return x * 2

@numba.njit(cache=True)
def outer(x):
    return inner(x) + 1

compile_cached([outer, inner], lambda: print("result", outer(20)))
"""


def start(module: Path) -> str:
    done = subprocess.run([sys.executable, str(module)], capture_output=True, text=True, timeout=300,
                          cwd=module.parent)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_a_damaged_numba_cache_is_built_again_and_read_at_the_next_start(tmp_path):
    module = tmp_path / "kernels.py"
    module.write_text(textwrap.dedent(KERNEL.format(repo=str(REPO))))
    first = start(module)
    cache = tmp_path / "__pycache__"
    files = sorted(cache.glob("kernels.*"))
    assert "result 41" in first and len(files) >= 4  # an index and code for each function
    for path in files:  # as a bad disk leaves them
        path.write_bytes(path.read_bytes()[:20])
    second = start(module)
    assert "result 41" in second and "could not be read and was built again" in second
    third = start(module)  # the rebuilt cache is read as it is
    assert "result 41" in third and "could not be read" not in third
    assert all(path.stat().st_size > 20 for path in cache.glob("kernels.*"))
