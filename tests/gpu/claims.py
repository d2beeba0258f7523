"""The GPU tests' claims, written as each test ends (hooks imported by tests/gpu/conftest.py).

With GPU_CHECK_CLAIMS=FILE (scripts/gpu_check.sh sets it), every test of the session appends one
line to FILE the moment its result is known, flushed and synced, so a run that dies afterwards
(a segfault, an abort in a driver, the per-test timeout killing the process) keeps every line
written before it; scripts/gpu/gpu_verdict.py then fails each expected test that has no line:

    CLAIM PASS|FAIL|SKIP|NOT-RUN | the claim (the docstring's first line) | its figure | test: NODEID

NOT-RUN is only for a test that says so itself (`not_run(reason)`: software this machine may
lawfully lack, such as TensorRT); any other skip of a GPU test is SKIP, which the verdict fails.
"""
from __future__ import annotations

import os

import pytest

CLAIMS_ENV = "GPU_CHECK_CLAIMS"


def not_run(record_property, reason: str) -> None:
    """Skip this test as NOT-RUN: what it needs is legitimately absent here (never a failure)."""
    record_property("not_run", reason)
    pytest.skip(f"NOT RUN: {reason}")


def claim_line(outcome: str, claim: str, figure: str, nodeid: str) -> str:
    """One CLAIM line (no field may hold a newline or the separator's own line break)."""
    def clean(text: str) -> str:
        return " ".join(str(text).split())
    return f"CLAIM {outcome} | {clean(claim)} | {clean(figure)} | test: {nodeid}"


def _outcome(report) -> str:
    if report.passed:
        return "PASS"
    if report.skipped:
        return "NOT-RUN" if dict(report.user_properties).get("not_run") else "SKIP"
    return "FAIL"


def _reason(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    text = getattr(report, "longreprtext", "") or ""
    lines = [line for line in text.splitlines() if line.startswith("E ")]
    return (lines[-1][1:].strip() if lines else (text.strip().splitlines() or [""])[-1])[:300]


def _write(line: str) -> None:
    path = os.environ.get(CLAIMS_ENV)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


_DOCS: dict[str, str] = {}
_DONE: set[str] = set()


def pytest_collection_modifyitems(items):
    for item in items:
        doc = (getattr(item, "obj", None).__doc__ or "") if getattr(item, "obj", None) is not None else ""
        _DOCS[item.nodeid] = doc.strip().splitlines()[0] if doc.strip() else item.name


def pytest_runtest_logreport(report):
    """A line as soon as the result is known: after the call, or at a setup that did not pass,
    or at a teardown that failed after a passing call (then the test's line says FAIL)."""
    if report.nodeid in _DONE and not (report.when == "teardown" and report.failed):
        return
    if report.when == "call" or (report.when == "setup" and not report.passed) or \
            (report.when == "teardown" and report.failed):
        figure = dict(report.user_properties).get("figure", "")
        outcome = _outcome(report)
        if outcome != "PASS":
            figure = dict(report.user_properties).get("not_run") or (f"{figure}; " if figure else "") + _reason(report)
        if report.when == "teardown":
            outcome, figure = "FAIL", f"teardown failed: {_reason(report)}"
        _DONE.add(report.nodeid)
        _write(claim_line(outcome, _DOCS.get(report.nodeid, report.nodeid), figure, report.nodeid))
