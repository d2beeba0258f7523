"""What native libraries print on the process's stdout, kept out of the log stream.

PyNvVideoCodec 2.2.4 prints "Decode Error occurred for picture N" with printf for every picture
NVDEC had to conceal (there is no switch: on a lossy camera, one line per frame), and "[FATAL]
CUDA driver API error ..." before it ends the process; with LOGGER_LEVEL=DEBUG also its session
timers. Those lines would sit between our JSON lines in the journal or `kubectl logs`.

`NativeStdout` points file descriptor 1 at a pipe read by a thread of ours: every line is
counted by kind (`native_output_lines_total{library,kind}`) and logged as a JSON event, at most
once a minute per kind with how many came meanwhile; a "[FATAL]" line at once. Python's own
`sys.stdout`, and so our JSON log, keeps writing to the original stream. Used on the GPU path only (started when NVDEC
is chosen); `stop()` flushes C's stdio first and puts fd 1 back.
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import sys
import threading
import time

from pipeline.logs import log_event

log = logging.getLogger(__name__)
_KINDS = (("Decode Error occurred", "concealed_picture"), ("[FATAL]", "fatal"), ("Session ", "timer"))
_EVERY_S = 60.0
_LINE_MAX = 4096


def line_kind(line: str) -> str:
    """What a line printed by PyNvVideoCodec is about."""
    return next((kind for prefix, kind in _KINDS if prefix in line), "other")


class NativeStdout:
    """Capture of fd 1 while started (see the module docstring)."""

    def __init__(self, count=lambda kind: None, library: str = "PyNvVideoCodec") -> None:
        self._count, self._library = count, library
        self._saved: int | None = None
        self._python_stdout = None
        self._reader: threading.Thread | None = None
        self._seen: dict[str, list] = {}  # kind -> [lines since the last log, last log time]

    def start(self) -> None:
        """Point fd 1 at our pipe; Python's sys.stdout goes on to the original stream."""
        if self._saved is not None:
            return
        sys.stdout.flush()
        self._saved = os.dup(1)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.close(write_end)
        self._python_stdout = sys.stdout
        sys.stdout = io.TextIOWrapper(os.fdopen(os.dup(self._saved), "wb", buffering=0), line_buffering=True)
        _repoint_handlers(self._python_stdout, sys.stdout)  # our JSON log lines go on to the real stdout
        self._reader = threading.Thread(target=self._read, args=(read_end,), name="native-stdout", daemon=True)
        self._reader.start()

    def stop(self) -> None:
        """Flush what C's stdio holds, put fd 1 back, and log what is left to say."""
        if self._saved is None:
            return
        with contextlib.suppress(Exception):
            ctypes.CDLL(None).fflush(None)  # printf's buffer would otherwise reach the terminal at exit
        os.dup2(self._saved, 1)  # the pipe's last writer is gone: the reader sees its end
        os.close(self._saved)
        self._saved = None
        if self._reader is not None:
            self._reader.join(5)
        ours, sys.stdout = sys.stdout, self._python_stdout
        _repoint_handlers(ours, sys.stdout)
        ours.close()  # flushes; closes our duplicate of the original stream, not the stream
        for kind, (pending, _) in self._seen.items():
            if pending:
                self._log(kind, "", pending)

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as pipe:
            for raw in pipe:
                self._line(raw[:_LINE_MAX].decode(errors="replace").rstrip())

    def _line(self, line: str) -> None:
        if not line:
            return
        kind = line_kind(line)
        self._count(kind)
        pending, last = self._seen.setdefault(kind, [0, 0.0])
        now = time.monotonic()
        if kind == "fatal" or now - last >= _EVERY_S:
            self._seen[kind] = [0, now]
            self._log(kind, line, pending + 1)
        else:
            self._seen[kind][0] = pending + 1

    def _log(self, kind: str, line: str, count: int) -> None:
        level = logging.ERROR if kind == "fatal" else logging.WARNING if kind == "concealed_picture" else logging.INFO
        log_event(log, level, f"{self._library} printed on stdout", kind=kind, lines=count,
                  line=line or None, note="counted in native_output_lines_total; logged at most once a minute per kind")


def _repoint_handlers(old, new) -> None:
    """Log handlers writing to `old` write to `new` from now on."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is old:
            handler.setStream(new)
