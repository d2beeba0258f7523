"""A small RTSP relay for machines without GStreamer (the GPU test machine): clips are pushed into
it by FFmpeg's own RTSP muxer (through PyAV: ANNOUNCE, SETUP, RECORD, RTP interleaved over TCP,
paced at the clip's frame rate and looped), and cameras pull them with DESCRIBE, SETUP, PLAY over
TCP, as the daemon does. What the player gets is FFmpeg's RTP packetisation and RTCP sender
reports, relayed unchanged.

    python -m scripts.lab.rtsp_relay --port 8554 cam1=clip.mp4 cam2=other.mp4   # rtsp://127.0.0.1:8554/cam1

It is test equipment, not a media server: one publisher per path, TCP only, no authentication.
Written here because the GPU machine has no RTSP server (no GStreamer, no package registry) and
PyAV can push but not serve. Each clip is pushed by a child process of its own: PyAV's muxer
holds the GIL while it talks to the server, which would deadlock a server thread beside it.
"""
from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import av


class _Path:
    """One relayed stream: the publisher's SDP and the players to forward to."""

    def __init__(self) -> None:
        self.sdp: str | None = None
        self.players: list[tuple[socket.socket, int]] = []  # (socket, its first interleaved channel)
        self.lock = threading.Lock()
        self.ready = threading.Event()


class RtspRelay:
    """Accepts publishers and players on one TCP port; `publish()` pushes a clip into a path."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._sock = socket.create_server((host, port))
        self.host, self.port = host, self._sock.getsockname()[1]
        self._paths: dict[str, _Path] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pushers: list[subprocess.Popen] = []
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    def url(self, name: str) -> str:
        """The URL a camera reads `name` at."""
        return f"rtsp://{self.host}:{self.port}/{name}"

    def publish(self, name: str, clip: Path) -> None:
        """Push `clip` into path `name` at its frame rate, looping, until close(); waits until it is live."""
        self._pushers.append(subprocess.Popen([sys.executable, __file__, "--push", self.url(name), str(clip)]))
        if not self._path(name).ready.wait(20):
            raise RuntimeError(f"relay: {name} did not go live")

    def close(self) -> None:
        """Stop pushing and serving."""
        self._stop.set()
        for pusher in self._pushers:
            pusher.kill()
            pusher.wait()
        self._sock.close()
        for path in list(self._paths.values()):
            with path.lock:
                for player, _ in path.players:
                    player.close()
                path.players.clear()

    # ------------------------------------------------------------------ serving
    def _path(self, name: str) -> _Path:
        with self._lock:
            return self._paths.setdefault(name, _Path())

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="relay-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        session, publishing, path, player_base = "12345678", None, None, 0
        try:
            while not self._stop.is_set():
                first = reader.read(1)
                if not first:
                    return
                if first == b"$":  # interleaved RTP/RTCP
                    channel, size = reader.read(1)[0], int.from_bytes(reader.read(2), "big")
                    data = reader.read(size)
                    if publishing is not None:
                        self._forward(publishing, channel, data)
                    continue
                method, url, headers, body = _request(first + reader.readline(), reader)
                name = re.sub(r"^rtsp://[^/]+/", "", url).split("/")[0]
                path = self._path(name)
                extra = ""
                if method == "OPTIONS":
                    extra = "Public: OPTIONS, DESCRIBE, ANNOUNCE, SETUP, PLAY, RECORD, TEARDOWN, GET_PARAMETER\r\n"
                elif method == "ANNOUNCE":
                    path.sdp = body.decode()
                elif method == "DESCRIBE":
                    if path.sdp is None:
                        conn.sendall(_reply(headers, "404 Not Found"))
                        continue
                    sdp = path.sdp.encode()
                    conn.sendall(_reply(headers, "200 OK", f"Content-Base: {url.rstrip('/')}/\r\nContent-Type: "
                                        f"application/sdp\r\n", sdp))
                    continue
                elif method == "SETUP":
                    transport = headers.get("transport", "")
                    if "interleaved=" not in transport:
                        conn.sendall(_reply(headers, "461 Unsupported Transport"))
                        continue
                    base = int(re.search(r"interleaved=(\d+)", transport).group(1))
                    extra = f"Transport: {transport}\r\nSession: {session};timeout=60\r\n"
                    if "mode=record" not in transport.lower():
                        player_base = base
                elif method == "RECORD":
                    publishing = path
                    path.ready.set()
                elif method == "PLAY":
                    conn.sendall(_reply(headers, "200 OK", f"Session: {session}\r\n"))
                    with path.lock:
                        path.players.append((conn, player_base))
                    continue
                elif method == "TEARDOWN":
                    conn.sendall(_reply(headers, "200 OK"))
                    return
                conn.sendall(_reply(headers, "200 OK", extra))
        except (OSError, ValueError, IndexError, AttributeError):
            return
        finally:
            if path is not None:
                with path.lock:
                    path.players = [(s, b) for s, b in path.players if s is not conn]
            conn.close()

    def _forward(self, path: _Path, channel: int, data: bytes) -> None:
        with path.lock:
            players = list(path.players)
        for player, base in players:
            try:
                player.sendall(b"$" + bytes([base + channel % 2]) + len(data).to_bytes(2, "big") + data)
            except OSError:
                with path.lock:
                    path.players = [(s, b) for s, b in path.players if s is not player]


def push(url: str, clip: Path) -> None:
    """Push `clip` to an RTSP server with FFmpeg's muxer at its frame rate, looping, forever."""
    offset, started = 0.0, time.monotonic()
    with av.open(url, "w", format="rtsp", options={"rtsp_transport": "tcp"}) as out:
        with av.open(str(clip)) as first:
            ostream = out.add_stream_from_template(first.streams.video[0])
        while True:
            with av.open(str(clip)) as source:
                stream = source.streams.video[0]
                duration = 0.0
                for packet in source.demux(stream):
                    if packet.pts is None:
                        continue
                    t = float(packet.pts * stream.time_base)
                    duration = max(duration, t + float((packet.duration or 0) * stream.time_base))
                    delay = started + offset + t - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    shift = round(offset / stream.time_base)
                    packet.dts = (packet.dts if packet.dts is not None else packet.pts) + shift
                    packet.pts += shift
                    packet.stream = ostream
                    out.mux(packet)
            offset += duration or 1.0


def _request(first_line: bytes, reader) -> tuple[str, str, dict[str, str], bytes]:
    method, url, _ = first_line.decode().split(" ", 2)
    headers = {}
    while (line := reader.readline().decode().strip()):
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", 0)))
    return method, url, headers, body


def _reply(headers: dict[str, str], status: str, extra: str = "", body: bytes = b"") -> bytes:
    head = f"RTSP/1.0 {status}\r\nCSeq: {headers.get('cseq', '0')}\r\n{extra}"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--push", metavar="URL", help="(internal) push the one clip to URL")
    parser.add_argument("clips", nargs="+", help="NAME=CLIP")
    args = parser.parse_args()
    if args.push:
        push(args.push, Path(args.clips[0]))
        return 0
    relay = RtspRelay(port=args.port)
    for spec in args.clips:
        name, _, clip = spec.partition("=")
        relay.publish(name, Path(clip))
        print(relay.url(name), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        relay.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
