"""The verdict of scripts/gpu_check.sh from its claims file: never green by accident.

    python -m scripts.gpu.gpu_verdict missing --expected IDS --claims CLAIMS --rc N --step "GPU tests"
    python -m scripts.gpu.gpu_verdict tally CLAIMS
    python -m scripts.bench.bench_host ... | python -m scripts.gpu.gpu_verdict host-figures

`missing` appends a FAIL claim for every expected test (one node id per line of IDS, as
`pytest --collect-only -q` lists them) that has no line in CLAIMS, which happens when the run
died before that test ended (a segfault, an abort, a collection error, the timeout), and one
for a pytest exit status other than 0 (all passed) or 1 (some failed: they have FAIL lines).

`tally` prints the count of each outcome and exits 1 on any FAIL, and on any SKIP: a claim
skipped on the GPU machine is a claim not checked. NOT-RUN (what the test itself says may
lawfully be absent, such as TensorRT) is listed, not failed. An empty claims file fails too.

`host-figures` turns bench_host's last line (JSON) into FIGURE lines: recorded, not judged (the
host path's targets are for the 2-core CI machine; a GPU node's cores are the figure to learn).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^CLAIM (PASS|FAIL|SKIP|NOT-RUN) \| ")
_PYTEST_EXIT = {2: "interrupted (a test or the timeout stopped the run)", 3: "internal error", 4: "usage error",
                5: "no tests collected", 124: "killed by the step's time limit", 137: "killed (SIGKILL)",
                134: "aborted (SIGABRT)", 139: "crashed (SIGSEGV)"}


def claims(path: Path) -> list[str]:
    """The CLAIM lines of a claims file (other lines ignored)."""
    if not path.exists():
        return []
    return [line for line in path.read_text(errors="replace").splitlines() if _LINE.match(line)]


def tested(lines: list[str]) -> set[str]:
    """Node ids that have a line."""
    return {line.rsplit("| test: ", 1)[1].strip() for line in lines if "| test: " in line}


def expected_ids(path: Path) -> list[str]:
    """Node ids from `pytest --collect-only -q` output."""
    return [line.strip() for line in path.read_text(errors="replace").splitlines() if "::" in line]


def missing(expected: Path, claims_path: Path, rc: int, step: str) -> list[str]:
    """FAIL lines for expected tests without a line and for an exit status that is not a result."""
    have = tested(claims(claims_path))
    why = _PYTEST_EXIT.get(rc, f"exit status {rc}")
    out = [f"CLAIM FAIL | {node} | no result: the run ended before this test did ({why}) | test: {node}"
           for node in expected_ids(expected) if node not in have]
    if rc not in (0, 1):
        out.append(f"CLAIM FAIL | {step} ran to its end | pytest {why} (exit {rc}) | step: {step}")
    if not expected_ids(expected):
        out.append(f"CLAIM FAIL | {step} were collected | none collected (see the log) | step: {step}")
    return out


def tally(lines: list[str]) -> tuple[Counter, bool]:
    """Outcome counts and whether the verdict passes."""
    counts = Counter(_LINE.match(line).group(1) for line in lines)
    return counts, bool(lines) and counts["FAIL"] == 0 and counts["SKIP"] == 0


def host_figures(text: str) -> list[str]:
    """FIGURE lines from bench_host's output (its last line is one JSON object)."""
    r = json.loads(text.strip().splitlines()[-1])
    where = (f"{r['cameras']} cameras x {r['fps']:g} fps offered, K={r['objects']}, {r['model']} model, "
             f"NMS {r.get('nms', 'host')}, {r['sink']} sink, synthetic source and engine, {os.cpu_count()} cores")
    return [f"FIGURE | host path: frames/s inferred and published ({where}) | "
            f"{r['inferred_per_s']:g} / {r['published_per_s']:g} of {r['offered_per_s']:g} offered",
            f"FIGURE | host path: process CPU per frame, capture->published p99 ({where}) | "
            f"{r['cpu_us_per_frame']:g} us, {r['capture_to_published_p99_s']} s; threads {r['cpu_percent_by_thread']}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("missing")
    m.add_argument("--expected", type=Path, required=True)
    m.add_argument("--claims", type=Path, required=True)
    m.add_argument("--rc", type=int, required=True)
    m.add_argument("--step", default="GPU tests")
    t = sub.add_parser("tally")
    t.add_argument("claims", type=Path)
    sub.add_parser("host-figures")
    args = parser.parse_args()
    if args.command == "host-figures":
        print("\n".join(host_figures(sys.stdin.read())))
        return 0
    if args.command == "missing":
        lines = missing(args.expected, args.claims, args.rc, args.step)
        with open(args.claims, "a") as fh:
            fh.writelines(line + "\n" for line in lines)
        for line in lines:
            print(line)
        return 0
    counts, passed = tally(claims(args.claims))
    summary = ", ".join(f"{counts[k]} {k}" for k in ("PASS", "FAIL", "SKIP", "NOT-RUN"))
    print(f"VERDICT {'PASS' if passed else 'FAIL'}: {summary}"
          + ("" if counts else " (no claims at all: the run did not get to them)"))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
