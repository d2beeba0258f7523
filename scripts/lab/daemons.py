"""The daemon as a subprocess: its config, start and stop, several daemons in one placement
group, and HTTP requests to their endpoints.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from scripts.lab.audit import transcribe
from scripts.lab.broker import consume
from scripts.lab.cameras import RtspServer
from scripts.lab.common import REPO, ChildProcess, free_port, wait_for


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


@dataclass
class Daemon(ChildProcess):
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
                 camera_host: str = "127.0.0.1", session_s: float = 6, heartbeat_s: float = 1,
                 settings: dict | None = None) -> None:
        self.folder, self.rtsp, self.bootstrap, self.camera_host = folder, rtsp, bootstrap, camera_host
        self.topic = f"placed-{uuid.uuid4().hex[:8]}"
        self.group = f"group-{self.topic}"
        self.cameras = dict(cameras)  # camera -> fps (its cost, as if 1080p)
        self.nodes: dict[str, tuple[Daemon, int]] = {}
        self.hosts: dict[str, str] = {}  # node -> the address its HTTP endpoint answers on
        self.capacities: dict[str, float] = {}
        self.listens: dict[str, str] = {}  # node -> the address its HTTP endpoint listens on
        self.session_s, self.heartbeat_s = session_s, heartbeat_s
        self.settings = dict(settings or {})  # more top-level config keys for every node (log_level, ...)

    def config(self, node: str, capacity: float, port: int, listen: str = "127.0.0.1") -> Path:
        cameras = [(c, self.rtsp.url("cam", host=self.camera_host), fps) for c, fps in self.cameras.items()]
        path = daemon_config(
            self.folder / f"{node}.yaml", PLACEMENT_MODEL, self.bootstrap, cameras, topic=self.topic,
            status_topic=f"{self.topic}-status", metrics_port=port,
            kafka={"stop_timeout_s": 3, "spool": {"folder": str(self.folder / f"{node}-spool")}},
            placement={"mode": "kafka-group", "group": self.group, "node_id": node, "capacity": capacity,
                       "session_timeout_s": self.session_s, "heartbeat_s": self.heartbeat_s},
            **self.settings)
        if listen != "127.0.0.1":
            import yaml

            data = yaml.safe_load(path.read_text())
            data["metrics"]["listen"] = f"{listen}:{port}"
            path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def start(self, node: str, capacity: float, namespace=None, env: dict | None = None) -> None:
        """Start (or restart) a node; in `namespace` (a NetNamespace) it is a host of its own;
        `env`: more environment for its process."""
        port = self.nodes[node][1] if node in self.nodes else free_port()
        if node in self.nodes:  # a restart: the old process is gone; close what the test held of it
            self.nodes[node][0].stop()
        listen = "0.0.0.0" if namespace is not None else "127.0.0.1"
        self.hosts[node] = namespace.address if namespace is not None else "127.0.0.1"
        daemon = Daemon(self.config(node, capacity, port, listen), self.folder / f"{node}-{time.time():.3f}.log",
                        env=env, wrapper=namespace.run_in if namespace is not None else ())
        daemon.start()
        self.nodes[node] = (daemon, port)
        self.capacities[node], self.listens[node] = capacity, listen

    def reload_all(self, cameras: dict[str, float]) -> float:
        """A new camera list in every node's config, then SIGHUP to every live node at once (as a
        ConfigMap change reaches every pod); returns when the signals were sent."""
        self.cameras = dict(cameras)
        for node, (_, port) in self.nodes.items():
            self.config(node, self.capacities[node], port, self.listens[node])
        at = time.time()
        for node in self.alive():
            self.nodes[node][0].proc.send_signal(signal.SIGHUP)
        return at

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
    if not got.get("Content-Type", "").startswith(("image/", "video/")):
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
