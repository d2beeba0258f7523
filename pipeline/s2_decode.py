"""Decode: compressed packets of one camera in, pictures out (CPU: FFmpeg through PyAV).

The decoder is built per camera stream by a factory the Runtime passes to the source, so the GPU
path (pipeline.s2_nvdec) hands in an NVDEC decoder with the same methods.
"""
from __future__ import annotations

from typing import Protocol

import av


class Decoder(Protocol):
    """Turns one stream's packets into pictures."""

    def decode(self, packet: av.Packet) -> list: ...

    def keyframes_only(self, enabled: bool) -> None: ...

    def flush(self) -> list:
        """At the end of a file: the pictures still held back (reordering, decoder delay)."""
        ...

    def retain(self, picture):
        """Make a picture the source keeps outlive the next `decode` call; None: cannot (dropped)."""
        ...

    def close(self) -> None: ...


class PyAVDecoder:
    """FFmpeg H.264/H.265 decoding on the CPU; pictures stay `av.VideoFrame` (YUV) until batched."""

    def __init__(self, stream: av.video.stream.VideoStream, deblock: bool = True) -> None:
        self._ctx = stream.codec_context
        self._time_base = stream.time_base
        # One thread per camera: cameras already decode in parallel, and frame threading would
        # add a frame of latency per thread and multiply threads by the camera count.
        self._ctx.thread_count = 1
        if not deblock:  # faster; the pictures are scaled down for the detector anyway
            self._ctx.options = {**self._ctx.options, "skip_loop_filter": "all"}
        self._keyframes_only = False

    def decode(self, packet: av.Packet) -> list[av.VideoFrame]:
        """Decode one packet; returns zero or more pictures."""
        return self._ctx.decode(packet)

    def keyframes_only(self, enabled: bool) -> None:
        """Skip every non-key frame in the decoder (for cameras sampled at <= 1 fps)."""
        if enabled != self._keyframes_only:
            self._ctx.skip_frame = "NONKEY" if enabled else "DEFAULT"
            self._keyframes_only = enabled

    def flush(self) -> list[av.VideoFrame]:
        """Drain the decoder at the end of a file (B-frames and frame delay hold the last pictures)."""
        try:
            pictures = self._ctx.decode(None)
        except av.error.EOFError:  # already drained
            return []
        for picture in pictures:  # PyAV sets a picture's time base from its packet: a flush has none
            picture.time_base = self._time_base
        return pictures

    def retain(self, picture: av.VideoFrame) -> av.VideoFrame:
        """FFmpeg's frames are reference-counted: keeping the object keeps the picture."""
        return picture

    def close(self) -> None:
        """Nothing to release: the codec context closes with its container."""


def cpu_decoder(stream: av.video.stream.VideoStream, deblock: bool = True) -> Decoder:
    """Decoder factory for the CPU path."""
    return PyAVDecoder(stream, deblock)
