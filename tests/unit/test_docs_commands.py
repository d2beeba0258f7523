"""The commands of the README and the getting-started page work as written on a fresh clone: the
cheap ones are run (validate-config on a shipped file, --help of every CLI command and script),
the others are checked to exist (scripts, files copied, HTTP routes curl asks for)."""
import os
import re
import shlex
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from pipeline.api.server import ROUTES
from scripts.testbed import REPO

PAGES = [REPO / "README.md", REPO / "docs" / "getting-started.md"]
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")


def commands(page) -> list[tuple[dict, list[str]]]:
    """(environment, argv) of every line of the page's ```sh blocks, comments and pipes cut."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", page.read_text(), re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).split(" | ")[0].strip()
            if not line or line.startswith("#"):
                continue
            words = shlex.split(line)
            env = {}
            while words and ENV.match(words[0]):
                key, _, value = words.pop(0).partition("=")
                env[key] = value
            out.append((env, words))
    return out


CASES = [(page.name, env, argv) for page in PAGES for env, argv in commands(page)]


def run(argv, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, **(env or {})})


def route_exists(url: str) -> bool:
    path = urlsplit(url).path
    return any(re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", r.path), path) for r in ROUTES)


@pytest.mark.parametrize("page, env, argv", CASES, ids=[" ".join(c[2])[:60] for c in CASES])
def test_the_command_works_as_written(page, env, argv):
    program, args = argv[0], argv[1:]
    if program == "bash":
        assert (REPO / args[0]).is_file(), args[0]
        assert run(["bash", "-n", args[0]]).returncode == 0
    elif program == ".venv/bin/rtsp-pipeline":
        cli = [sys.executable, "-m", "pipeline"]
        if args[:1] == ["validate-config"] and (REPO / args[1]).is_file():
            result = run(cli + args, env)
            assert result.returncode == 0 and "OK (" in result.stdout, result.stderr
        else:
            sub = [a for a in args if not a.startswith("-")][:1]
            assert run(cli + sub + ["--help"]).returncode == 0, argv
    elif program == "cp":
        assert (REPO / args[0]).is_file(), args[0]
    elif program == "curl":
        urls = [a for a in args if a.startswith("http")]
        assert urls and all(route_exists(u) for u in urls), urls
    elif program.startswith(".venv/bin/python"):
        assert run([sys.executable, args[0], "--help"]).returncode == 0, argv
    else:
        pytest.fail(f"{page}: no rule for `{' '.join(argv)}`: add one to this test")


def test_the_pages_have_commands():
    assert {page for page, _, _ in CASES} == {p.name for p in PAGES}
    assert any(argv[:2] == ["bash", "scripts/demo.sh"] for _, _, argv in CASES)
    assert any(argv[:2] == ["bash", "scripts/test.sh"] for _, _, argv in CASES)
