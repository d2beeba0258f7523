"""Decode on the GPU: PyAV demuxes (timeouts, TCP, reconnects stay in s1_source) and each camera's
packets go to its own NVDEC decoder (PyNvVideoCodec `CreateDecoder` + `Decode`, which releases
the GIL). Pictures stay in device memory as NV12.

PyNvVideoCodec reuses its output buffers on the next `Decode`, so a picture the source keeps (one
that passed fps sampling) is copied device->device into the camera's frame pool (`retain`); the
others are never copied. The pool makes buffers on demand up to the frames a camera can have in
flight (`pool_frames`: the batcher's slot, the batches being prepared, inferred and finished); a
buffer returns to the pool when the frame holding it is dropped, and a full pool drops the new
frame (counted by the source as `decoder_buffers_busy`).

Everything this decoder allocates is released inside the GPU's context, by `close()` on the
camera's thread or, for a buffer still held by a frame in flight, when that frame is dropped
(pipeline.gpu.GpuObject): a reconnecting camera gives all its device memory back.

A new sequence (an SPS that differs from the one being decoded: a camera's resolution or profile
changed) gets a new decoder before its first picture is decoded. NVDEC's in-place reconfigure is
never relied on: PyNvVideoCodec's NvDecoder keeps the first sequence's display area and output
size on reconfigure (cropped or scaled pictures, reported at the old size) and throws from the
parser's callback when the new size exceeds the decoder's maximum.

Errors are per camera: a failing `Decode` recreates that camera's decoder (counted) and waits for
the next keyframe. Nothing here touches other cameras.
"""
from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable

import av
import numpy as np

from pipeline.core import ColorSpec, DeviceFrame
from pipeline.gpu import DeviceMemory, Gpu
from pipeline.logs import log_event

log = logging.getLogger(__name__)
DEFAULT_POOL_FRAMES = 6  # the depth of a lane with one engine run at a time (InferenceWorker.frames_in_flight)
_NO_PTS = -(1 << 62)
_CODECS = {"h264": "H264", "hevc": "HEVC"}
_PIXEL_FORMATS = {None, "yuv420p", "yuvj420p", "nv12"}  # 8-bit 4:2:0: what the letterbox kernel reads


class FramePool:
    """NV12 frame buffers of one size on one GPU, made on demand up to `capacity`. Its full depth
    is reserved against the GPU's memory budget when it is made (`reserve` raises when it does
    not fit: no pool) and given back (`release`) when it is closed."""

    def __init__(self, gpu: Gpu, width: int, height: int, capacity: int,
                 reserve: Callable[[int], None] = lambda n: None, release: Callable[[int], None] = lambda n: None
                 ) -> None:
        self.width, self.height = width, height
        self.row_bytes = (width + 1) // 2 * 2  # an NV12 row: ceil(w/2) interleaved UV pairs for chroma
        self.pitch = (self.row_bytes + 255) // 256 * 256
        self._bytes = self.pitch * (height + (height + 1) // 2)
        self._gpu, self._capacity = gpu, capacity
        self.reserved = self._bytes * capacity
        reserve(self.reserved)
        self._release = release
        self._free: list[DeviceMemory] = []
        self._made = 0
        self._closed = False
        self._lock = threading.RLock()  # give_back may run from a finalizer on any thread

    def take(self) -> DeviceMemory | None:
        """A free buffer, or None when `capacity` buffers are in use (or the pool is closed)."""
        with self._lock:
            if self._closed:
                return None
            if self._free:
                return self._free.pop()
            if self._made >= self._capacity:
                return None
            self._made += 1
        return self._gpu.alloc(self._bytes)

    def give_back(self, buffer: DeviceMemory) -> None:
        """Return a buffer (when the frame holding it is dropped); freed if the pool is closed."""
        with self._lock:
            if not self._closed:
                self._free.append(buffer)
                return
            self._made -= 1
        buffer.close()

    def close(self) -> None:
        """Free the idle buffers now; those held by frames in flight are freed when given back."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle, self._free = self._free, []
            self._made -= len(idle)
        self._release(self.reserved)
        for buffer in idle:
            buffer.close()

    @property
    def in_use(self) -> int:
        """Buffers held by frames."""
        with self._lock:
            return self._made - len(self._free)

    def chroma_offset(self) -> int:
        """Byte offset of the interleaved UV plane in a buffer."""
        return self.pitch * self.height


class NvDecoder:
    """One camera's NVDEC decoder on one GPU, fed with PyAV packets."""

    def __init__(self, stream: av.video.stream.VideoStream, gpu: Gpu,
                 on_event: Callable[[str], None] = lambda kind: None,
                 pool_frames: int = DEFAULT_POOL_FRAMES, reserve: Callable[[int], None] = lambda n: None,
                 release: Callable[[int], None] = lambda n: None) -> None:
        """`reserve`/`release`: count a frame pool's bytes against the GPU's memory budget
        (`reserve` raises when it does not fit)."""
        nvc = gpu.video_codec()  # PyNvVideoCodec, imported lazily: it raises without the NVIDIA driver
        ctx = stream.codec_context
        if ctx.name not in _CODECS:
            raise ValueError(f"NVDEC path decodes H.264 and H.265, not {ctx.name}")
        if ctx.pix_fmt not in _PIXEL_FORMATS:
            raise ValueError(f"NVDEC path decodes 8-bit 4:2:0 video, not {ctx.pix_fmt} "
                             "(set the camera to 8-bit 4:2:0, or use gpu.decoder: pyav)")
        self._nvc, self._gpu, self._on_event = nvc, gpu, on_event
        self._codec_name = ctx.name
        self._codec = getattr(nvc.cudaVideoCodec, _CODECS[ctx.name])
        self._time_base = stream.time_base
        self._color = ColorSpec.from_av(ctx.colorspace, ctx.color_range)
        self._bsf, self._headers = _annexb(stream, ctx.name)
        self._pool_frames, self._reserve, self._release = pool_frames, reserve, release
        self._pool: FramePool | None = None
        self._keyframes_only = False
        self._need_key = True  # start (and restart) at a keyframe, with the stream's headers first
        self._sps: bytes | None = None  # the sequence being decoded
        self._stream = gpu.stream()
        self._decoder = None
        try:
            self._decoder = self._create()
        except BaseException:
            self.close()
            raise

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
        if packet.is_keyframe:
            self._check_sequence(bytes(payload))
        self._need_key = False
        data.pts = packet.pts if packet.pts is not None else _NO_PTS
        data.decode_flag = self._nvc.VideoPacketFlag.ENDOFPICTURE  # one access unit per packet
        try:
            with self._gpu.current():
                frames = self._decoder.Decode(data)
                # only once a sequence was seen: before that NvDecoder has no size (0 in release builds)
                width, height = (self._decoder.GetWidth(), self._decoder.GetHeight()) if frames else (0, 0)
        except Exception as exc:  # NVDEC errors are plain exceptions; this camera starts over
            self._recreate("decoder_recreated", "NVDEC decode failed; decoder recreated, waiting for a keyframe",
                           error=repr(exc))
            # a keyframe that failed (e.g. a size this GPU cannot decode) is tried once on the
            # new decoder rather than losing a whole GOP
            return self._decode_annexb(packet, retry=False) if retry and packet.is_keyframe else []
        del payload
        return [self._picture(f, width, height) for f in frames]

    def flush(self) -> list:
        """At the end of a file: an empty packet, which the Video Codec SDK's NvDecoder marks
        CUVID_PKT_ENDOFSTREAM, so the parser gives out the pictures it still holds (not yet run
        on a GPU)."""
        data = self._nvc.PacketData()
        data.bsl_data, data.bsl = 0, 0
        flag = getattr(self._nvc.VideoPacketFlag, "ENDOFSTREAM", None)
        if flag is not None:
            data.decode_flag = flag
        try:
            with self._gpu.current():
                frames = self._decoder.Decode(data)
                width, height = (self._decoder.GetWidth(), self._decoder.GetHeight()) if frames else (0, 0)
        except Exception as exc:  # noqa: BLE001 - the file's last pictures are lost, not the camera
            log_event(log, logging.WARNING, "NVDEC flush at the end of the file failed", error=repr(exc))
            return []
        return [self._picture(f, width, height) for f in frames]

    def _check_sequence(self, access_unit: bytes) -> None:
        """A keyframe whose SPS differs from the current one starts a new decoder (see above)."""
        sps = sequence_header(access_unit, self._codec_name)
        if sps is None:
            return
        if self._sps is not None and sps != self._sps:
            self._recreate("sequence_change", "new video sequence (SPS changed: size or profile); decoder recreated")
            self._need_key = False  # this keyframe starts the new sequence
        self._sps = sps

    def _picture(self, frame, width: int, height: int) -> DeviceFrame:
        # PyNvVideoCodec's NV12 output is tight: pitch = width, chroma right after the luma plane
        pts = frame.getPTS()
        luma = int(frame.GetPtrToPlane(0))
        return DeviceFrame(width, height, None if pts == _NO_PTS else float(pts * self._time_base),
                           luma, width, luma + width * height, width, self._color, self._gpu.index)

    def retain(self, picture: DeviceFrame) -> DeviceFrame | None:
        """Copy a picture the source keeps into this camera's frame pool; None if the pool is full."""
        pool = self._pool
        if pool is None or (pool.width, pool.height) != (picture.width, picture.height):
            if pool is not None:
                pool.close()
                self._pool = None
            pool = self._pool = FramePool(self._gpu, picture.width, picture.height, self._pool_frames,
                                          self._reserve, self._release)
        buffer = pool.take()
        if buffer is None:
            return None
        dst, w, h = buffer.ptr, picture.width, picture.height
        with self._gpu.current():
            self._gpu.copy_2d_d2d(dst, pool.pitch, picture.luma_ptr, picture.luma_pitch, w, h, self._stream)
            self._gpu.copy_2d_d2d(dst + pool.chroma_offset(), pool.pitch, picture.chroma_ptr,
                                  picture.chroma_pitch, pool.row_bytes, (h + 1) // 2, self._stream)
            self._stream.synchronize()  # the preprocessing kernel reads it on another stream
        kept = DeviceFrame(w, h, picture.time, dst, pool.pitch, dst + pool.chroma_offset(), pool.pitch,
                           picture.color, picture.gpu)
        weakref.finalize(kept, pool.give_back, buffer).atexit = False
        return kept

    def keyframes_only(self, enabled: bool) -> None:
        """Feed NVDEC keyframes only (for cameras sampled at <= 1 fps; see s1_source.KeyframeGate)."""
        self._keyframes_only = enabled

    def _recreate(self, kind: str, message: str, **fields) -> None:
        self._on_event(kind)
        log_event(log, logging.WARNING, message, **fields)
        self._drop_decoder()
        self._decoder = self._create()
        self._need_key = True

    def _drop_decoder(self) -> None:
        with self._gpu.current():  # its surfaces are freed by its destructor, in our context too
            self._decoder = None

    def close(self) -> None:
        """Release the decoder, its stream and the pool's idle buffers now (buffers held by frames
        in flight are freed when those frames are dropped)."""
        self._drop_decoder()
        if self._pool is not None:
            self._pool.close()
        self._stream.close()


def sequence_header(access_unit: bytes, codec: str) -> bytes | None:
    """The last SPS NAL unit of an Annex B access unit before its first picture slice (None if
    it has none). The last, because the first keyframe of a connection carries the SDP's SPS in
    front of the camera's in-band one, and the two often differ in bytes (VUI, level) while
    describing the same sequence: comparing the in-band one with the next keyframe's avoids a
    decoder recreated on every connect. Comparing bytes is enough to see a new sequence: cameras
    repeat the same SPS before each keyframe."""
    vcl, sps_type = ((lambda t: 1 <= t <= 5), 7) if codec == "h264" else ((lambda t: t <= 31), 33)
    found = None
    pos = access_unit.find(b"\x00\x00\x01")
    while pos >= 0:
        start = pos + 3
        if start >= len(access_unit):
            break
        header = access_unit[start]
        nal_type = header & 0x1F if codec == "h264" else (header >> 1) & 0x3F
        if vcl(nal_type):
            break
        nxt = access_unit.find(b"\x00\x00\x01", start)
        if nal_type == sps_type:
            end = len(access_unit) if nxt < 0 else nxt
            found = access_unit[start:end].rstrip(b"\x00")  # zeros before a 4-byte start code
        pos = nxt
    return found


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
                  on_event: Callable[[str], None] = lambda kind: None,
                  pool_frames: int = DEFAULT_POOL_FRAMES, reserve: Callable[[int], None] = lambda n: None,
                  release: Callable[[int], None] = lambda n: None) -> NvDecoder:
    """Decoder factory for the GPU path (bind `gpu`, `on_event`, `pool_frames` and the budget's
    `reserve`/`release` per camera)."""
    return NvDecoder(stream, gpu, on_event, pool_frames, reserve, release)
