"""An RTSP relay for cameras that send RTP over UDP, which loses, reorders or re-times packets on
the way: the faults of a real network, on this machine only (test harness).

    with LossyRtspRelay(("127.0.0.1", 8554), loss=0.02, reorder=0.05) as relay:
        url = relay.url("live")  # give this to the daemon instead of the camera's own

RTSP requests and answers pass through unchanged, but for SETUP's `client_port`, which the relay
swaps for two UDP ports of its own (and back in the answer). Those ports forward the camera's
RTP to the client's ports, dropping `loss` of the packets and holding back `reorder` of them
until the next one has gone (seeded: the same packets each run), and its RTCP, with the NTP
time of sender reports shifted by `clock_offset_s` (a camera whose clock is wrong). RTCP from
the client goes straight to the camera. Only the relayed camera's packets are touched.

Why a relay rather than netem or iptables in a network namespace: this kernel has no netem
(`tc qdisc add ... netem`: "Specified qdisc kind is unknown"), iptables' statistic match can
drop but not reorder, and both need root, which a CI runner may not give. The relay needs
neither and its faults are reproducible.
"""
from __future__ import annotations

import random
import re
import socket
import struct
import threading

_CLIENT_PORT = re.compile(rb"client_port=(\d+)-(\d+)")
_CSEQ = re.compile(rb"(?im)^cseq:\s*(\d+)")
_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)")
NTP_SECONDS_OFFSET = 8  # in an RTCP sender report: header (4), SSRC (4), then NTP seconds


class LossyRtspRelay:
    """Relays one RTSP server (`upstream`: host, port) on a local port; see the module doc."""

    def __init__(self, upstream: tuple[str, int], loss: float = 0.0, reorder: float = 0.0,
                 clock_offset_s: int = 0, seed: int = 1) -> None:
        self.upstream = upstream
        self.loss, self.reorder, self.clock_offset_s = loss, reorder, clock_offset_s
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.forwarded = self.dropped = self.reordered = self.sender_reports = 0
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="relay-accept").start()

    def url(self, path: str, credentials: str = "") -> str:
        """The relayed stream's URL."""
        return f"rtsp://{credentials + '@' if credentials else ''}127.0.0.1:{self.port}/{path}"

    def close(self) -> None:
        self._closed.set()
        for sock in [self._listener, *self._sockets]:
            try:
                sock.close()
            except OSError:
                pass

    def __enter__(self) -> LossyRtspRelay:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    # ------------------------------------------------------------------ RTSP
    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self._sockets += [client, server]
            session = _Session(self, client)
            threading.Thread(target=self._pump, args=(client, server, session.request), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, session.answer), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, rewrite) -> None:
        buffer = b""
        try:
            while not self._closed.is_set():
                message, buffer = _next_message(buffer)
                if message is None:
                    data = src.recv(65536)
                    if not data:
                        break
                    buffer += data
                    continue
                dst.sendall(rewrite(message))
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # ------------------------------------------------------------------ UDP
    def _forward_rtp(self, sock: socket.socket, to: tuple[str, int]) -> None:
        held = None
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sockets.append(out)
        while not self._closed.is_set():
            try:
                packet = sock.recv(65536)
            except OSError:
                return
            with self._lock:
                if self._rng.random() < self.loss:
                    self.dropped += 1
                    continue
                if held is None and self._rng.random() < self.reorder:
                    held = packet
                    continue
                self.forwarded += 1
            try:
                out.sendto(packet, to)
                if held is not None:
                    out.sendto(held, to)
                    with self._lock:
                        self.forwarded += 1
                        self.reordered += 1
                    held = None
            except OSError:
                return

    def _forward_rtcp(self, sock: socket.socket, to: tuple[str, int]) -> None:
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sockets.append(out)
        while not self._closed.is_set():
            try:
                packet = bytearray(sock.recv(65536))
            except OSError:
                return
            if len(packet) >= 16 and packet[1] == 200:  # a sender report first, as RTCP compounds start
                with self._lock:
                    self.sender_reports += 1
                seconds = struct.unpack_from("!I", packet, NTP_SECONDS_OFFSET)[0]
                struct.pack_into("!I", packet, NTP_SECONDS_OFFSET, (seconds + self.clock_offset_s) % 2**32)
            try:
                out.sendto(bytes(packet), to)
            except OSError:
                return

    def _udp_pair(self) -> tuple[socket.socket, socket.socket]:
        """Two UDP sockets on consecutive ports (RTP even, RTCP next), as RTSP clients use."""
        for _ in range(100):
            rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rtp.bind(("127.0.0.1", 0))
            port = rtp.getsockname()[1]
            if port % 2 == 0:
                rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    rtcp.bind(("127.0.0.1", port + 1))
                    self._sockets += [rtp, rtcp]
                    return rtp, rtcp
                except OSError:
                    rtcp.close()
            rtp.close()
        raise OSError("no two consecutive UDP ports free")


class _Session:
    """One client connection: SETUPs' client ports, swapped for relay ports and back."""

    def __init__(self, relay: LossyRtspRelay, client: socket.socket) -> None:
        self._relay = relay
        self._client_host = client.getpeername()[0]
        self._pending: dict[bytes, tuple[bytes, bytes]] = {}  # CSeq -> the client's own ports

    def request(self, message: bytes) -> bytes:
        if not message.upper().startswith(b"SETUP ") or not _CLIENT_PORT.search(message):
            return message
        head, _, body = message.partition(b"\r\n\r\n")
        found = _CLIENT_PORT.search(head)
        rtp, rtcp = self._relay._udp_pair()
        port = rtp.getsockname()[1]
        cseq = _CSEQ.search(head)
        if cseq:
            self._pending[cseq.group(1)] = (found.group(1), found.group(2))
        to_rtp, to_rtcp = (self._client_host, int(found.group(1))), (self._client_host, int(found.group(2)))
        threading.Thread(target=self._relay._forward_rtp, args=(rtp, to_rtp), daemon=True).start()
        threading.Thread(target=self._relay._forward_rtcp, args=(rtcp, to_rtcp), daemon=True).start()
        head = _CLIENT_PORT.sub(b"client_port=%d-%d" % (port, port + 1), head, count=1)
        return head + b"\r\n\r\n" + body

    def answer(self, message: bytes) -> bytes:
        cseq = _CSEQ.search(message)
        ports = self._pending.pop(cseq.group(1), None) if cseq else None
        if ports is None:
            return message
        return _CLIENT_PORT.sub(b"client_port=" + ports[0] + b"-" + ports[1], message, count=1)


def _next_message(buffer: bytes) -> tuple[bytes | None, bytes]:
    """The first whole RTSP message (or interleaved `$` frame) in `buffer`, and the rest."""
    if buffer[:1] == b"$":
        if len(buffer) < 4:
            return None, buffer
        end = 4 + struct.unpack_from("!H", buffer, 2)[0]
        return (buffer[:end], buffer[end:]) if len(buffer) >= end else (None, buffer)
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None, buffer
    length = _LENGTH.search(buffer[:head_end])
    end = head_end + 4 + (int(length.group(1)) if length else 0)
    return (buffer[:end], buffer[end:]) if len(buffer) >= end else (None, buffer)
