"""scripts/gpu_check.sh gives a trustworthy verdict: never green by accident. It is run here for
real, on synthetic GPU test folders that crash in the ways a driver can make a run crash (abort,
segfault, a hang past the per-test timeout, a collection error), on a bundle whose PyNvVideoCodec
cannot import, behind a wrapper nvcc, and with a relative $OUT. The claim hooks are the real ones
(tests/gpu/claims.py)."""
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFTEST = "from tests.gpu.claims import not_run, pytest_collection_modifyitems, pytest_runtest_logreport  # noqa\n"


def gpu_tests(folder: Path, body: str) -> Path:
    """A folder of GPU tests: the real claim hooks, and `body` as its one test module."""
    folder.mkdir(parents=True)
    (folder / "conftest.py").write_text(CONFTEST)
    (folder / "test_synthetic.py").write_text("import os, signal, time\nimport pytest\n"
                                               "from tests.gpu.claims import not_run\n" + body)
    return folder


def check(tmp_path, steps="tests", out=None, **env) -> tuple[subprocess.CompletedProcess, Path]:
    out = out or tmp_path / "out"
    result = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "STEPS": steps, "OUT": str(out), "SITE": str(tmp_path / "site"),
                                 "PY": sys.executable, **env})
    return result, (REPO / out if not Path(out).is_absolute() else Path(out))


def claims(out: Path) -> list[str]:
    return [line for line in (out / "claims.txt").read_text().splitlines() if line.startswith("CLAIM ")]


PASSING = '''
def test_one():
    """the first claim"""

def test_two():
    """the second claim"""
'''


def test_a_run_where_every_claim_passes_is_green(tmp_path):  # the verdict can be green: the others can fail
    result, out = check(tmp_path, GPU_TESTS=str(gpu_tests(tmp_path / "t", PASSING)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert [c.split(" | ")[0] for c in claims(out)] == ["CLAIM PASS", "CLAIM PASS"]
    assert "VERDICT PASS: 2 PASS, 0 FAIL, 0 SKIP, 0 NOT-RUN" in result.stdout


@pytest.mark.parametrize("crash", ["os.abort()", "os.kill(os.getpid(), signal.SIGSEGV)", "time.sleep(60)"])
def test_a_run_that_dies_fails_every_test_it_did_not_finish(tmp_path, crash):
    """An abort in a driver, a segfault, a hang past the per-test timeout: the tests before keep
    their lines, the one that died and every later one fail, and so does the run."""
    body = f'''
def test_before():
    """decodes"""

def test_dies():
    """the driver's error path"""
    {crash}

def test_after():
    """never reached"""
'''
    started = time.monotonic()
    result, out = check(tmp_path, GPU_TESTS=str(gpu_tests(tmp_path / "t", body)), TEST_TIMEOUT="3")
    lines = claims(out)
    assert result.returncode == 1, result.stdout
    assert lines[0].startswith("CLAIM PASS | decodes")
    for name in ("test_dies", "test_after"):
        assert any(line.startswith("CLAIM FAIL") and f"::{name} " in line + " " and "no result" in line
                   for line in lines), (name, lines)
    if "sleep" not in crash:  # (pytest-timeout's thread method exits 1, like a run with failures)
        assert any("the GPU tests ran to its end" in line for line in lines)  # the exit status is not a result
    assert "VERDICT FAIL" in result.stdout and time.monotonic() - started < 120


def test_a_collection_error_fails_the_run_instead_of_passing_with_no_tests(tmp_path):
    result, out = check(tmp_path, GPU_TESTS=str(gpu_tests(tmp_path / "t", "def broken(:\n")))
    assert result.returncode == 1
    assert any("were collected | none collected" in line for line in claims(out))


SKIPS = '''
def test_tensorrt(record_property):
    """TensorRT matches ONNX Runtime"""
    not_run(record_property, "TensorRT is not installed on this machine")

def test_cannot_build():
    """something else skipped"""
    pytest.skip("TensorRT cannot build here")
'''


def test_only_what_a_test_marks_not_run_is_excused_any_other_skip_fails(tmp_path):
    result, out = check(tmp_path, GPU_TESTS=str(gpu_tests(tmp_path / "t", SKIPS)))
    lines = claims(out)
    assert lines[0].startswith("CLAIM NOT-RUN | TensorRT matches ONNX Runtime | TensorRT is not installed")
    assert lines[1].startswith("CLAIM SKIP | something else skipped")  # the word TensorRT excuses nothing
    assert result.returncode == 1 and "1 SKIP, 1 NOT-RUN" in result.stdout


FAILING_IMPORT = '''raise RuntimeError("Failed to load NVENC library: libnvidia-encode.so.1: cannot open shared object file")
'''


def test_a_pynvvideocodec_that_cannot_import_stops_the_run_at_once_with_its_cause(tmp_path):
    bundle = tmp_path / "whl"
    package = tmp_path / "bundle" / "PyNvVideoCodec"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("import sys\nprint('=== TROUBLESHOOTING STEPS ===', file=sys.stderr)\n"
                                         + FAILING_IMPORT)
    bundle.mkdir()
    with tarfile.open(bundle / "gpu-site.tar.xz", "w:xz") as tar:
        tar.add(package, arcname="PyNvVideoCodec")
    started = time.monotonic()
    result, out = check(tmp_path, steps="unpack,nvdec,pycuda,tests,bench", WHL=str(bundle))
    lines = claims(out)
    assert result.returncode == 1 and len(lines) == 1, lines
    assert lines[0].startswith("CLAIM FAIL | PyNvVideoCodec imports") and "Failed to load NVENC library" in lines[0]
    assert "=== TROUBLESHOOTING STEPS ===" in (out / "log.txt").read_text()  # the whole error is kept
    assert "stopping: without PyNvVideoCodec" in result.stdout and time.monotonic() - started < 60


def test_pycuda_is_built_against_the_real_cuda_root_behind_a_wrapper_nvcc(tmp_path):
    """On these machines nvcc on PATH is a wrapper (`exec /usr/local/cuda-13.0/bin/nvcc "$@"`): its
    folder's parent has no cuda.h. The root is nvcc's own TOP."""
    import shutil

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc on this machine")
    top = subprocess.run([nvcc, "--dryrun", "-v", "-c", "-x", "cu", "/dev/null", "-o", "/dev/null"],
                         capture_output=True, text=True).stderr
    real = Path(next(line[len("#$ TOP="):] for line in top.splitlines() if line.startswith("#$ TOP="))).resolve()
    toolkit = tmp_path / "toolkit"  # the toolkit where nothing else would look for it
    toolkit.symlink_to(real)
    wrapper = tmp_path / "bin" / "nvcc"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {toolkit}/bin/nvcc "$@"\n')
    wrapper.chmod(0o755)
    found = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, "STEPS": "cuda-root", "OUT": str(tmp_path / "o"), "CUDA_HOME": "",
                                "PATH": f"{wrapper.parent}:{os.environ['PATH']}"}).stdout.strip()
    assert found == str(toolkit)  # not the wrapper's folder's parent, nor /usr/local/cuda by luck


def test_a_relative_out_works_and_stays_within_what_the_gpu_machine_brings_back(tmp_path):
    relative = Path(".cache") / f"gpu-check-test-{os.getpid()}"
    try:
        result, out = check(tmp_path, out=relative, GPU_TESTS=str(gpu_tests(tmp_path / "t", PASSING)))
        assert result.returncode == 0, result.stdout
        files = [p for p in out.rglob("*") if p.is_file()]
        assert {p.name for p in files} <= {"claims.txt", "log.txt", "bench.json"} and len(files) <= 8
    finally:
        subprocess.run(["rm", "-rf", str(REPO / relative)])
