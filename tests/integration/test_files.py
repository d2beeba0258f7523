"""Recordings in (issue 37): file:// cameras and `rtsp-pipeline analyze` read every frame at full
speed (back-pressure, not dropping), give the detections the same clip gives over RTSP, stamp
captured_at from the recording's start, and end `finished`.

Real parts: a generated ground-truth scene (scripts/lab/scenes.py) encoded by ffmpeg as H.264 and
H.265 with B-frames, GStreamer's RTSP server, the Tansu broker, ONNX Runtime with the shapes model.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pytest

from scripts.lab.accuracy import scene_clip
from scripts.lab.broker import consume
from scripts.lab.cameras import RtspServer
from scripts.lab.common import REPO, free_port, wait_for
from scripts.lab.daemons import Daemon, daemon_config, http_get, metric_values

MODEL = {"path": REPO / "engines" / "shapes-yolov8n.onnx", "input_size": 320, "confidence": 0.35}
FPS = 25
FRAMES = 100  # 4 s of the scene
CREATED = "2026-12-06T14:03:12Z"
EXE = [str(Path(sys.executable).with_name("rtsp-pipeline"))]


@pytest.fixture(scope="module")
def scene(scene_folder) -> Path:
    """A held-out scene (seed 9101), 1280x720, H.264 without B-frames (as the RTSP server serves it)."""
    return scene_clip(scene_folder, 9101, 1280, 720, FRAMES)


@pytest.fixture(scope="module")
def recordings(scene, tmp_path_factory) -> dict[str, Path]:
    """The scene as H.264 with B-frames and a creation_time (MP4), and as H.265 with B-frames and
    no creation_time (Matroska)."""
    folder = tmp_path_factory.mktemp("recordings")
    made = {
        "h264-bframes": (folder / "h264 bframes.mp4", ["-c:v", "libx264", "-bf", "3", "-g", "50",
                                                        "-metadata", f"creation_time={CREATED}"]),
        "h265-bframes": (folder / "h265-bframes.mkv", ["-c:v", "libx265", "-x265-params", "bframes=4:log-level=error",
                                                        "-g", "50"]),
    }
    for path, codec in made.values():
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(scene), *codec, "-pix_fmt", "yuv420p", str(path)],
                       check=True)
    return {name: path for name, (path, _) in made.items()}


def frame_count(path: Path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_frames", "-of", "csv=p=0", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.strip())


def config_for(folder: Path, broker, topic: str, cameras: list[tuple], **sections) -> Path:
    return daemon_config(folder / f"{topic}.yaml", MODEL, broker.bootstrap, cameras, topic=topic,
                         status_topic=f"{topic}-status", metrics_port=free_port(),
                         tracking={"enabled": False}, **sections)


def analyze(config: Path, files: list[Path], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*EXE, "analyze", *map(str, files), "--config", str(config), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def by_camera(records) -> dict[str, list[dict]]:
    found = defaultdict(list)
    for r in records:
        found[r.value["camera_id"]].append(r.value)
    return found


def rounded(detections: list[dict]) -> list[tuple]:
    return sorted((d["class_id"], *d["bbox"], d["confidence"]) for d in detections)


def test_a_clip_analysed_as_a_file_gives_the_detections_it_gives_over_rtsp(scene, broker, tmp_path):
    """Frame by frame (matched by pts), the same classes, boxes and confidences."""
    topic = f"same-{uuid.uuid4().hex[:8]}"
    with RtspServer({"scene": scene}) as rtsp:
        config = config_for(tmp_path, broker, topic, [("live", rtsp.url("scene"), None)])
        daemon = Daemon(config, tmp_path / "live.log")
        daemon.start()
        try:
            # every frame of the first pass of the clip (its pts restart at 0 on each loop)
            live = consume(broker.bootstrap, [topic], lambda rs: any(r.value["frame"]["pts"] >= 3.9 for r in rs), 90)
        finally:
            assert daemon.stop() == 0, daemon.log_text()[-3000:]
    over_rtsp = {round(m["frame"]["pts"] * FPS): m for m in by_camera(live)["live"] if m["frame"]["pts"] < 3.95}

    file_topic = f"{topic}-file"
    done = analyze(config_for(tmp_path, broker, file_topic, [("unused", "rtsp://127.0.0.1/none", None)]), [scene])
    assert done.returncode == 0, done.stderr[-3000:]
    records = consume(broker.bootstrap, [file_topic], lambda rs: len(rs) >= FRAMES, 30)
    as_file = {round(m["frame"]["pts"] * FPS): m for m in by_camera(records)[scene.stem]}

    assert sorted(as_file) == list(range(FRAMES))  # the file: every frame
    assert len(over_rtsp) >= 0.8 * FRAMES, f"only {len(over_rtsp)} frames over RTSP"  # real time may drop a few
    compared = detections = 0
    for index, live_message in over_rtsp.items():
        ours, theirs = rounded(as_file[index]["detections"]), rounded(live_message["detections"])
        assert len(ours) == len(theirs), f"frame {index}: {len(ours)} detections from the file, {len(theirs)} over RTSP"
        for a, b in zip(ours, theirs):
            assert a[0] == b[0] and max(abs(x - y) for x, y in zip(a[1:5], b[1:5])) <= 0.5 and abs(a[5] - b[5]) <= 1e-3, \
                f"frame {index}: {a} from the file, {b} over RTSP"
        compared += 1
        detections += len(ours)
    assert compared >= 80 and detections >= 5 * compared  # the scene has several objects a frame


def test_analyze_reads_every_frame_of_h264_and_h265_with_b_frames_and_stamps_their_capture_time(
        recordings, broker, tmp_path):
    topic = f"analyze-{uuid.uuid4().hex[:8]}"
    config = config_for(tmp_path, broker, topic, [("unused", "rtsp://127.0.0.1/none", None)])
    files = [recordings["h264-bframes"], recordings["h265-bframes"]]
    done = analyze(config, files)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = {"h264-bframes": frame_count(files[0]), "h265-bframes": frame_count(files[1])}
    assert expected == {"h264-bframes": FRAMES, "h265-bframes": FRAMES}
    summary = done.stdout
    assert "files: 2 (2 read to the end)" in summary
    assert f"frames: {2 * FRAMES} in " in summary
    assert "messages published: " in summary and "detections: " in summary

    records = consume(broker.bootstrap, [topic, f"{topic}-status"],
                      lambda rs: sum(r.topic == topic for r in rs) >= 2 * FRAMES
                      and sum(r.value.get("state") == "stopped" for r in rs) >= 2, 30)
    messages = by_camera([r for r in records if r.topic == topic])
    states = by_camera([r for r in records if r.topic != topic])
    created = datetime.fromisoformat(CREATED.replace("Z", "+00:00")).timestamp()
    for cam, count in expected.items():
        got = messages[cam]
        assert [m["frame"]["seq"] for m in got] == list(range(count)), f"{cam}: a frame missing or out of order"
        pts = [m["frame"]["pts"] for m in got]
        assert pts == sorted(pts) and round(pts[-1] - pts[0], 3) == round((count - 1) / FPS, 3)  # presentation order
        assert [s["state"] for s in states[cam]] == ["connecting", "streaming", "finished", "stopped"]
        assert states[cam][2]["status"] == "finished" and f"{count} frames decoded" in states[cam][2]["reason"]
        assert sum(len(m["detections"]) for m in got) >= 5 * count
    for m in messages["h264-bframes"]:  # the recording's creation_time plus the frame's time in it
        captured = datetime.fromisoformat(m["frame"]["captured_at"].replace("Z", "+00:00")).timestamp()
        assert m["frame"]["clock"] == "file" and abs(captured - (created + m["frame"]["pts"])) < 0.002
    assert {m["frame"]["clock"] for m in messages["h265-bframes"]} == {"receive"}  # no creation_time in it


def test_file_cameras_in_the_daemon_batch_together_drop_nothing_and_finish(scene, broker, tmp_path):
    """Four file cameras: batches fill from several at once; every frame is inferred; a camera's
    start_time gives its clock; the daemon stays ready with every file finished."""
    topic = f"files-{uuid.uuid4().hex[:8]}"
    url = "file://" + str(scene)
    cameras = [(f"f{i}", url, None) for i in range(3)] + [("dated", url, None, {"start_time": CREATED})]
    port = free_port()
    # one ONNX Runtime run at a time (on 2 threads): batches of up to 4, not the CPU path's parallel runs of 1
    model = {**MODEL, "onnxruntime": {"threads": 2, "parallel_runs": 1}}
    config = daemon_config(tmp_path / f"{topic}.yaml", model, broker.bootstrap, cameras, topic=topic,
                           status_topic=f"{topic}-status", metrics_port=port, batching={"max_batch": 4})
    daemon = Daemon(config, tmp_path / "files.log")
    daemon.start()
    try:
        records = consume(broker.bootstrap, [f"{topic}-status"],
                          lambda rs: sum(r.value["state"] == "finished" for r in rs) >= 4, 120)
        assert sum(r.value["state"] == "finished" for r in records) == 4, daemon.log_text()[-3000:]
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 10, "ready with every file finished")

        def through() -> str | None:  # `finished` says a file was read: its last frames may still be inferred
            text = http_get(f"http://127.0.0.1:{port}/metrics")[1]
            done = metric_values(text, "rtsp_pipeline_frames_inferred_total")
            return text if len(done) == 4 and set(done.values()) == {float(FRAMES)} else None

        metrics = wait_for(through, 10, f"every camera's {FRAMES} frames inferred")
    finally:
        assert daemon.stop() == 0, daemon.log_text()[-3000:]
    assert not any(metric_values(metrics, "rtsp_pipeline_frames_dropped_total").values())
    batches = metric_values(metrics, "rtsp_pipeline_batch_size_count")
    frames = metric_values(metrics, "rtsp_pipeline_batch_size_sum")
    mean = sum(frames.values()) / sum(batches.values())
    assert mean >= 2.0, f"batches of {mean:.2f} frames on average: the files did not batch together"
    messages = by_camera(consume(broker.bootstrap, [topic], lambda rs: len(rs) >= 4 * FRAMES, 30))
    assert {cam: len(m) for cam, m in messages.items()} == {"f0": FRAMES, "f1": FRAMES, "f2": FRAMES, "dated": FRAMES}
    assert {m["frame"]["clock"] for m in messages["dated"]} == {"config"}
    assert messages["dated"][0]["frame"]["captured_at"] == "2026-12-06T14:03:12.000Z"


def test_analyze_refuses_what_it_cannot_read_and_stops_when_interrupted(scene, broker, tmp_path):
    config = config_for(tmp_path, broker, f"bad-{uuid.uuid4().hex[:8]}", [("unused", "rtsp://127.0.0.1/none", None)])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(4096))
    refused = analyze(config, [tmp_path / "missing.mp4", garbage, scene])
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{tmp_path / 'missing.mp4'}: cannot be analysed: ")
    assert lines[1].startswith(f"{garbage}: cannot be analysed: ")

    long = tmp_path / "long.mp4"  # about 30 s of inference on this machine's CPU
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", "19", "-i", str(scene), "-c", "copy", str(long)],
                   check=True)
    proc = subprocess.Popen([*EXE, "analyze", str(long), "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    time.sleep(6)
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and time.monotonic() - started < 15
    assert "interrupted before every file was through" in err
    assert "files: 1 (0 read to the end)" in out  # the summary says what was done
