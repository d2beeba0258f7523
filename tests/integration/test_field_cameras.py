"""Cameras as they are in the field, through the real daemon and Kafka: an RTSP server of another
kind (VLC) that sends RTP over UDP only, that server behind a relay that loses and reorders
packets and whose RTCP clock is an hour off, an H.265 camera, and an H.264 camera with B-frames
and an AAC track listed before the video in its SDP (GStreamer's server).

What a user would notice: messages from every camera with the right sizes, gap-free `seq` and
boxes that match the scenes' truth; the transport and the reason in the status topic and the
metrics; lost packets counted on the lossy camera only; the clock metrics; the UDP camera back
after its server restarts.

The H.265 and B-frame cameras show two of the accuracy test's held-out scenes (seeds 9101 and
9103, scripts/lab/accuracy.TEST_CAMERAS: precision and recall 0.94-0.98 there over H.264 without
B-frames), so the same bar (0.9) applies."""
import contextlib
import subprocess
import time
import uuid
from collections import defaultdict
from datetime import datetime

import pytest

from scripts.lab.accuracy import evaluate
from scripts.lab.broker import consume
from scripts.lab.cameras import RtspServer, VlcServer
from scripts.lab.clips import make_clip
from scripts.lab.common import CAMERA_CREDENTIALS, REPO, free_port
from scripts.lab.daemons import Daemon, daemon_config, http_get, metric_values
from scripts.lab.scenes import Scene, Truth, truth_path
from scripts.lab.udp_relay import LossyRtspRelay

MODEL = REPO / "engines" / "shapes-yolov8n.onnx"
FPS = 5  # inferred per camera: decoding every frame of five cameras is the load
PER_CAMERA = 60  # messages: 12 s, past the first 10 s window of the delivered frame rate
LOSS, REORDER, CLOCK_OFF_S = 0.02, 0.03, 3600
# source.max_clock_offset_s here: VLC's RTCP clock leads its frames by its buffering plus however long
# its stream ran before the daemon joined (0.9 s at once; 2.01 s was seen on a loaded 2-core CI host),
# so the default 2 s is too tight for VLC under load; the camera an hour off is still far beyond it
MAX_OFFSET_S = 5
SCENES = {"hevc": (9101, 1280, 720, {"codec": "libx265", "bframes": 2}),
          "bframes-audio": (9103, 1024, 768, {"bframes": 2, "audio": True})}
SIZES = {"hevc": (1280, 720), "bframes-audio": (1024, 768), "udp-auto": (960, 540), "udp-lossy": (960, 540)}


def scene_clip(folder, name):
    seed, width, height, options = SCENES[name]
    clip = folder / f"field-{name}-{seed}.mp4"
    Scene(seed, width, height, frames=250).write(clip, **options)
    return clip if not options.get("audio") else repeated(clip, truth_path(clip))


def repeated(clip, truth=None):
    """The clip 24 times over (4 minutes, timestamps running on), for servers that cannot loop it:
    VLC ends a file's RTP stream at each loop (RTCP BYE: FFmpeg takes it for the end), and
    GStreamer's server stalls at the loop of a clip with audio. Truth maps by pts modulo its length."""
    long = clip.with_name(clip.stem + "-x24.mp4")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-stream_loop", "23", "-i", str(clip), "-c", "copy",
                    str(long)], check=True)
    if truth is not None:
        truth_path(long).write_text(truth.read_text())
    return long


def captured(message: dict) -> float:
    """A message's capture time, in seconds since the epoch."""
    return datetime.fromisoformat(message["frame"]["captured_at"].replace("Z", "+00:00")).timestamp()


def by_camera(records) -> dict[str, list[dict]]:
    out = defaultdict(list)
    for r in records:
        out[r.key].append(r.value)
    return out


@pytest.fixture(scope="module")
def field(tmp_path_factory, broker):
    work = tmp_path_factory.mktemp("field")
    clips = {name: scene_clip(work, name) for name in SCENES}
    clips["udp"] = repeated(make_clip(work / "udp.mp4", *SIZES["udp-auto"], seconds=10))
    topic = f"field-{uuid.uuid4().hex[:8]}"
    port = free_port()
    vlc, vlc_far = VlcServer(clips["udp"]), VlcServer(clips["udp"])  # started with the daemon, below
    with RtspServer({"hevc": clips["hevc"], "bframes-audio": f"{clips['bframes-audio']}#audio-first"}) as gst, \
            LossyRtspRelay(("127.0.0.1", vlc_far.port), loss=LOSS, reorder=REORDER, clock_offset_s=CLOCK_OFF_S) as relay, \
            contextlib.ExitStack() as later:
        cameras = [("hevc", gst.url("hevc"), FPS), ("bframes-audio", gst.url("bframes-audio"), FPS),
                   ("udp-auto", vlc.url(), FPS), ("udp-set-to-tcp", vlc.url(), FPS, {"transport": "tcp"}),
                   ("udp-lossy", relay.url(vlc_far.name, CAMERA_CREDENTIALS), FPS)]
        config = daemon_config(work / "daemon.yaml", {"path": MODEL, "input_size": 320, "confidence": 0.35},
                               broker.bootstrap, cameras, topic=topic, status_topic=f"{topic}-status",
                               metrics_port=port, source={"max_clock_offset_s": MAX_OFFSET_S})
        daemon = Daemon(config, work / "daemon.log")
        daemon.start()
        try:
            # VLC's RTCP clock leads its frames by its buffering plus about as long as its stream ran
            # before a client joined (0.9 s joined at once, 3.9 s joined 2.5 s later): its servers
            # start with the daemon, as cameras that are on when it comes up, so the bound below
            # does not depend on how long the daemon takes to start
            later.enter_context(vlc)
            later.enter_context(vlc_far)
            streaming = [c[0] for c in cameras if c[0] != "udp-set-to-tcp"]
            consume(broker.bootstrap, [topic], lambda rs: all(
                sum(r.key == cam for r in rs) >= PER_CAMERA for cam in streaming), 150)
            metrics = http_get(f"http://127.0.0.1:{port}/metrics")[1]
            dropped = relay.dropped
            # the UDP camera's server restarts: the camera must come back on its own
            vlc.stop()
            down_at = time.time()
            time.sleep(2)  # a restart takes a moment
            vlc.start()
            back_at = time.time()
            after = consume(broker.bootstrap, [topic], lambda rs: sum(
                r.key == "udp-auto" and captured(r.value) > back_at for r in rs) >= 10, 90)
        finally:
            code = daemon.stop()
        status = consume(broker.bootstrap, [f"{topic}-status"], lambda rs: False, 5)
    log = (work / "daemon.log").read_text()
    assert code == 0, log[-3000:]
    first_back = min((captured(r.value) for r in after if r.key == "udp-auto" and captured(r.value) > back_at),
                     default=None)
    recovery = None if first_back is None else first_back - back_at
    print(f"\nUDP camera: server down at {down_at:.1f}, back {back_at - down_at:.1f} s later; first message "
          f"{recovery if recovery is None else round(recovery, 1)} s after that; relay dropped {dropped} packets")
    truths = {name: Truth.load(truth_path(clips[name])) for name in SCENES}
    return {"messages": by_camera(after), "status": by_camera(status), "metrics": metrics, "log": log,
            "dropped": dropped, "relay": relay, "recovery_s": recovery, "truths": truths}


STREAMING = ["hevc", "bframes-audio", "udp-auto", "udp-lossy"]


@pytest.mark.parametrize("camera", STREAMING)
def test_every_camera_streams_at_its_size_with_gap_free_seq(field, camera):
    messages = field["messages"][camera]
    assert len(messages) >= PER_CAMERA, camera
    assert {(m["frame"]["width"], m["frame"]["height"]) for m in messages} == {SIZES[camera]}
    runs = defaultdict(list)
    for m in messages:
        runs[m["run_id"]].append(m["frame"]["seq"])
    for seqs in runs.values():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (camera, seqs[:20])


@pytest.mark.parametrize("camera", sorted(SCENES))
def test_h265_and_bframes_with_audio_listed_first_give_the_right_boxes(field, camera):
    score = evaluate(field["messages"][camera], {camera: field["truths"][camera]})[camera]
    print(f"{camera}: precision {score.precision:.3f} recall {score.recall:.3f} over {score.frames} frames")
    assert score.precision >= 0.9 and score.recall >= 0.9, (camera, score)


def test_a_camera_that_offers_only_udp_is_read_over_udp_and_says_so(field):
    connected = [s for s in field["status"]["udp-auto"] if s["status"] == "connected"]
    assert connected and all(s["transport"] == "udp" for s in connected), connected
    assert "over UDP (the camera refused TCP)" in connected[0]["reason"]
    transport = metric_values(field["metrics"], "rtsp_pipeline_camera_transport")
    assert transport['{camera="udp-auto",transport="udp"}'] == 1
    assert transport['{camera="udp-auto",transport="tcp"}'] == 0
    assert transport['{camera="hevc",transport="tcp"}'] == 1
    # TCP was asked for once: after the restart the camera went straight to UDP, as remembered
    refusals = [line for line in field["log"].splitlines()
                if "refuses RTP over TCP" in line and '"udp-auto"' in line]
    assert len(refusals) == 1, refusals
    assert len(connected) >= 2  # connected again after its server restarted


def test_a_camera_set_to_tcp_that_refuses_it_is_told_which_transport_to_set(field):
    reasons = {s["reason"] for s in field["status"]["udp-set-to-tcp"]}
    assert ("the camera refuses RTP over TCP (461 Unsupported transport): set transport: udp (or auto) "
            "for this camera; retrying in") in " ".join(reasons), reasons
    assert not field["messages"]["udp-set-to-tcp"]
    errors = metric_values(field["metrics"], "rtsp_pipeline_source_errors_total")
    assert errors['{camera="udp-set-to-tcp",kind="transport"}'] >= 1


def test_lost_packets_are_counted_on_the_lossy_camera_only(field):
    lost = metric_values(field["metrics"], "rtsp_pipeline_rtp_packets_lost_total")
    missed = lost.get('{camera="udp-lossy",reason="missed"}', 0)
    late = lost.get('{camera="udp-lossy",reason="late"}', 0)
    print(f"relay dropped {field['dropped']}, daemon counted {missed} missed, {late} late; "
          f"reordered {field['relay'].reordered}")
    assert field["dropped"] >= 20
    assert 0.8 * field["dropped"] <= missed <= 1.05 * field["dropped"]
    assert late <= 0.05 * field["relay"].reordered  # packets that came out of order were waited for
    for camera in ("hevc", "bframes-audio", "udp-auto"):
        assert lost.get(f'{{camera="{camera}",reason="missed"}}', 0) == 0
    assert any("camera is losing RTP packets" in line and '"udp-lossy"' in line for line in field["log"].splitlines())


def test_clock_metrics_and_a_camera_clock_an_hour_off(field):
    offsets = metric_values(field["metrics"], "rtsp_pipeline_camera_clock_offset_seconds")
    assert offsets['{camera="udp-lossy"}'] == pytest.approx(CLOCK_OFF_S, abs=5)
    for camera in ("hevc", "bframes-audio"):  # GStreamer's RTCP time: a few ms before arrival
        assert -2 < offsets[f'{{camera="{camera}"}}'] <= 0.1, (camera, offsets)
    assert abs(offsets['{camera="udp-auto"}']) < MAX_OFFSET_S  # VLC's leads by its buffering (0.9 s and up)
    warned = [line for line in field["log"].splitlines() if "camera clock is off" in line]
    assert len(warned) == 1 and '"udp-lossy"' in warned[0], warned
    lossy = field["messages"]["udp-lossy"]
    assert {m["frame"]["clock"] for m in lossy} == {"receive"}
    assert "rtcp" in {m["frame"]["clock"] for m in field["messages"]["hevc"][:20]}  # before its clip loops
    fps = metric_values(field["metrics"], "rtsp_pipeline_camera_fps")
    for camera in STREAMING:
        assert fps[f'{{camera="{camera}",kind="declared"}}'] == pytest.approx(25, abs=0.1)
        assert fps[f'{{camera="{camera}",kind="delivered"}}'] == pytest.approx(25, rel=0.1), (camera, fps)


def test_the_udp_camera_comes_back_after_its_server_restarts(field):
    assert field["recovery_s"] is not None and field["recovery_s"] < 30, field["recovery_s"]
