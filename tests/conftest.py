"""The whole session's secret audit: every daemon log, HTTP body and Kafka message the tests saw
is searched for the credentials the suite handed a daemon. (The harness, `scripts.lab`, is
importable because pytest puts the repository root on sys.path: `pythonpath` in pyproject.toml.)"""
import os

import pytest

from scripts.lab.audit import TRANSCRIPTS_ENV, emitted_texts, secret_findings

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
