"""The encoded-packet ring and the clip remuxer (pipeline.clips), on real H.264 and H.265 files
with B-frames made by ffmpeg: the ring keeps whole GOPs from a keyframe within its seconds and
bytes, and a clip cut from it plays and decodes to the source's pictures at the same times."""
from __future__ import annotations

import json
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


@pytest.mark.parametrize("codec", ["h264", "h265"])
def test_a_clip_plays_and_decodes_to_the_sources_pictures(sources, codec, tmp_path):
    ring = PacketRing(seconds=4.0, max_bytes=64 << 20)
    fill(ring, sources[codec], until_s=8.0)
    packets = ring.since(5.5)  # from the keyframe at or before 5.5 s
    clip = tmp_path / f"clip-{codec}.mp4"
    first, last, count = write_clip(clip, ring.stream, packets)
    assert first == 5.0 and count <= len(packets)  # an open GOP's leading pictures (H.265) left out

    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,duration",
                                       "-of", "json", str(clip)], capture_output=True, text=True, check=True).stdout)
    stream = probe["streams"][0]
    assert stream["codec_name"] == {"h264": "h264", "h265": "hevc"}[codec]
    assert abs(float(stream["duration"]) - (last - first)) <= 0.13  # within a frame or a B-frame delay

    source, cut = pictures(sources[codec]), pictures(clip, shift=first)
    assert len(cut) >= count - 3  # the last B-frames in decode order may need a frame not yet received
    assert min(cut) == 5.0
    assert all(np.array_equal(cut[t], source[t]) for t in cut), "a clip's picture differs from the source's"


def test_a_clip_must_start_at_a_keyframe(sources, tmp_path):
    ring = PacketRing(seconds=4.0, max_bytes=64 << 20)
    fill(ring, sources["h264"], until_s=6.0)
    with pytest.raises(ValueError, match="keyframe"):
        write_clip(tmp_path / "bad.mp4", ring.stream, ring.since(0.0)[1:])
