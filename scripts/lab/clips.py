"""Test clips: H.264/H.265 from ffmpeg's test pattern, MPEG-TS with resolution changes, corrupted
streams, and clips of rendered frames through PyAV.
"""
from __future__ import annotations

import subprocess
from pathlib import Path


def make_clip(path: Path, width: int, height: int, seconds: float = 4, fps: int = 25, gop: int = 50) -> Path:
    """An H.264 MP4 of ffmpeg's moving test pattern (no B-frames, yuv420p); reused if present."""
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"testsrc2=size={width}x{height}:rate={fps}", "-t", str(seconds),
         "-c:v", "libx264", "-preset", "veryfast", "-g", str(gop), "-bf", "0", "-pix_fmt", "yuv420p",
         str(tmp)],
        check=True,
    )
    tmp.rename(path)
    return path


def ts_clip(path: Path, parts: list[tuple[int, int, float]], fps: int = 25, gop: int = 25) -> Path:
    """An MPEG-TS H.264 clip of ffmpeg's test pattern whose resolution changes between `parts`
    ((width, height, seconds) each; a new SPS at each change, timestamps continuous). To be looped
    by scripts/lab/rtsp_server.py, the last part must have the first part's size (see there)."""
    if parts[0][:2] != parts[-1][:2]:
        raise ValueError(f"ts_clip: the last part must be {parts[0][0]}x{parts[0][1]} like the first "
                         "(a looped clip that changes resolution at the loop deadlocks the RTSP server)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data, offset = b"", 0.0
    for i, (width, height, seconds) in enumerate(parts):
        part = path.with_suffix(f".part{i}.ts")
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}",
             "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-g", str(gop), "-bf", "0",
             "-pix_fmt", "yuv420p", "-output_ts_offset", str(offset), "-f", "mpegts", str(part)],
            check=True,
        )
        data += part.read_bytes()
        part.unlink()
        offset += seconds
    path.write_bytes(data)
    return path


def corrupt_ts(source: Path, path: Path, every: int = 40, seed: int = 1) -> Path:
    """A copy of an MPEG-TS clip with the payload of every `every`-th TS packet overwritten by
    random bytes (the container stays readable; the H.264 inside is damaged)."""
    import random

    rng = random.Random(seed)
    data = bytearray(Path(source).read_bytes())
    for start in range(188 * 20, len(data) - 188, 188 * every):  # spare the first packets (PAT/PMT)
        if data[start] == 0x47:
            data[start + 8:start + 188] = bytes(rng.randrange(256) for _ in range(180))
    Path(path).write_bytes(bytes(data))
    return Path(path)


def pyav_clip(path: Path, frames, fps: int = 25, gop: int = 50, container: str | None = None,
              codec: str = "libx264", bframes: int = 0) -> Path:
    """Encode RGB frames (an iterable of HxWx3 uint8) to H.264 (or H.265 with `codec` "libx265")
    with PyAV's own encoders, for machines without the ffmpeg program (the GPU machines), 8-bit
    4:2:0, `bframes` B-frames (default none), a keyframe every `gop` frames. `container` "h264"/"hevc" writes a raw
    Annex B stream (which can be concatenated); default: from the suffix."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container) as out:
        stream = None
        for image in frames:
            if stream is None:
                stream = out.add_stream(codec, rate=fps)
                stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
                stream.options = {"g": str(gop), "bf": str(bframes), "preset": "veryfast"}
                if codec == "libx265":  # quiet, and a fixed GOP as libx264's
                    stream.options |= {"x265-params": f"log-level=error:keyint={gop}:min-keyint={gop}:scenecut=0"
                                                      f":bframes={bframes}"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
