"""A Docker engine of the test's own, started and stopped by its PID, leaving the host as it was.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from scripts.lab.common import wait_for


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
