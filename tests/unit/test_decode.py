"""The CPU decoder: by default FFmpeg's exact pictures; skipping H.264's deblocking filter (an
opt-in speed lever) changes them only a little."""
import subprocess

import av
import numpy as np

from pipeline.config import SourceConfig
from pipeline.s2_decode import cpu_decoder


def pictures(clip, **settings) -> list[np.ndarray]:
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        decoder = cpu_decoder(stream, **settings)
        out = [p.to_ndarray(format="gray") for packet in container.demux(stream) for p in decoder.decode(packet)]
        decoder.close()
    return out


def test_deblocking_is_on_by_default_and_skipping_it_costs_little_picture(tmp_path):
    clip = tmp_path / "low-bitrate.mp4"  # low bitrate: strong blocking, so the filter has work to do
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
                    "-t", "2", "-c:v", "libx264", "-b:v", "300k", "-g", "50", "-bf", "0", "-pix_fmt", "yuv420p",
                    str(clip)], check=True)
    assert SourceConfig().deblock is True
    with av.open(str(clip)) as container:
        reference = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
    filtered, skipped = pictures(clip, deblock=True), pictures(clip, deblock=False)
    assert len(filtered) == len(skipped) == len(reference) == 50
    assert all(np.array_equal(a, b) for a, b in zip(filtered, reference))
    diff = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(skipped, reference)]
    assert 0 < max(diff) < 3  # different pictures, but within a few grey levels on average
