"""The suite's secret audit: what daemons emitted (logs, HTTP bodies, Kafka messages) is kept when
a test session asks for it, then searched for every credential the suite handed out.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from scripts.lab.common import SUITE_SECRETS

TRANSCRIPTS_ENV = "PIPELINE_TEST_TRANSCRIPTS"  # folder where helpers keep what daemons emitted

_URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:([^@\s/]+)@", re.IGNORECASE)


# ---------------------------------------------------------------------- the suite's secret audit
def transcribe(kind: str, text: str) -> None:
    """Keep something a daemon emitted (an HTTP body, a Kafka message, the path of its log) for
    the secret audit, when the test session asked for it (TRANSCRIPTS_ENV names the folder)."""
    folder = os.environ.get(TRANSCRIPTS_ENV)
    if folder:
        with open(Path(folder) / f"{kind}.txt", "a", errors="replace") as fh:
            fh.write(text.rstrip("\n") + "\n")


def emitted_texts(folder: Path) -> dict[str, str]:
    """{source: text} of everything transcribed into `folder`: each daemon log it names, and
    the HTTP bodies and Kafka messages the tests read."""
    texts = {}
    logs = folder / "daemon-logs.txt"
    for line in logs.read_text().splitlines() if logs.exists() else []:
        with contextlib.suppress(OSError):
            texts[line] = Path(line).read_text(errors="replace")
    for kind in ("http", "kafka"):
        path = folder / f"{kind}.txt"
        if path.exists():
            texts[kind] = path.read_text(errors="replace")
    return texts


def secret_findings(texts: dict[str, str], secrets: tuple[str, ...] = SUITE_SECRETS) -> list[str]:
    """One line per leak: a listed secret, or any URL with a password in it."""
    findings = []
    for source, text in texts.items():
        for number, line in enumerate(text.splitlines(), 1):
            leaked = [s for s in secrets if s in line]
            leaked += [m.group(1) for m in _URL_PASSWORD.finditer(line) if m.group(1) != "***"]
            if leaked:
                findings.append(f"{source}:{number}: {sorted(set(leaked))}")
    return findings
