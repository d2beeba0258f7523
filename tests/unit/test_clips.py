"""The encoded-packet ring and the clip remuxer (pipeline.clips), on real H.264 and H.265 files
with B-frames made by ffmpeg: the ring keeps whole GOPs from a keyframe within its seconds and
bytes, and a clip cut from it plays and decodes to the source's pictures at the same times."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.clips import EncodedPacket, PacketRing, StreamInfo, write_clip

GOP_S = 1.0


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ring")
    made = {}
    for name, codec in (("h264", ["-c:v", "libx264", "-bf", "3", "-g", "25", "-sc_threshold", "0"]),
                        ("h265", ["-c:v", "libx265", "-x265-params", "log-level=error:keyint=25:min-keyint=25:"
                                                                     "scenecut=0:bframes=3"])):
        path = made[name] = folder / f"src-{name}.mkv"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-t", "10",
                        *codec, "-pix_fmt", "yuv420p", str(path)], check=True)
        # the same in MPEG-TS: packets with start codes (Annex B), as RTSP cameras send them
        made[f"{name}-ts"] = folder / f"src-{name}.ts"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(path), "-c", "copy", str(made[f"{name}-ts"])], check=True)
    return made


def fill(ring: PacketRing, source: Path, until_s: float = 99.0) -> None:
    """Feed the ring every packet of `source` in decode order, as the camera's thread does."""
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        ring.reset(stream.time_base, lambda keyframe: StreamInfo.of(stream, keyframe))
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            ring.add(EncodedPacket(bytes(packet), packet.pts, packet.dts, packet.is_keyframe))
            if packet.dts is not None and float(packet.dts * packet.time_base) >= until_s:
                break


def pictures(path: Path, shift: float = 0.0) -> dict[float, np.ndarray]:
    with av.open(str(path)) as container:
        return {round(float(f.time) + shift, 3): f.to_ndarray(format="rgb24") for f in container.decode(video=0)}


@pytest.mark.parametrize("codec", ["h264", "h265"])
def test_the_ring_holds_whole_gops_from_a_keyframe_for_its_seconds(sources, codec):
    ring = PacketRing(seconds=4.0, max_bytes=64 << 20)
    fill(ring, sources[codec], until_s=7.0)
    first, last = ring.span()
    held = ring.since(0.0)
    assert held[0].keyframe  # it starts at a keyframe
    assert last - 4.0 - GOP_S < first <= last - 4.0  # at least its seconds, less than a GOP more
    assert ring.bytes == sum(len(p.data) for p in held)

    ring.reset()  # a reconnect: nothing of the old connection is kept, nor anything until a keyframe
    assert ring.span() is None and ring.bytes == 0 and ring.since(0.0) == []


def test_the_ring_keeps_to_its_bytes_and_starts_again_when_a_gop_is_larger(sources):
    big = PacketRing(seconds=60.0, max_bytes=1 << 30)
    fill(big, sources["h264"])
    gop = big.bytes / 10  # ten GOPs of about the same size
    ring = PacketRing(seconds=60.0, max_bytes=int(3.5 * gop))
    fill(ring, sources["h264"])
    assert ring.bytes <= 3.5 * gop and ring.since(0.0)[0].keyframe
    assert 2.0 <= ring.span()[1] - ring.span()[0] < 4.0 and ring.overflows == 0

    tiny = PacketRing(seconds=60.0, max_bytes=int(0.5 * gop))
    fill(tiny, sources["h264"])
    assert tiny.bytes <= 0.5 * gop and tiny.overflows >= 9


@pytest.mark.parametrize("codec", ["h264", "h265", "h264-ts", "h265-ts"])
def test_a_clip_plays_and_decodes_to_the_sources_pictures(sources, codec, tmp_path):
    ring = PacketRing(seconds=4.0, max_bytes=64 << 20)
    fill(ring, sources[codec], until_s=8.0)
    start = ring.span()[1] - 2.5  # MPEG-TS starts its times at 1.4 s
    packets = ring.since(start)  # from the keyframe at or before it
    clip = tmp_path / f"clip-{codec}.mp4"
    first, last, count = write_clip(clip, ring.stream, packets)
    assert first <= start < first + GOP_S and count <= len(packets)  # an open GOP's leading pictures (H.265) left out

    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,duration",
                                       "-of", "json", str(clip)], capture_output=True, text=True, check=True).stdout)
    stream = probe["streams"][0]
    assert stream["codec_name"] == {"h264": "h264", "h265": "hevc"}[codec[:4]]
    assert abs(float(stream["duration"]) - (last - first)) <= 0.13  # within a frame or a B-frame delay

    source, cut = pictures(sources[codec]), pictures(clip, shift=first)
    assert len(cut) >= count - 3  # the last B-frames in decode order may need a frame not yet received
    assert min(cut) == round(first, 3)
    assert all(np.array_equal(cut[t], source[t]) for t in cut), "a clip's picture differs from the source's"


def test_a_clip_must_start_at_a_keyframe(sources, tmp_path):
    ring = PacketRing(seconds=4.0, max_bytes=64 << 20)
    fill(ring, sources["h264"], until_s=6.0)
    with pytest.raises(ValueError, match="keyframe"):
        write_clip(tmp_path / "bad.mp4", ring.stream, ring.since(0.0)[1:])


# ---------------------------------------------------------------------- the recorder
from pipeline.clips import Recorder  # noqa: E402
from scripts.lab.disk import SmallDisk  # noqa: E402


class Results:
    def __init__(self):
        self.done = []
        self.event = __import__("threading").Event()

    def __call__(self, result):
        self.done.append(result)
        self.event.set()

    def wait(self, n=1, timeout=20):
        deadline = time.monotonic() + timeout
        while len(self.done) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.done) >= n, f"{len(self.done)} of {n} clips reported"
        return self.done


def feed(ring: PacketRing, source: Path, start_s: float, until_s: float, reset: bool = False) -> None:
    """Packets of `source` with media time in [start_s, until_s), as the camera's thread adds them."""
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        if reset:
            ring.reset(stream.time_base, lambda keyframe: StreamInfo.of(stream, keyframe))
        for packet in container.demux(stream):
            if packet.size == 0 or packet.dts is None:
                continue
            t = float(packet.dts * packet.time_base)
            if start_s <= t < until_s:
                ring.add(EncodedPacket(bytes(packet), packet.pts, packet.dts, packet.is_keyframe,
                                       1000.0 + float(packet.pts * packet.time_base)))


import time  # noqa: E402


def recorder(folder: Path, results: Results, **kw) -> Recorder:
    settings = dict(pre_s=10.0, ring_bytes=64 << 20, max_age_s=3600, max_bytes=1 << 30) | kw
    rec = Recorder(folder, on_done=results, **settings)
    rec.start()
    return rec


@pytest.mark.parametrize("codec", ["h264", "h265"])
def test_a_clip_runs_from_a_keyframe_pre_s_before_to_post_s_after_and_matches_the_source(sources, codec, tmp_path):
    results = Results()
    rec = recorder(tmp_path / "clips", results)
    ring = rec.ring("gate")
    feed(ring, sources[codec], 0, 6.5, reset=True)
    clip = rec.request("gate", pre_s=2.5, post_s=2.0, trigger={"kind": "api"}, track_ids=(7,))
    assert clip is not None and results.done == []  # waits for its post_s
    feed(ring, sources[codec], 6.5, 10)
    (result,) = results.wait()
    assert rec.stop(5)
    trigger = clip.trigger_time
    assert result.failure is None and result.ended_early is None and result.track_ids == (7,)
    assert result.first <= trigger - 2.5 < result.first + GOP_S  # the keyframe at or before pre_s
    assert result.last >= trigger + 2.0
    assert result.path.parent == tmp_path / "clips" / "gate" and result.size == result.path.stat().st_size
    assert result.sha256 == __import__("hashlib").sha256(result.path.read_bytes()).hexdigest()
    # capture times as the packets were stamped (here 1000 + their decode time)
    assert abs(result.first_captured - (1000 + result.first)) < 0.25 and result.last_captured >= 1000 + trigger + 1.8
    cut, source = pictures(result.path, shift=result.first), pictures(sources[codec])
    assert min(cut) == result.first and max(cut) >= trigger + 2.0 - 0.1
    assert all(np.array_equal(cut[t], source[t]) for t in cut)


def test_a_reconnect_ends_a_clip_early_and_says_so(sources, tmp_path):
    results = Results()
    rec = recorder(tmp_path / "clips", results)
    ring = rec.ring("gate")
    feed(ring, sources["h264"], 0, 5, reset=True)
    clip = rec.request("gate", pre_s=2, post_s=4, trigger={"kind": "api"})
    feed(ring, sources["h264"], 5, 6)
    ring.reset()  # the camera's connection ended
    (result,) = results.wait()
    rec.stop(5)
    assert result.failure is None and "connection ended" in result.ended_early
    assert result.path.exists() and result.last < clip.end
    assert rec.request("gate", 2, 2, {"kind": "api"}) is None  # nothing to cut from until it streams again


def test_retention_keeps_the_folder_within_its_age_and_bytes_oldest_first(sources, tmp_path):
    now = [1_000_000.0]
    results = Results()
    rec = recorder(tmp_path / "clips", results, max_age_s=100, max_bytes=1 << 30, clock=lambda: now[0])
    ring = rec.ring("gate")
    feed(ring, sources["h264"], 0, 10, reset=True)
    for i in range(3):
        rec.request("gate", pre_s=2, post_s=0, trigger={"kind": "api", "n": i})
        results.wait(i + 1)
    paths = [r.path for r in results.done]
    for age, path in zip((300, 50, 10), paths):
        os.utime(path, (now[0] - age, now[0] - age))
    assert rec.enforce_retention() == [paths[0]]  # past its age
    rec._max_bytes = paths[2].stat().st_size + 10  # room for one clip
    assert rec.enforce_retention() == [paths[1]]  # the oldest, for bytes
    assert [p.exists() for p in paths] == [False, False, True]
    rec.stop(5)


@pytest.mark.skipif(SmallDisk.unavailable() is not None, reason=str(SmallDisk.unavailable()))
def test_a_full_or_read_only_disk_fails_the_clip_with_a_reason_and_never_holds_the_camera(sources, tmp_path):
    disk = SmallDisk(tmp_path / "disk", 512)
    try:
        results = Results()
        rec = recorder(disk.path / "clips", results)
        ring = rec.ring("gate")
        feed(ring, sources["h264"], 0, 10, reset=True)
        disk.fill()
        rec.request("gate", pre_s=6, post_s=0, trigger={"kind": "api"})
        results.wait(1)
        disk.free()
        disk.remount(read_only=True)
        rec.request("gate", pre_s=6, post_s=0, trigger={"kind": "api"})
        full, read_only = results.wait(2)
        assert full.path is None and "disk is full" in full.failure
        assert read_only.path is None and "cannot be written" in read_only.failure
        started = time.monotonic()
        feed(ring, sources["h264"], 0, 10)  # the camera's thread goes on at its pace
        assert time.monotonic() - started < 2
        assert not list((disk.path / "clips").glob("*/*.part"))
        rec.stop(5)
    finally:
        disk.remount(read_only=False)
        disk.close()


def test_a_timestamp_jump_starts_the_ring_again_and_ends_a_clip_that_spans_it(sources, tmp_path):
    """A looping source or a camera restart: media time goes back to 0 within one connection."""
    results = Results()
    rec = recorder(tmp_path / "clips", results)
    ring = rec.ring("gate")
    feed(ring, sources["h264"], 0, 6, reset=True)
    rec.request("gate", pre_s=2, post_s=3, trigger={"kind": "api"})
    feed(ring, sources["h264"], 0, 2.5)  # the source starts again at 0
    (result,) = results.wait()
    rec.stop(5)
    assert "timestamps jumped" in result.ended_early and result.path.exists()
    first, last = ring.span()
    assert 0.0 <= first <= 1.0 and last < 2.6 and ring.since(0.0)[0].keyframe  # only the packets after the jump


# ---------------------------------------------------------------------- rules' requests and snapshots
from pipeline.clips import Sightings, decode_picture  # noqa: E402
from pipeline.core import Detection  # noqa: E402
from pipeline.evidence import RequestHandler  # noqa: E402


@pytest.mark.parametrize("codec", ["h264", "h265"])
def test_a_rules_clip_is_cut_around_the_frame_it_names_though_its_request_comes_late(sources, codec, tmp_path):
    results = Results()
    rec = recorder(tmp_path / "clips", results, pre_s=3.0, late_s=5.0)
    ring = rec.ring("gate")
    feed(ring, sources[codec], 0, 8.5, reset=True)  # the alert's frame, at 4.0 s, is 4.5 s old when asked
    clip = rec.request("gate", pre_s=2.0, post_s=2.0, trigger={"kind": "rule", "rule": "r"}, at=1004.0,
                       clip_id="20261207T120000Z-0123abcd")
    assert clip is not None and clip.clip_id == "20261207T120000Z-0123abcd"
    (result,) = results.wait()  # its post_s had already passed: written at once
    assert rec.stop(5)
    assert result.failure is None and result.path.name == "20261207T120000Z-0123abcd.mp4"
    assert result.first <= 2.0 < result.first + GOP_S  # the keyframe at or before 4.0 - pre_s
    assert 6.0 <= result.last < 6.5  # post_s after the named frame, not after the newest packet
    cut, source = pictures(result.path, shift=result.first), pictures(sources[codec])
    assert all(np.array_equal(cut[t], source[t]) for t in cut)


@pytest.mark.parametrize("codec", ["h264", "h265"])
def test_every_picture_held_decodes_from_the_ring_as_the_source_shows_it(sources, codec):
    ring = PacketRing(seconds=30.0, max_bytes=64 << 20)
    fill(ring, sources[codec], until_s=6.0)
    source = pictures(sources[codec])
    first, last = ring.span()
    for t in [t for t in sorted(source) if first <= t <= last - 0.5][::9]:  # the open GOPs' last pictures too
        stream, packets = ring.around(t)
        picture = decode_picture(stream, packets, t)
        assert picture is not None and np.array_equal(picture.to_ndarray(format="rgb24"), source[t]), t


def test_a_tracks_best_sighting_is_kept_while_it_is_in_the_ring_and_objects_out_of_view_are_forgotten():
    seen = Sightings(keep_s=3.0, forget_s=5.0)

    def frame(t, *dets):
        seen.feed("gate", "m", t, 1000.0 + t, [Detection(0, "disc", c, box, track) for track, c, box in dets])

    frame(0.0, (1, 0.5, (0, 0, 10, 10)), (2, 0.9, (0, 0, 20, 20)))
    frame(0.2, (1, 0.9, (0, 0, 10, 10)), (2, 0.5, (0, 0, 20, 20)))  # track 1 better now, track 2 not
    frame(0.4, (1, 0.8, (0, 0, 10, 10)), (3, 0.9, (5, 5, 9, 9)))
    assert seen.best("gate", "m", 1).pts == 0.2 and seen.best("gate", "m", 2).pts == 0.0
    assert seen.best("gate", "m", 3).label == "disc" and seen.best("gate", "m", 9) is None
    assert seen.best("gate", "other-model", 1) is None  # track ids are per model
    frame(3.5, (1, 0.1, (0, 0, 5, 5)))  # worse, but the kept one is older than keep_s: replaced
    assert seen.best("gate", "m", 1).pts == 3.5
    for k in range(70):  # track 2 unseen for more than forget_s: forgotten
        frame(6.0 + k * 0.1, (1, 0.1, (0, 0, 5, 5)))
    assert seen.best("gate", "m", 2) is None and seen.best("gate", "m", 1) is not None
    seen.forget("gate")
    assert seen.best("gate", "m", 1) is None


@pytest.mark.parametrize("codec", ["h264", "h265"])
def test_a_snapshot_is_the_best_sighting_as_a_jpeg_and_a_copy_with_its_box(sources, codec, tmp_path):
    from PIL import Image

    shots = Results()
    rec = Recorder(tmp_path / "clips", pre_s=5.0, ring_bytes=64 << 20, max_age_s=3600, max_bytes=1 << 30,
                   on_done=Results(), late_s=2.0, on_snapshots=shots)
    rec.start()
    feed(rec.ring("gate"), sources[codec], 0, 6.0, reset=True)
    for k in range(25):  # track 4 at 2.0-2.96 s, biggest at 2.48 s
        t = round(2.0 + k * 0.04, 2)
        size = 40 + (60 - abs(k - 12) * 5)
        rec.sightings.feed("gate", "m", t, 1000 + t, [Detection(1, "square", 0.8, (100, 60, 100 + size, 60 + size), 4)])
    assert rec.snapshots("gate", "m", [4, 77], "20261207T120000Z-0123abcd", {"kind": "rule", "rule": "r"})
    (result,) = shots.wait()
    assert rec.stop(5)
    good, missing = result.snapshots
    assert good.failure is None and good.sighting.pts == 2.48 and good.name == "20261207T120000Z-0123abcd-4"
    assert missing.failure is not None and "no sighting" in missing.failure
    plain = tmp_path / "clips" / "gate" / "20261207T120000Z-0123abcd-4.jpg"
    boxed = plain.with_name("20261207T120000Z-0123abcd-4-boxed.jpg")
    assert good.size == plain.stat().st_size
    picture = np.asarray(Image.open(plain)).astype(int)
    expected = pictures(sources[codec])[2.48]
    assert picture.shape == expected.shape and np.abs(picture - expected).mean() < 4  # the picture at its pts
    drawn = np.asarray(Image.open(boxed)).astype(int)
    assert (np.abs(drawn - picture).sum(axis=2) > 60).any(axis=0)[100]  # its box's left edge is drawn ...
    inside = (slice(80, 140), slice(110, 190))  # the box is (100, 60, 200, 160)
    assert np.abs(drawn[inside] - picture[inside]).mean() < 4  # ... not its inside


def test_requests_are_served_once_for_cameras_running_here_and_bad_or_stale_ones_are_counted(sources, tmp_path):
    import json as json_module

    rec = Recorder(tmp_path / "clips", pre_s=5.0, ring_bytes=64 << 20, max_age_s=3600, max_bytes=1 << 30,
                   on_done=Results(), late_s=2.0, on_snapshots=Results())
    rec.start()
    feed(rec.ring("gate"), sources["h264"], 0, 6.0, reset=True)
    now = [1006.0]
    handler = RequestHandler(rec, lambda camera: camera == "gate", pre_s=5.0, late_s=2.0, clock=lambda: now[0])

    def request(**over) -> bytes:
        body = {"schema": "clip-requests/v1", "request_id": "20261207T120000Z-0123abcd", "camera_id": "gate",
                "model": "m", "at": "1970-01-01T00:16:43.000Z", "trigger": {"kind": "rule", "rule": "r"},
                "track_ids": [3], "clip": {"pre_s": 1.0, "post_s": 1.0}, "snapshots": False} | over
        return json_module.dumps(body).encode()

    assert handler.handle(request()) == "accepted"  # at = 1003 s: 3 s old, within pre_s + late_s
    assert handler.handle(request()) == "duplicate"  # an alerting consumer that restarted asks again
    assert handler.handle(request(request_id="20261207T120000Z-0000beef", camera_id="yard")) == "not_here"
    assert handler.handle(request(request_id="20261207T120000Z-1111beef", at="1970-01-01T00:16:38.000Z")) == "stale"
    for bad in (b"junk", request(schema="clips/v1"), request(request_id="../../etc"),
                request(request_id="20261207T120000Z-2222beef", clip={"pre_s": -1, "post_s": 1})):
        assert handler.handle(bad) == "invalid"
    assert rec.stop(5)
    assert [p.name for p in (tmp_path / "clips" / "gate").iterdir()] == ["20261207T120000Z-0123abcd.mp4"]


def test_a_restart_on_the_same_clip_folder_serves_earlier_clips_cleans_up_and_serves_no_request_twice(sources, tmp_path):
    from pipeline.clips import ClipService

    folder, now = tmp_path / "clips", [1006.0]
    first = recorder(folder, Results(), pre_s=5.0, late_s=2.0)
    feed(first.ring("gate"), sources["h264"], 0, 6.0, reset=True)
    handler = RequestHandler(first, lambda camera: True, pre_s=5.0, late_s=2.0, clock=lambda: now[0])
    body = {"schema": "clip-requests/v1", "request_id": "20261207T120000Z-0123abcd", "camera_id": "gate",
            "at": "1970-01-01T00:16:43.000Z", "trigger": {"kind": "rule", "rule": "r"}, "clip": {"pre_s": 1, "post_s": 0}}
    assert handler.handle(__import__("json").dumps(body).encode()) == "accepted"
    old = first.request("gate", pre_s=1, post_s=0, trigger={"kind": "api"})
    assert first.stop(5)
    kept, aged = folder / "gate" / "20261207T120000Z-0123abcd.mp4", folder / "gate" / f"{old.clip_id}.mp4"
    assert kept.exists() and aged.exists()
    os.utime(aged, (time.time() - 7200, time.time() - 7200))  # past max_age_s (3600) by the next start
    half = folder / "gate" / "20261207T120500Z-00000000.mp4.part"  # what a kill -9 in a write leaves
    half.write_bytes(b"\0" * 1000)

    second = recorder(folder, Results(), pre_s=5.0, late_s=2.0)  # started again on the same folder
    feed(second.ring("gate"), sources["h264"], 0, 6.0, reset=True)
    service = ClipService(second, lambda camera: True, 5.0, 5.0)
    assert service.path("20261207T120000Z-0123abcd") == kept  # an earlier run's clip is still served
    assert not aged.exists() and not half.exists()  # retention and a half-written file, at start
    again = RequestHandler(second, lambda camera: True, pre_s=5.0, late_s=2.0, clock=lambda: now[0])
    assert again.handle(__import__("json").dumps(body).encode()) == "duplicate"  # read again after the restart
    assert second.stop(5)
