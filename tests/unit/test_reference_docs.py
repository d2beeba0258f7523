"""The reference pages generated from the code are current, and every relative link in the docs
resolves."""
import re
import subprocess
import sys

import pytest

from scripts.lab.common import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_the_configuration_and_metrics_references_are_current():
    result = subprocess.run([sys.executable, "-m", "scripts.gen.reference_docs", "--check"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
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


# words a description cannot end on ("health on" can end one; "the same for" cannot)
DANGLING = {"a", "an", "the", "for", "of", "and", "or", "with", "its", "their", "than", "whose", "per", "into"}


def generated_descriptions() -> list[str]:
    """The config reference's descriptions: each section's introduction and every row's meaning."""
    page = (REPO / "docs" / "configuration.md").read_text().splitlines()
    intros = [page[i + 2] for i, line in enumerate(page) if line.startswith("## `")]
    meanings = [line.rstrip(" |").rpartition(" | ")[2] for line in page if line.startswith("| `")]
    return [text.strip() for text in intros + meanings if text.strip()]


def test_no_generated_description_ends_mid_sentence():
    """A section's description is its model's whole first docstring paragraph, however many lines
    it wraps onto (the generator once kept only the first line: 'stays the same for')."""
    from pipeline.config import Config
    from scripts.gen.reference_docs import models_of, summary

    texts = generated_descriptions()
    assert len(texts) > 100
    cut = [t for t in texts if t.endswith((",", ":", ";", "(")) or t.split()[-1].lower() in DANGLING]
    assert not cut, cut
    page = (REPO / "docs" / "configuration.md").read_text()
    for name, field in Config.model_fields.items():
        for model in models_of(field.annotation):
            assert summary(model.__doc__) in page, (name, summary(model.__doc__))
