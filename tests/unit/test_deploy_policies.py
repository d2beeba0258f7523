"""The deploy files pass a policy scanner: checkov (PyPI), in an environment of its own (it pins
packages our own tests use at other versions), over every manifest and Dockerfile in deploy/, with
the checks deploy/checkov.yaml skips each justified on its line."""
import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from scripts.lab.common import REPO

CHECKOV = "checkov==3.3.30"
VENV = REPO / ".venv-checkov"
CONFIG = REPO / "deploy" / "checkov.yaml"


@pytest.fixture(scope="module")
def checkov() -> str:
    exe = VENV / "bin" / "checkov"
    pinned = subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "show", "checkov"], capture_output=True,
                            text=True).stdout if exe.exists() else ""
    if f"Version: {CHECKOV.split('==')[1]}" not in pinned:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", CHECKOV], check=True, timeout=900)
    return str(exe)


def scan(checkov: str, folder) -> list[dict]:
    result = subprocess.run([checkov, "-d", str(folder), "--config-file", str(CONFIG), "-o", "json"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


def failed(reports) -> list[str]:
    return [f"{r['check_id']} {r['check_name']} ({r['file_path']})" for report in reports
            for r in report["results"]["failed_checks"]]


@pytest.mark.timeout(1200)
def test_every_manifest_and_dockerfile_passes_the_policy_scanner(checkov, tmp_path):
    reports = scan(checkov, REPO / "deploy")
    assert {r["check_type"] for r in reports} >= {"kubernetes", "dockerfile"}
    assert not failed(reports), failed(reports)
    assert sum(r["summary"]["passed"] for r in reports) > 300
    # the scanner does check: a service account token mounted again is found
    copy = tmp_path / "deploy"
    shutil.copytree(REPO / "deploy", copy)
    manifest = copy / "kubernetes" / "statefulset.yaml"
    manifest.write_text(manifest.read_text().replace("automountServiceAccountToken: false", "automountServiceAccountToken: true"))
    assert any(f.startswith("CKV_K8S_38 ") for f in failed(scan(checkov, copy)))


def test_every_skipped_check_says_why_on_its_line():
    skipped = yaml.safe_load(CONFIG.read_text())["skip-check"]
    lines = {line.split("#")[0].strip(" -"): line for line in CONFIG.read_text().splitlines() if line.startswith("  - ")}
    assert skipped and set(skipped) == set(lines)
    for check in skipped:
        assert re.search(r"#\s*\S.{30,}", lines[check]), f"{check}: no reason given on its line"
