"""Make `scripts.testbed` importable from tests (the repo root on sys.path), and audit the whole
session for leaked credentials: every daemon log, HTTP body and Kafka message the tests saw."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.testbed import TRANSCRIPTS_ENV, emitted_texts, secret_findings  # noqa: E402

AUDIT_SUMMARY = pytest.StashKey[str]()


@pytest.fixture(scope="session", autouse=True)
def secret_audit(tmp_path_factory, request):
    """After the last test: no credential the suite handed a daemon appears in what it emitted."""
    folder = tmp_path_factory.mktemp("emitted")
    previous = os.environ.get(TRANSCRIPTS_ENV)
    os.environ[TRANSCRIPTS_ENV] = str(folder)
    yield
    if previous is None:
        os.environ.pop(TRANSCRIPTS_ENV, None)
    else:
        os.environ[TRANSCRIPTS_ENV] = previous
    texts = emitted_texts(folder)
    findings = secret_findings(texts)
    total = sum(len(t) for t in texts.values())
    request.config.stash[AUDIT_SUMMARY] = (f"secret audit: {len(texts)} sources (daemon logs, HTTP bodies, "
                                           f"Kafka messages), {total} characters, {len(findings)} leaks")
    assert not findings, "credentials leaked into what the daemon emitted:\n" + "\n".join(findings[:50])


def pytest_terminal_summary(terminalreporter, config):
    if AUDIT_SUMMARY in config.stash:
        terminalreporter.write_line(config.stash[AUDIT_SUMMARY])
