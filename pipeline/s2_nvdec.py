"""Decode on the GPU: PyAV demuxes (timeouts, TCP, reconnects stay in s1_source) and each camera's
packets go to its own NVDEC decoder (PyNvVideoCodec `CreateDecoder` + `Decode`, which releases
the GIL). Pictures stay in device memory as NV12.

PyNvVideoCodec reuses its output surfaces on the next `Decode`, so a picture the source keeps (one
that passed fps sampling) is copied device->device into a small per-camera pool of frame buffers
(`retain`); the others are never copied. A pool buffer returns to the pool when the frame that
holds it is dropped (superseded in the batcher, or inferred). A full pool drops the new frame.

Errors are per camera: a failing `Decode` recreates that camera's decoder (counted) and waits for
the next keyframe; a resolution change (new SPS) is handled by NVDEC's reconfigure and gets pool
buffers of the new size. Nothing here touches other cameras.
"""
from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable

import av
import numpy as np

from pipeline.core import ColorSpec, DeviceFrame
from pipeline.gpu import Gpu
from pipeline.logs import log_event

log = logging.getLogger(__name__)
POOL_FRAMES = 4  # per camera: one waiting in the batcher, two in the double-buffered input, one spare
_NO_PTS = -(1 << 62)
_CODECS = {"h264": "H264", "hevc": "HEVC"}



class FramePool:
    """A fixed number of NV12 frame buffers of one size on one GPU; bounded by construction."""

    def __init__(self, gpu: Gpu, width: int, height: int, count: int = POOL_FRAMES) -> None:
        self.width, self.height = width, height
        self.pitch = (width + 255) // 256 * 256
        self._rows = height + (height + 1) // 2
        self._free = [gpu.alloc(self.pitch * self._rows) for _ in range(count)]
        self._lock = threading.Lock()

    def take(self):
        """A free buffer, or None when all are in use."""
        with self._lock:
            return self._free.pop() if self._free else None

    def give_back(self, buffer) -> None:
        """Return a buffer (called when the frame holding it is garbage)."""
        with self._lock:
            self._free.append(buffer)

    def chroma_offset(self) -> int:
        """Byte offset of the interleaved UV plane in a buffer."""
        return self.pitch * self.height


class NvDecoder:
    """One camera's NVDEC decoder on one GPU, fed with PyAV packets."""

    def __init__(self, stream: av.video.stream.VideoStream, gpu: Gpu,
                 on_event: Callable[[str], None] = lambda kind: None) -> None:
        import PyNvVideoCodec as nvc  # lazy: raises without the NVIDIA driver

        codec = stream.codec_context.name
        if codec not in _CODECS:
            raise ValueError(f"NVDEC path decodes H.264 and H.265, not {codec}")
        self._nvc, self._gpu, self._on_event = nvc, gpu, on_event
        self._codec = getattr(nvc.cudaVideoCodec, _CODECS[codec])
        self._time_base = stream.time_base
        self._color = ColorSpec.from_av(stream.codec_context.colorspace, stream.codec_context.color_range)
        self._bsf, self._headers = _annexb(stream, codec)
        self._stream = gpu.stream()
        self._pool: FramePool | None = None
        self._keyframes_only = False
        self._need_key = True  # start (and restart) at a keyframe, with the stream's headers first
        self._decoder = self._create()

    def _create(self):
        with self._gpu.current():
            return self._nvc.CreateDecoder(
                gpuid=self._gpu.index, codec=self._codec, cudacontext=self._gpu.context.handle,
                cudastream=self._stream.handle, usedevicememory=True,
                latency=self._nvc.DisplayDecodeLatencyType.LOW,
            )

    def decode(self, packet: av.Packet) -> list:
        """Decode one packet; returns the pictures it completed (valid until the next call)."""
        if not packet.is_keyframe and (self._need_key or self._keyframes_only):
            return []
        pictures = []
        for annexb in self._bsf(packet):
            pictures += self._decode_annexb(annexb)
        return pictures

    def _decode_annexb(self, packet: av.Packet, retry: bool = True) -> list:
        data = self._nvc.PacketData()
        # the bytes behind bsl_data must live until Decode returns: `payload` holds them
        if self._need_key and self._headers:  # SPS/PPS sent out of band (SDP) go in front
            payload = np.frombuffer(self._headers + bytes(packet), np.uint8)
            data.bsl_data, data.bsl = payload.ctypes.data, payload.size
        else:
            payload = packet
            data.bsl_data, data.bsl = packet.buffer_ptr, packet.buffer_size
        self._need_key = False
        data.pts = packet.pts if packet.pts is not None else _NO_PTS
        data.decode_flag = self._nvc.VideoPacketFlag.ENDOFPICTURE  # one access unit per packet
        try:
            with self._gpu.current():
                frames = self._decoder.Decode(data)
                width, height = self._decoder.GetWidth(), self._decoder.GetHeight()
        except Exception as exc:  # NVDEC errors are plain exceptions; this camera starts over
            self._recreate(exc)
            # a keyframe that failed (e.g. a larger resolution than the decoder was made for)
            # is tried once on the new decoder rather than losing a whole GOP
            return self._decode_annexb(packet, retry=False) if retry and packet.is_keyframe else []
        del payload
        return [self._picture(f, width, height) for f in frames]

    def _picture(self, frame, width: int, height: int) -> DeviceFrame:
        pts = frame.getPTS()
        luma = int(frame.GetPtrToPlane(0))
        return DeviceFrame(width, height, None if pts == _NO_PTS else float(pts * self._time_base),
                           luma, width, luma + width * height, width, self._color, self._gpu.index)

    def retain(self, picture: DeviceFrame) -> DeviceFrame | None:
        """Copy a picture the source keeps into this camera's frame pool; None if the pool is full."""
        pool = self._pool
        if pool is None or (pool.width, pool.height) != (picture.width, picture.height):
            if pool is not None:
                self._on_event("resolution_change")
            pool = self._pool = FramePool(self._gpu, picture.width, picture.height)
        buffer = pool.take()
        if buffer is None:
            return None
        dst = int(buffer)
        w, h = picture.width, picture.height
        with self._gpu.current():
            self._gpu.copy_2d_d2d(dst, pool.pitch, picture.luma_ptr, picture.luma_pitch, w, h, self._stream)
            self._gpu.copy_2d_d2d(dst + pool.chroma_offset(), pool.pitch, picture.chroma_ptr,
                                  picture.chroma_pitch, w, (h + 1) // 2, self._stream)
            self._stream.synchronize()  # the decoder may reuse its surface from the next Decode on
        kept = DeviceFrame(w, h, picture.time, dst, pool.pitch, dst + pool.chroma_offset(), pool.pitch,
                           picture.color, picture.gpu)
        weakref.finalize(kept, pool.give_back, buffer)
        return kept

    def keyframes_only(self, enabled: bool) -> None:
        """Feed NVDEC keyframes only (for cameras sampled at <= 1 fps; see s1_source.KeyframeGate)."""
        self._keyframes_only = enabled

    def _recreate(self, exc: Exception) -> None:
        self._on_event("decoder_recreated")
        log_event(log, logging.WARNING, "NVDEC decode failed; decoder recreated, waiting for a keyframe",
                  error=repr(exc))
        self._decoder = None
        self._decoder = self._create()
        self._need_key = True

    def close(self) -> None:
        """Release the decoder (its frame buffers go when the last frame holding one is dropped)."""
        self._decoder = None


def _annexb(stream: av.video.stream.VideoStream, codec: str) -> tuple[Callable[[av.Packet], list], bytes]:
    """NVDEC's parser reads Annex B. MP4-style streams (avcC/hvcC extradata, starting with 1) are
    converted by FFmpeg's filter, which also puts the headers in front of keyframes. RTSP is Annex
    B already (FFmpeg's RTP depacketiser); its extradata holds the SDP's SPS/PPS, which cameras may
    send only there: they are put in front of the first keyframe. Returns (filter, headers)."""
    extradata = bytes(stream.codec_context.extradata or b"")
    if extradata[:1] != b"\x01":
        return (lambda packet: [packet]), extradata
    from av.bitstream import BitStreamFilterContext

    return BitStreamFilterContext(f"{codec}_mp4toannexb", stream).filter, b""


def nvdec_decoder(stream: av.video.stream.VideoStream, gpu: Gpu,
                  on_event: Callable[[str], None] = lambda kind: None) -> NvDecoder:
    """Decoder factory for the GPU path (bind `gpu` and `on_event` per camera)."""
    return NvDecoder(stream, gpu, on_event)
