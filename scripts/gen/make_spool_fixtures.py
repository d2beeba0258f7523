"""Write spool folders with the spool code of an earlier release, for the upgrade tests.

    python -m scripts.gen.make_spool_fixtures --rev 4488e7b --out tests/fixtures/spool

For each scenario, `<out>/<rev>-<scenario>/` holds the spool folder exactly as that release left it
(`spool/`), and `manifest.json`: the release, the scenario, and every record today's code must
deliver (topic, key, value as text). The records are real detections/v1 and camera-status/v1
messages of one camera ("gate-1") of a run of that release. The module is taken from git
(`git show REV:pipeline/s6_spool.py`), so this needs the repository's history; the folders it made
are committed, and re-running it for the same release writes the same records (fixed run id and
times) though not the same bytes on disk where that release wrote timestamps.

Scenarios: `delivered` (a clean stop after the broker took everything: what every restart
starts on), `backlog` (a clean stop with the broker away: three segments not delivered, some
records in the middle delivered out of order), `killed` (kill -9 with records not delivered;
the process really is killed, so nothing a close would write is there).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUN_ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
CAMERA = "gate-1"


def messages(count: int) -> list[tuple[str, str, bytes]]:
    """One 'connected' status message, then `count` detection messages of one run."""
    status = {"schema": "camera-status/v1", "camera_id": CAMERA, "status": "connected", "state": "streaming",
              "reason": "stream 1280x720 over TCP", "at": "2026-12-01T08:00:00.000Z", "transport": "tcp"}
    out = [("camera-status", CAMERA, json.dumps(status).encode())]
    for seq in range(count):
        frame = {"seq": seq, "pts": round(seq * 0.2, 3), "captured_at": f"2026-12-01T08:00:{seq // 5:02d}.{seq % 5 * 200:03d}Z",
                 "clock": "receive", "width": 1280, "height": 720}
        detection = {"class_id": seq % 4, "label": ["disc", "square", "triangle", "cross"][seq % 4],
                     "confidence": 0.9, "bbox": [10.0 + seq, 20.0, 110.0 + seq, 220.0]}
        body = {"schema": "detections/v1", "camera_id": CAMERA, "run_id": RUN_ID, "frame": frame,
                "detections": [detection], "model": {"name": "shapes-yolov8n", "sha256": "0" * 64, "backend": "onnxruntime"}}
        out.append(("detections", CAMERA, json.dumps(body).encode()))
    return out


def load_spool_module(rev: str, folder: Path):
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:pipeline/s6_spool.py"], check=True,
                            capture_output=True, text=True).stdout
    path = folder / f"spool_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"spool_{rev}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def write(module, folder: Path, scenario: str) -> list[int]:
    """Run the scenario with that release's Spool; returns the numbers of the records not delivered."""
    spool = module.Spool(folder, max_bytes=1 << 20, segment_bytes=1024)  # small segments: several files
    numbers = [spool.append(*m) for m in messages(24)]
    undelivered = list(numbers)
    if scenario == "delivered":
        for record in spool.read(100):
            spool.ack(record.number)
        undelivered = []
    elif scenario == "backlog":
        for record in spool.read(100):
            if record.number < 6 or record.number in (9, 10, 15):  # in order, then out of order
                spool.ack(record.number)
        undelivered = [n for n in numbers if not (n < 6 or n in (9, 10, 15))]
    if scenario == "killed":
        for record in spool.read(4):
            spool.ack(record.number)
        spool.sync()
        os.kill(os.getpid(), signal.SIGKILL)
    spool.close()
    return undelivered


def make(rev: str, scenario: str, out: Path) -> Path:
    target = out / f"{rev}-{scenario}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        code = (f"import json; from scripts.gen.make_spool_fixtures import *; "
                f"m = load_spool_module({rev!r}, __import__('pathlib').Path({tmp!r})); "
                f"print(json.dumps(write(m, __import__('pathlib').Path({str(target / 'spool')!r}), {scenario!r})), flush=True)")
        if scenario == "killed":  # killed before it can print: its undelivered records are all but the first 4
            result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
            assert result.returncode == -signal.SIGKILL, result.stderr
            undelivered = list(range(4, 25))
        else:
            result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
            undelivered = json.loads(result.stdout)
    records = messages(24)
    manifest = {"release": rev, "scenario": scenario, "made_by": f"python -m scripts.gen.make_spool_fixtures --rev {rev}",
                "undelivered": [{"number": n, "topic": records[n][0], "key": records[n][1], "value": records[n][2].decode()}
                                for n in undelivered]}
    (target / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", required=True, help="the git revision whose spool code writes the folders")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "spool")
    args = parser.parse_args()
    for scenario in ("delivered", "backlog", "killed"):
        print(make(args.rev, scenario, args.out))


if __name__ == "__main__":
    main()
