"""Cameras for tests: GStreamer's RTSP server (Debian's python3 runs scripts/lab/rtsp_server.py),
VLC's UDP-only server, and endpoints that misbehave as real cameras do (refused, silent, not
RTSP, mute, refusing with a status).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from scripts.lab.common import CAMERA_CREDENTIALS, REPO, SYSTEM_PYTHON, ChildProcess, free_port


class RtspServer(ChildProcess):
    """GStreamer RTSP server looping each clip at rtsp://127.0.0.1:PORT/NAME."""

    def __init__(self, mounts: dict[str, Path], port: int | None = None, address: str = "127.0.0.1") -> None:
        self.mounts = mounts
        self.port = port or free_port()
        self.address = address  # 0.0.0.0: reachable from containers on a Docker network too

    def start(self) -> None:
        """Start and wait until it listens."""
        self.media_log = tempfile.NamedTemporaryFile(prefix="rtsp-media-", suffix=".log", delete=False)
        args = [SYSTEM_PYTHON, str(REPO / "scripts" / "lab" / "rtsp_server.py"), "--port", str(self.port),
                "--address", self.address, "--media-log", self.media_log.name]
        args += [f"{name}={path}" for name, path in self.mounts.items()]
        # stderr goes to a file, not to a pipe nobody reads (64 KiB of GStreamer warnings would
        # block the server in write()); `log_tail` shows it when a test finds the server mute
        self.log = tempfile.NamedTemporaryFile(prefix="rtsp-server-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith("READY"):
            self.proc.wait(5)
            raise RuntimeError(f"RTSP server did not start: {line}{Path(self.log.name).read_text()}")

    def url(self, name: str, credentials: str = CAMERA_CREDENTIALS, host: str = "127.0.0.1") -> str:
        """The RTSP URL of a mount, with the suite's camera credentials unless told otherwise."""
        auth = f"{credentials}@" if credentials else ""
        return f"rtsp://{auth}{host}:{self.port}/{name}"

    def answers(self, name: str, timeout: float = 8) -> bool:
        """True if the server describes mount `name` within `timeout` (its media can be prepared)."""
        return _describes(self.port, self.url(name, ""), timeout)

    def stop(self, timeout: float = 10) -> int | None:
        """Stop the server and delete its log."""
        code = super().stop(timeout)
        for log in (getattr(self, "log", None), getattr(self, "media_log", None)):
            if log is not None:
                log.close()
                Path(log.name).unlink(missing_ok=True)
        return code

    def log_tail(self, chars: int = 2000) -> str:
        """The end of what the server wrote to stderr."""
        return Path(self.log.name).read_text(errors="replace")[-chars:]

    def streams_served(self, name: str) -> int:
        """How many client streams of mount `name` the server has made (each RTSP client its own:
        a camera read once is one)."""
        return Path(self.media_log.name).read_text().splitlines().count(f"media {name}")

    def pause(self) -> None:
        """Stop sending packets on every stream, connections kept (a stalled camera)."""
        self.proc.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]

    def resume(self) -> None:
        """Send packets again after `pause`."""
        self.proc.send_signal(signal.SIGUSR2)  # type: ignore[union-attr]


def _describes(port: int, url: str, timeout: float) -> bool:
    """True if the RTSP server on `port` answers DESCRIBE `url` with 200 within `timeout`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(f"DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n".encode())
            return sock.recv(64).startswith(b"RTSP/1.0 200")
    except OSError:
        return False


class VlcServer(RtspServer):
    """VLC's RTSP server (Debian's vlc-bin) serving one clip at rtsp://127.0.0.1:PORT/NAME: a
    real server of another kind that sends RTP over UDP only (it answers a request for TCP
    interleaving with 461 Unsupported transport), as many cameras and restreamers do. It ends
    the RTP stream at each loop of the clip (RTCP BYE), so give it a long one. VLC refuses to
    run as root, so under root it runs as `nobody`."""

    def __init__(self, clip: Path, name: str = "live", port: int | None = None) -> None:
        super().__init__({name: Path(clip)}, port)
        self.clip, self.name = Path(clip), name

    def start(self, timeout: float = 20) -> None:
        """Start and wait until it describes the stream."""
        self.home = home = Path(tempfile.mkdtemp(prefix="vlc-server-"))  # readable by `nobody`, unlike pytest's tmp
        home.chmod(0o755)
        clip = home / self.clip.name
        shutil.copyfile(self.clip, clip)
        clip.chmod(0o644)
        sout = f"#rtp{{sdp=rtsp://127.0.0.1:{self.port}/{self.name}}}"
        args = ["cvlc", "-I", "dummy", "--loop", "--no-stats", "--sout-keep", str(clip), "--sout", sout]
        if os.geteuid() == 0:
            args = ["runuser", "-u", "nobody", "--", *args]
        self.log = tempfile.NamedTemporaryFile(prefix="vlc-server-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, "HOME": str(home)}, cwd=home)
        deadline = time.monotonic() + timeout
        while not self.answers(self.name, 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"VLC's RTSP server did not start: {tail}")
            time.sleep(0.2)

    def url(self, name: str | None = None, credentials: str = CAMERA_CREDENTIALS) -> str:
        """The stream's URL, with the suite's camera credentials (VLC asks for none)."""
        return super().url(name or self.name, credentials)

    def stop(self, timeout: float = 10) -> int | None:
        """Stop the server; delete its log and its copy of the clip."""
        code = super().stop(timeout)
        if getattr(self, "home", None) is not None:
            shutil.rmtree(self.home, ignore_errors=True)
        return code

    def pause(self) -> None:
        raise NotImplementedError("VLC's server cannot hold its streams: stop() and start() it instead")

    resume = pause


def _serve_forever(sock: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    """Accept connections until `sock` is closed, handing each to `handle`."""
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        handle(conn)


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


class RefusingPort:
    """A port on 127.0.0.1 held bound but not listening: connections to it are refused, and no
    other socket can take it while it is held (a port from free_port() is free only at that
    moment: a later bind(0), such as the daemon's metrics port, may get it, and then the "refused"
    camera reaches an HTTP server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


class SilentServer:
    """Accepts TCP connections (the kernel completes them) and never says anything."""

    def __init__(self) -> None:
        self.sock = _listening_socket()
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        """Stop listening."""
        self.sock.close()


class NotRtspServer:
    """Answers every connection like a web server, not an RTSP server."""

    def __init__(self) -> None:
        self.sock = _listening_socket()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=_serve_forever, args=(self.sock, self._answer), daemon=True).start()

    @staticmethod
    def _answer(conn: socket.socket) -> None:
        with conn:
            with contextlib.suppress(OSError):
                conn.settimeout(2)
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>hello</html>")

    def close(self) -> None:
        """Stop serving."""
        self.sock.close()


class FakeRtspCamera:
    """Speaks just enough RTSP to misbehave like a real camera: `answer="mute"` accepts
    DESCRIBE/SETUP/PLAY and then never sends a packet; `answer=401` (or 403, 404) refuses every
    request with that status, as a camera with other credentials (or path) does;
    `answer="no_transport"` answers every SETUP with 461 Unsupported transport. Counts requests."""

    SDP = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=fake\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\n"
           "a=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\na=control:trackID=0\r\n")
    REASONS = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}

    def __init__(self, answer: str | int = "mute") -> None:
        self.answer = answer
        self.sock = _listening_socket()
        self.port = self.sock.getsockname()[1]
        self.requests: list[str] = []
        self._open: list[socket.socket] = []
        threading.Thread(target=_serve_forever, args=(self.sock, self._start_session), daemon=True).start()

    def url(self, path: str = "stream", credentials: str = "") -> str:
        """An rtsp:// URL of this camera."""
        return f"rtsp://{credentials + '@' if credentials else ''}127.0.0.1:{self.port}/{path}"

    def _start_session(self, conn: socket.socket) -> None:
        self._open.append(conn)
        threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            while True:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                buffer += chunk
                while b"\r\n\r\n" in buffer:
                    head, buffer = buffer.split(b"\r\n\r\n", 1)
                    conn.sendall(self._reply(head.decode(errors="replace")))

    def _reply(self, request: str) -> bytes:
        lines = request.split("\r\n")
        method = lines[0].split(" ")[0]
        self.requests.append(method)
        cseq = next((line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("cseq:")), "0")
        if isinstance(self.answer, int):
            extra = 'WWW-Authenticate: Basic realm="camera"\r\n' if self.answer == 401 else ""
            return f"RTSP/1.0 {self.answer} {self.REASONS[self.answer]}\r\nCSeq: {cseq}\r\n{extra}\r\n".encode()
        headers, body = "", ""
        if method == "OPTIONS":
            headers = "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n"
        elif method == "DESCRIBE":
            body = self.SDP
            headers = f"Content-Type: application/sdp\r\nContent-Base: {lines[0].split(' ')[1]}/\r\n"
        elif method == "SETUP" and self.answer == "no_transport":
            return f"RTSP/1.0 461 Unsupported transport\r\nCSeq: {cseq}\r\n\r\n".encode()
        elif method == "SETUP":
            headers = "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: 4242\r\n"
        elif method == "PLAY":
            headers = "Session: 4242\r\n"
        return (f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n{headers}Content-Length: {len(body)}\r\n\r\n{body}").encode()

    def close(self) -> None:
        """Stop serving and drop open sessions."""
        self.sock.close()
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.close()
