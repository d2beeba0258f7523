"""The commands of the README and the getting-started page work as written on a fresh clone: the
cheap ones are run (validate-config on a shipped file, --help of every CLI command and script),
the others are checked to exist (scripts, files copied, HTTP routes curl asks for). And no file of
the repository names a script that is not there: every `scripts/...` path and `scripts.x.y`
module mentioned in a page, a comment or a command exists, so a moved file leaves no dead path."""
import os
import re
import shlex
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from pipeline.api.server import ROUTES
from scripts.lab.common import REPO

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
        target = args[:2] if args[0] == "-m" else args[:1]
        assert run([sys.executable, *target, "--help"]).returncode == 0, argv
    else:
        pytest.fail(f"{page}: no rule for `{' '.join(argv)}`: add one to this test")


def test_the_pages_have_commands():
    assert {page for page, _, _ in CASES} == {p.name for p in PAGES}
    assert any(argv[:2] == ["bash", "scripts/demo.sh"] for _, _, argv in CASES)
    assert any(argv[:2] == ["bash", "scripts/test.sh"] for _, _, argv in CASES)


SCRIPT_PATH = re.compile(r"(?<![\w./-])scripts/[\w./-]*[\w*]|(?<![\w./-])scripts/[\w./-]*_(?=\{)")
SCRIPT_MODULE = re.compile(r"(?<![\w./])scripts(?:\.\w+)+")
TEXT_SUFFIXES = {".md", ".py", ".sh", ".yaml", ".yml", ".toml", ".json", ".txt", ".cfg", ".service", ""}


def mentioned_scripts(text: str) -> set[str]:
    """Every scripts/... path and scripts.x.y module named in `text`, as a path."""
    paths = set(SCRIPT_PATH.findall(text))
    for module in SCRIPT_MODULE.findall(text):
        paths.add(module.replace(".", "/"))
    return paths


def exists(mention: str) -> bool:
    """A path as written, a pattern (`scripts/bench/peers/peer_*.py`, an f-string's `peer_{name}`),
    a module (`scripts/bench/bench_cpu` -> .py or a package), or a module's attribute
    (`scripts/lab/accuracy.TEST_CAMERAS`, `scripts.lab.daemons.PlacementCluster`)."""
    if mention.endswith("_") or "*" in mention:
        return any(REPO.glob(mention.rstrip("*") + "*"))
    candidates = [mention, mention + ".py", mention + "/__init__.py"]
    head, _, _ = mention.rpartition("/")
    candidates += [head + ".py"] if head.count("/") >= 1 else []
    stem, dot, _ = mention.rpartition(".")
    candidates += [stem + ".py"] if dot and "/" in stem else []
    return any((REPO / c).exists() for c in candidates)


def tracked_text_files() -> list:
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return [REPO / f for f in files if (REPO / f).suffix in TEXT_SUFFIXES and (REPO / f).is_file()
            and f != "tests/unit/test_docs_commands.py"]  # its examples are dead on purpose


def test_every_script_the_repository_names_exists():
    dead = []
    for path in tracked_text_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        dead += [f"{path.relative_to(REPO)}: {m}" for m in sorted(mentioned_scripts(text)) if not exists(m)]
    assert not dead, "\n".join(dead)


def test_the_dead_path_check_catches_a_moved_script():
    assert mentioned_scripts("run `.venv/bin/python -m scripts.bench.bench_cpu` or scripts/lab/scenes.py") == {
        "scripts/bench/bench_cpu", "scripts/lab/scenes.py"}
    assert exists("scripts/bench/peers/peer_*.py") and exists("scripts/bench/peers/peer_")
    assert exists("scripts/bench/bench_cpu") and exists("scripts/lab/scenes.py")
    assert exists("scripts/lab/accuracy.TEST_CAMERAS") and exists("scripts/lab/daemons/PlacementCluster")
    assert not exists("scripts/bench_cpu.py") and not exists("scripts/testbed") and not exists("scripts/lab/nothing")
