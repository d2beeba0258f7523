"""The reference pages generated from the code are current, and every relative link in the docs
resolves."""
import re
import subprocess
import sys

import pytest

from scripts.testbed import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_the_configuration_and_metrics_references_are_current():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "reference_docs.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_configuration_reference_names_every_key_with_its_bounds():
    page = (REPO / "docs" / "configuration.md").read_text()
    for row in ("| `source.transport` | `auto` \\| `tcp` \\| `udp` | `auto` |",
                "| `cameras[].fps` | number or null | null | > 0, ≤ 240 |",
                "| `cameras[].tracking` | mapping or null | null |  | this camera's tracking settings"):
        assert row in page, row
    assert "(the keys of `tracking`)" in page and "(the keys of `model`)" in page  # written once, then referred to


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"
