"""Evidence clips out (issue 37): the daemon keeps each camera's encoded packets and, asked over
its HTTP API, writes a clip from the keyframe at or before pre_s to post_s after, publishes a
clips/v1 message, and serves the file behind its token.

Real parts: a generated scene (H.264, a keyframe every 2 s) over GStreamer's RTSP server, the
Tansu broker, ONNX Runtime; the clip is checked with ffprobe and against the source's pictures.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import uuid

import av
import numpy as np
import pytest

from scripts.lab.accuracy import scene_clip
from scripts.lab.broker import consume
from scripts.lab.cameras import RtspServer
from scripts.lab.common import API_TOKEN, REPO, free_port, wait_for
from scripts.lab.daemons import Daemon, daemon_config, http_get, http_request

MODEL = {"path": REPO / "engines" / "shapes-yolov8n.onnx", "input_size": 320, "confidence": 0.35}
FRAMES, FPS = 200, 25  # 8 s, looped by the server
BEARER = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture(scope="module")
def scene(scene_folder):
    return scene_clip(scene_folder, 9101, 1280, 720, FRAMES)


def keyframe_times(path) -> list[float]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-skip_frame", "nokey", "-show_entries",
                          "frame=pts_time", "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True)
    return [round(float(line.strip(",")), 3) for line in out.stdout.split()]


def pictures(path, shift=0.0) -> dict[float, np.ndarray]:
    with av.open(str(path)) as container:
        return {round(float(f.time) + shift, 3): f.to_ndarray(format="rgb24") for f in container.decode(video=0)}


def test_an_api_clip_starts_at_a_keyframe_pre_s_before_covers_post_s_and_shows_the_sources_pictures(
        scene, broker, tmp_path):
    topic = f"clips-{uuid.uuid4().hex[:8]}"
    port = free_port()
    with RtspServer({"scene": scene}) as rtsp:
        config = daemon_config(tmp_path / f"{topic}.yaml", MODEL, broker.bootstrap, [("cam", rtsp.url("scene"), 5)],
                               topic=topic, status_topic=f"{topic}-status", metrics_port=port,
                               clips={"enabled": True, "folder": str(tmp_path / "clips"), "pre_s": 3, "post_s": 2,
                                      "topic": f"{topic}-clips"},
                               api={"tokens_env": "RTSP_PIPELINE_API_TOKENS"})
        daemon = Daemon(config, tmp_path / "clips.log", env={"RTSP_PIPELINE_API_TOKENS": API_TOKEN})
        daemon.start()
        base = f"http://127.0.0.1:{port}"
        try:
            # into the first pass of the clip, far enough for pre_s (the server restarts pts at 0 per pass)
            # (pre_s 2 from 4.8 s on: the keyframe at 2 s; the one at 0 s, the connection's first packet, has no
            # timestamp from FFmpeg and starts no GOP; post_s 2 ends before the pass does, at 8 s)
            consume(broker.bootstrap, [topic], lambda rs: any(r.value["frame"]["pts"] >= 4.8 for r in rs), 60)
            assert http_request("POST", f"{base}/v1/cameras/cam/clips", b"{}", {})[0] == 401  # behind the token
            status, _, body = http_request("POST", f"{base}/v1/cameras/cam/clips", json.dumps({"pre_s": 2, "post_s": 2}).encode(),
                                           {**BEARER, "Content-Type": "application/json"})
            assert status == 202, body
            started = json.loads(body)
            assert started["camera_id"] == "cam" and started["pre_s"] == 2 and started["post_s"] == 2
            assert http_request("POST", f"{base}/v1/cameras/nope/clips", b"", BEARER)[0] == 404
            assert http_request("POST", f"{base}/v1/cameras/cam/clips", b'{"post_s": 500}', BEARER)[0] == 400
            (record,) = consume(broker.bootstrap, [f"{topic}-clips"], lambda rs: len(rs) >= 1, 30)
            message = record.value
            url = f"{base}{message['url']}"
            assert http_get(url)[0] == 401
            status, headers, data = http_request("GET", url, None, BEARER)
            assert status == 200 and headers.get("Content-Type") == "video/mp4"
        finally:
            assert daemon.stop() == 0, daemon.log_text()[-3000:]

    assert record.key == "cam" and message["schema"] == "clips/v1" and message["status"] == "written"
    assert message["clip_id"] == started["clip_id"] and message["ended_early"] is None
    assert message["trigger"] == {"kind": "api"}
    assert len(data) == message["size"] and hashlib.sha256(data).hexdigest() == message["sha256"]
    clip = tmp_path / "clips" / "cam" / message["file"]
    assert clip.read_bytes() == data

    first, last = message["first_pts"], message["last_pts"]
    assert round(first, 3) in keyframe_times(scene)  # a clip starts at a keyframe of the source
    assert last - first >= 2 + 2 - 2.0 / FPS  # pre_s (from the keyframe at or before it) and post_s
    assert last - first < 2 + 2 + 2.0 + 1.0  # at most a GOP (2 s) more, and the time to answer
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,duration",
                                       "-of", "json", str(clip)], capture_output=True, text=True, check=True).stdout)
    assert probe["streams"][0]["codec_name"] == "h264"
    assert abs(float(probe["streams"][0]["duration"]) - (last - first)) <= 0.1
    cut, source = pictures(clip, shift=first), pictures(scene)
    assert len(cut) >= (last - first) * FPS - 1
    assert all(np.array_equal(cut[t], source[t]) for t in cut), "a clip's picture differs from the source's"
