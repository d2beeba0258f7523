"""Evidence clips out (issue 37): the daemon keeps each camera's encoded packets and, asked over
its HTTP API, writes a clip from the keyframe at or before pre_s to post_s after, publishes a
clips/v1 message, and serves the file behind its token.

Real parts: a generated scene (H.264, a keyframe every 2 s) over GStreamer's RTSP server, the
Tansu broker, ONNX Runtime; the clip is checked with ffprobe and against the source's pictures.
"""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone

import av
import numpy as np
import pytest

from scripts.bench.bench_tracking import tracking_clip
from scripts.lab.accuracy import iou, scene_clip
from scripts.lab.broker import consume
from scripts.lab.cameras import RtspServer
from scripts.lab.common import API_TOKEN, REPO, free_port, wait_for
from scripts.lab.daemons import Daemon, daemon_config, http_get, http_request, metric_values
from scripts.lab.scenes import CLASSES, Truth, truth_path
from scripts.lab.track_e2e import AlertingConsumer, lines_of

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


def captured(message: dict) -> float:
    return datetime.fromisoformat(message["frame"]["captured_at"].replace("Z", "+00:00")).timestamp()


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
            # a clip still collecting its post_s when the camera's connection ends: written as far as
            # it got, saying why (asked early in a pass of the looped clip: its pts jump back at 8 s)
            asked = time.time()
            consume(broker.bootstrap, [topic], lambda rs: any(
                1.0 <= r.value["frame"]["pts"] <= 3.5 and captured(r.value) > asked for r in rs), 30)
            status, _, body = http_request("POST", f"{base}/v1/cameras/cam/clips", b'{"pre_s": 1, "post_s": 30}',
                                           {**BEARER, "Content-Type": "application/json"})
            assert status == 202, body
            time.sleep(1.5)
            rtsp.stop()
            cut_short = consume(broker.bootstrap, [f"{topic}-clips"], lambda rs: len(rs) >= 2, 40)[1].value
            short_file = tmp_path / "clips" / "cam" / cut_short["file"]
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

    assert cut_short["clip_id"] == json.loads(body)["clip_id"] and cut_short["status"] == "written"
    assert cut_short["ended_early"] == "the camera's connection ended before post_s was reached", cut_short
    assert 1.0 <= cut_short["last_pts"] - cut_short["first_pts"] < 30  # what it had, not its 30 s
    cut = pictures(short_file, shift=cut_short["first_pts"])
    assert len(cut) >= (cut_short["last_pts"] - cut_short["first_pts"]) * FPS - 1  # and it plays
    assert all(np.array_equal(cut[t], source[t % 8.0 if t >= 8.0 else t]) for t in cut if round(t % 8.0, 3) in source)


# ---------------------------------------------------------------- a rule's clip and snapshots
RULE_PRE_S, RULE_POST_S, GOP_S = 2.0, 2.0, 2.0
LINE_X = 400  # the "along" line of scripts.lab.track_e2e.lines_of: x = width / 2 on the 800 x 600 scene


def hevc_with_bframes(source, folder):
    """The tracking scene re-encoded as H.265 with 3 B-frames (open GOPs, x265's default), a
    keyframe every 2 s, its truth beside it."""
    out = folder / f"{source.stem}-hevc-b3.mp4"
    if not out.exists():
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(source), "-c:v", "libx265", "-preset",
                        "veryfast", "-tag:v", "hvc1", "-x265-params",
                        "log-level=error:keyint=50:min-keyint=50:scenecut=0:bframes=3", str(out)], check=True)
        truth_path(out).write_bytes(truth_path(source).read_bytes())
    return out


def truth_crossing(truth: Truth, object_id: int, before: float) -> float | None:
    """When (media seconds) the object's anchor (its box's bottom middle) last went over the line
    at or before `before`, by the truth."""
    side, when = None, None
    for index in range(truth.index_of(before) + 1):
        box = next((t for t in truth.frames[index] if t.object_id == object_id), None)
        if box is None:
            continue
        now = (box.bbox[0] + box.bbox[2]) / 2 > LINE_X
        if side is not None and now != side:
            when = index / truth.fps
        side = now
    return when


def test_a_line_rule_gets_a_clip_over_its_crossing_and_a_snapshot_of_its_track_over_kafka(
        scene_folder, broker, tmp_path):
    """H.265 with B-frames over RTSP, the daemon tracking it with clips on, and the alerting
    consumer (another process, as on another host) with a line rule asking for a clip and a
    snapshot: its request reaches the daemon through the requests topic, the clip covers the
    crossing the truth has, and the snapshot's box is the track's object by the truth."""
    source = hevc_with_bframes(tracking_clip(scene_folder, 9203, 800, 600), tmp_path)
    truth = Truth.load(truth_path(source))
    topic, port = f"rule-{uuid.uuid4().hex[:8]}", free_port()
    requests, clips_topic = f"{topic}-requests", f"{topic}-clips"
    lines = lines_of("trk", 800, 600)
    rules = [{"id": "crossing", "kind": "line", "line": "along-trk", "classes": list(CLASSES),
              "clip": {"pre_s": RULE_PRE_S, "post_s": RULE_POST_S}, "snapshot": True}]
    with RtspServer({"trk": source}) as rtsp, \
            AlertingConsumer(tmp_path, broker, topic, lines, rules, kafka={"requests_topic": requests}):
        config = daemon_config(tmp_path / f"{topic}.yaml", MODEL, broker.bootstrap, [("trk", rtsp.url("trk"), 5)],
                               topic=topic, status_topic=f"{topic}-status", metrics_port=port,
                               clips={"enabled": True, "folder": str(tmp_path / "clips"), "pre_s": 3, "late_s": 5,
                                      "topic": clips_topic, "requests_topic": requests},
                               api={"tokens_env": "RTSP_PIPELINE_API_TOKENS"})
        daemon = Daemon(config, tmp_path / "rule.log", env={"RTSP_PIPELINE_API_TOKENS": API_TOKEN})
        daemon.start()
        base = f"http://127.0.0.1:{port}"
        try:
            def chosen(records):
                """A crossing far enough into a pass of the 15 s clip for pre_s and post_s, its clip
                and its snapshots announced."""
                pts = {(r.key, r.value["frame"]["seq"]): r.value["frame"]["pts"] for r in records
                       if r.topic == topic and "frame" in r.value}
                clipped = {r.value["clip_id"] for r in records if r.topic == clips_topic and "clip_id" in r.value}
                shot = {r.value["request_id"] for r in records if r.topic == clips_topic
                        and r.value["schema"] == "snapshots/v1"}
                for r in records:
                    if r.topic != f"{topic}-alerts" or "evidence" not in r.value:
                        continue
                    at = pts.get((r.key, r.value["frame"]["seq"]))
                    rid = r.value["evidence"]["request_id"]
                    if (at is not None and RULE_PRE_S + GOP_S <= at <= 15 - RULE_POST_S - 0.3 and rid in clipped
                            and rid in shot):
                        return r.value, at
                return None

            records = consume(broker.bootstrap, [topic, f"{topic}-alerts", clips_topic],
                              lambda rs: chosen(rs) is not None, 150)
            found = chosen(records)
            assert found is not None, "no crossing in a pass of the clip got its clip and snapshots in 150 s: " + \
                daemon.log_text()[-2000:]
            alert, at = found
            rid = alert["evidence"]["request_id"]
            clip_message = next(r.value for r in records if r.topic == clips_topic and r.value.get("clip_id") == rid)
            snaps = [r.value for r in records if r.topic == clips_topic and r.value["schema"] == "snapshots/v1"
                     and r.value["request_id"] == rid]
            assert len(snaps) == 1  # a request is served once
            (snap,) = snaps[0]["snapshots"]
            assert snap["status"] == "written", snap
            status, _, video = http_request("GET", f"{base}{alert['evidence']['clip']['url']}", None, BEARER)
            assert status == 200
            status, headers, plain = http_request("GET", f"{base}{snap['url']}", None, BEARER)
            assert status == 200 and headers.get("Content-Type") == "image/jpeg"
            status, _, boxed = http_request("GET", f"{base}{snap['boxed_url']}", None, BEARER)
            assert status == 200
            assert http_get(f"{base}{snap['url']}")[0] == 401  # behind the token
            assert http_request("GET", f"{base}/v1/snapshots/{rid}-99999", None, BEARER)[0] == 404
            metrics = http_get(f"{base}/metrics")[1]
        finally:
            assert daemon.stop() == 0, daemon.log_text()[-3000:]

    # the alert names what the daemon wrote, and the clip is what the rule asked for
    assert clip_message["status"] == "written" and clip_message["trigger"]["rule"] == "crossing"
    assert clip_message["trigger"]["alert_id"] == alert["alert_id"] and clip_message["track_ids"] == alert["track_ids"]
    assert len(video) == clip_message["size"] and hashlib.sha256(video).hexdigest() == clip_message["sha256"]
    clip = tmp_path / "clips" / "trk" / clip_message["file"]
    first, last = clip_message["first_pts"], clip_message["last_pts"]
    keys = keyframe_times(source)
    assert round(first, 3) in keys, (first, keys)  # starts at a keyframe of the source ...
    assert first <= at - RULE_PRE_S + 1e-3  # ... at or before pre_s before the alert's frame ...
    assert not [k for k in keys if first < k <= at - RULE_PRE_S + 1e-3]  # ... the last such
    assert last >= at + RULE_POST_S - 1.5 / 25  # and covers post_s after it
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,duration",
                                       "-of", "json", str(clip)], capture_output=True, text=True, check=True).stdout)
    assert probe["streams"][0]["codec_name"] == "hevc"
    cut, pictures_of_source = pictures(clip, shift=first), pictures(source)
    assert len(cut) >= (last - first) * 25 - 1
    assert all(np.array_equal(cut[t], pictures_of_source[t]) for t in cut), "a clip's picture differs from the source's"

    # the alert's track is an object of the truth that crossed the line just before the alert's frame
    (det,) = alert["detections"]
    crossing_object = max(truth.at_pts(at), key=lambda t: iou(t.bbox, det["bbox"]))
    assert iou(crossing_object.bbox, det["bbox"]) >= 0.5
    crossed = truth_crossing(truth, crossing_object.object_id, at)
    assert crossed is not None and at - 1.5 <= crossed <= at, (crossed, at)
    assert first <= crossed - RULE_PRE_S + 1.5 and last >= crossed + RULE_POST_S  # the truth's crossing is covered

    # the snapshot: the track's best sighting, its box on the same object by the truth, and the
    # picture the source shows at its pts
    assert snap["status"] == "written" and snap["track_id"] == det["track_id"]
    assert len(plain) == snap["size"] and hashlib.sha256(plain).hexdigest() == snap["sha256"]
    shown = [t for t in truth.at_pts(snap["pts"]) if t.object_id == crossing_object.object_id]
    print(f"\nalert at pts {at:.2f} (truth crossing {crossed:.2f}); clip {first:.2f}-{last:.2f} s; snapshot of track "
          f"{snap['track_id']} at {snap['pts']:.2f}, IoU with the truth {iou(shown[0].bbox, snap['bbox']) if shown else 0:.3f}")
    assert shown and iou(shown[0].bbox, snap["bbox"]) >= 0.7, (shown, snap)
    with av.open(io.BytesIO(plain)) as jpeg:
        picture = next(jpeg.decode(video=0)).to_ndarray(format="rgb24")
    expected = pictures_of_source[round(snap["pts"], 3)]
    assert picture.shape == expected.shape
    assert np.abs(picture.astype(int) - expected).mean() < 4  # the same picture, as a JPEG
    with av.open(io.BytesIO(boxed)) as jpeg:
        drawn = next(jpeg.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    x1, y1, x2, y2 = (round(v) for v in snap["bbox"])
    edge = drawn[(y1 + y2) // 2, max(0, x1 - 1):x1 + 3]  # the box's left edge, in red
    assert (edge[:, 0] > 180).any() and (edge[:, 1] < 110).any(), edge
    requests_served = metric_values(metrics, "rtsp_pipeline_clip_requests_total")
    assert requests_served.get('{outcome="accepted"}', 0) >= 1


def test_with_placement_a_rules_request_is_served_once_by_the_node_that_runs_the_camera(scene, broker, tmp_path):
    """Two nodes of a placement group with clips on, each reading the whole requests topic: a
    request for each camera is cut by the node the group gave the camera, once; the other node
    counts it as not its own."""
    from scripts.lab.broker import produce
    from scripts.lab.daemons import PlacementCluster

    requests, clips_topic = f"req-{uuid.uuid4().hex[:8]}", f"clips-{uuid.uuid4().hex[:8]}"
    with RtspServer({"cam": scene}) as rtsp:
        cluster = PlacementCluster(tmp_path, rtsp, broker.bootstrap, {"cam-0": 5.0, "cam-1": 5.0}, settings={
            "clips": {"enabled": True, "folder": str(tmp_path / "clips"), "pre_s": 3, "topic": clips_topic,
                      "requests_topic": requests}})
        try:
            cluster.start("n0", 5.0)  # room for one camera each: the group puts one on each node
            cluster.start("n1", 5.0)
            placed = cluster.wait_placed(90, "both cameras placed")
            time.sleep(3)  # a GOP or more in each ring
            at = datetime.now(timezone.utc) - timedelta(seconds=1)
            produce(broker.bootstrap, requests, [(cam, json.dumps({
                "schema": "clip-requests/v1", "request_id": f"{at:%Y%m%dT%H%M%SZ}-0000000{k}", "camera_id": cam,
                "at": at.isoformat().replace("+00:00", "Z"), "trigger": {"kind": "rule", "rule": "r"},
                "clip": {"pre_s": 1, "post_s": 1}}).encode()) for k, cam in enumerate(["cam-0", "cam-1"])])
            got = consume(broker.bootstrap, [clips_topic], lambda rs: len(rs) >= 2, 40)
            time.sleep(2)
            got = consume(broker.bootstrap, [clips_topic], lambda rs: False, 3)  # and no more than those
            counted = {node: metric_values(http_get(cluster.url(node, "/metrics"))[1], "rtsp_pipeline_clip_requests_total")
                       for node in ("n0", "n1")}
        finally:
            cluster.stop()
    assert sorted(placed.values()) == ["n0", "n1"], placed
    assert sorted((r.value["camera_id"], r.value["node"], r.value["status"]) for r in got) == sorted(
        (cam, node, "written") for cam, node in placed.items())
    for node in ("n0", "n1"):
        assert counted[node].get('{outcome="accepted"}') == 1 and counted[node].get('{outcome="not_here"}') == 1, counted
