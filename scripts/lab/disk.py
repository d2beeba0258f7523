"""Disk faults: a real small filesystem (tmpfs) to fill up and remount read-only, and a disk whose
fsync stalls on demand (a preloaded library: scripts/lab/stall_fsync.c).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path


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


def fsync_stall_library(folder: Path) -> Path:
    """scripts/lab/stall_fsync.c built into `folder` (gcc): preload it (LD_PRELOAD) with
    STALL_FSYNC_WHILE=FILE, and every fsync of that process waits while FILE exists."""
    source = Path(__file__).with_name("stall_fsync.c")
    library = Path(folder) / "stall_fsync.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"], check=True,
                   capture_output=True)
    return library
