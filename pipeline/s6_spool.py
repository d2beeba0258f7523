"""The publish spool: a bounded, crash-safe, append-only log of outgoing messages on disk.

Every message is appended before it is sent and forgotten only when Kafka has acknowledged it
and every message before it, so a broker outage or a `kill -9` loses nothing already appended
(writes go to the OS at once; fsync every `sync_interval_s` covers power loss).

Layout in the spool folder: segment files `<first record number:016d>.seg` of records
[4-byte length][4-byte CRC32][2-byte topic length][2-byte key length][topic][key][value], and
`committed` (JSON: the number of the first record not known to be delivered). On open, segments
are read back up to the first torn or corrupt record (the tail of a crash), which is cut off.

Reading is separate from committing: `read()` hands out records from a read position that
`rewind()` moves back to the first uncommitted one (after a failed send, so order per partition
is kept); records already acknowledged out of order are skipped then, so only those in flight at
the failure may be sent twice: delivery is at least once.

Bounds: `max_bytes` on disk. When an append would pass it, the policy decides: `drop_oldest`
deletes the oldest segment (its undelivered records are counted as dropped), `drop_newest` refuses
the new record (counted). Segments roll at `segment_bytes`.
"""
from __future__ import annotations

import json
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

_HEAD = struct.Struct(">II")  # length of the body, CRC32 of the body
_KEYS = struct.Struct(">HH")  # topic length, key length


@dataclass(frozen=True, slots=True)
class Record:
    """One spooled message, numbered in append order."""

    number: int
    topic: str
    key: str
    value: bytes


class SpoolFull(Exception):
    """The spool is at its size limit and its policy drops the newest record."""


class Spool:
    """Append, read, acknowledge; see the module docstring for the guarantees."""

    def __init__(self, folder: Path, max_bytes: int, policy: str = "drop_oldest",
                 segment_bytes: int = 4 << 20, sync_interval_s: float = 1.0) -> None:
        if policy not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"unknown spool policy {policy!r}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.policy = max_bytes, policy
        self._segment_bytes = max(1024, min(segment_bytes, max_bytes // 4 or 1024))
        self._sync_interval = sync_interval_s
        self._segments: list[_Segment] = []  # oldest first
        self._acked: set[int] = set()  # acknowledged, above the commit mark (out of order)
        self._bytes = 0  # on disk in segments
        self.dropped = 0  # records lost to the size limit since start
        self._committed = self._read_committed()
        self._load()
        self._read_next = self._committed
        self._next_number = self._segments[-1].end if self._segments else self._committed
        self._writer = None
        self._reader: _Reader | None = None
        self._last_sync = time.monotonic()

    # ------------------------------------------------------------------ state
    @property
    def bytes(self) -> int:
        """Bytes on disk in segments."""
        return self._bytes

    @property
    def pending(self) -> int:
        """Records appended but not yet committed (delivered in order)."""
        return self._next_number - self._committed

    @property
    def unread(self) -> int:
        """Records not yet handed out by `read` since the last rewind."""
        return self._next_number - self._read_next

    # ------------------------------------------------------------------ writing
    def append(self, topic: str, key: str, value: bytes) -> int:
        """Add a record; returns its number. Raises SpoolFull under `drop_newest` when full."""
        t, k = topic.encode(), key.encode()
        body = _KEYS.pack(len(t), len(k)) + t + k + value
        size = _HEAD.size + len(body)
        while self.bytes + size > self.max_bytes:
            if self.policy == "drop_newest" or len(self._segments) <= 1:
                if self.policy == "drop_newest" or not self._segments:
                    self.dropped += 1
                    raise SpoolFull(f"spool full ({self.bytes} of {self.max_bytes} bytes)")
                self._roll()  # the only segment is full: start a new one so the old can go
            self._drop_oldest_segment()
        segment = self._current_segment(size)
        number = self._next_number
        self._writer.write(_HEAD.pack(len(body), zlib.crc32(body)) + body)
        self._writer.flush()  # in the OS now: survives kill -9
        segment.add(size)
        self._bytes += size
        self._next_number += 1
        if time.monotonic() - self._last_sync >= self._sync_interval:
            self.sync()
        return number

    def sync(self) -> None:
        """fsync the open segment and the commit mark (power-loss safety)."""
        if self._writer is not None:
            os.fsync(self._writer.fileno())
        self._write_committed()
        self._last_sync = time.monotonic()

    def _current_segment(self, size: int) -> _Segment:
        if not self._segments or self._writer is None or self._segments[-1].size + size > self._segment_bytes:
            self._roll()
        return self._segments[-1]

    def _roll(self) -> None:
        if self._writer is not None:
            self._writer.close()
        segment = _Segment(self.folder / f"{self._next_number:016d}.seg", self._next_number)
        self._segments.append(segment)
        self._writer = open(segment.path, "ab")  # noqa: SIM115 - kept open while it is the newest

    def _drop_oldest_segment(self) -> None:
        oldest = self._pop_oldest_segment()
        first = max(oldest.first, self._committed)
        self.dropped += max(0, oldest.end - first) - sum(1 for n in self._acked if first <= n < oldest.end)
        self._committed = max(self._committed, oldest.end)
        self._read_next = max(self._read_next, oldest.end)
        self._acked = {n for n in self._acked if n >= oldest.end}
        self._advance_commit()

    # ------------------------------------------------------------------ reading and committing
    def read(self, limit: int) -> list[Record]:
        """Up to `limit` records from the read position on, in order; moves the read position."""
        if self._writer is not None:
            self._writer.flush()
        out: list[Record] = []
        while len(out) < limit and self._read_next < self._next_number:
            reader = self._reader
            if reader is None or reader.number != self._read_next or reader.number >= reader.segment.end:
                if reader is not None:
                    reader.close()
                segment = next(s for s in self._segments if s.first <= self._read_next < s.end)
                reader = self._reader = _Reader(segment, self._read_next)
            record = reader.next()
            self._read_next += 1
            if record.number not in self._acked:  # acknowledged out of order before a rewind
                out.append(record)
        return out

    def ack(self, number: int) -> None:
        """Kafka acknowledged record `number`; commit every record up to the first unacknowledged."""
        if number < self._committed:
            return
        self._acked.add(number)
        self._advance_commit()

    def _advance_commit(self) -> None:
        while self._committed in self._acked:
            self._acked.discard(self._committed)
            self._committed += 1
        while len(self._segments) > 1 and self._segments[0].end <= self._committed:
            self._pop_oldest_segment()

    def _pop_oldest_segment(self) -> _Segment:
        oldest = self._segments.pop(0)
        self._bytes -= oldest.size
        oldest.path.unlink(missing_ok=True)
        return oldest

    def rewind(self) -> None:
        """Read again from the first record not committed, skipping those acknowledged since."""
        self._read_next = self._committed

    def close(self) -> None:
        """Flush, record the commit mark, close the files."""
        self.sync()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # ------------------------------------------------------------------ persistence
    def _read_committed(self) -> int:
        try:
            return int(json.loads((self.folder / "committed").read_text())["next"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def _write_committed(self) -> None:
        tmp = self.folder / "committed.tmp"
        tmp.write_text(json.dumps({"next": self._committed}))
        os.replace(tmp, self.folder / "committed")

    def _load(self) -> None:
        """Re-open segments left by an earlier run, cutting a torn or corrupt tail."""
        paths = sorted(self.folder.glob("*.seg"))
        for path in paths:
            segment = _Segment(path, int(path.stem))
            segment.scan()
            if segment.count == 0:
                path.unlink(missing_ok=True)
                continue
            if self._segments and segment.first != self._segments[-1].end:
                path.unlink(missing_ok=True)  # a gap: what follows a corrupt segment is unusable
                continue
            self._segments.append(segment)
            self._bytes += segment.size
        while self._segments and self._segments[0].end <= self._committed:
            self._pop_oldest_segment()
        if self._segments:
            self._committed = max(self._committed, self._segments[0].first)


class _Segment:
    """One segment file: its first record number, record count and size in bytes."""

    def __init__(self, path: Path, first: int) -> None:
        self.path, self.first = path, first
        self.count = 0
        self.size = 0

    @property
    def end(self) -> int:
        """Number of the record after its last."""
        return self.first + self.count

    def add(self, size: int) -> None:
        self.count += 1
        self.size += size

    def scan(self) -> None:
        """Count valid records; truncate the file after the last one."""
        data = self.path.read_bytes()
        offset = 0
        while offset + _HEAD.size <= len(data):
            length, crc = _HEAD.unpack_from(data, offset)
            body = data[offset + _HEAD.size:offset + _HEAD.size + length]
            if len(body) != length or zlib.crc32(body) != crc:
                break
            offset += _HEAD.size + length
            self.count += 1
        self.size = offset
        if offset != len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(offset)


class _Reader:
    """Reads one segment's records in order, starting at a given record number."""

    def __init__(self, segment: _Segment, number: int) -> None:
        self.segment, self.number = segment, segment.first
        self._file = open(segment.path, "rb")  # noqa: SIM115 - closed by close()
        while self.number < number:  # skip to the wanted record (headers only)
            length, _ = _HEAD.unpack(self._file.read(_HEAD.size))
            self._file.seek(length, os.SEEK_CUR)
            self.number += 1

    def next(self) -> Record:
        """The record at `number` (the caller checks it exists); advances."""
        length, _ = _HEAD.unpack(self._file.read(_HEAD.size))
        body = self._file.read(length)
        tlen, klen = _KEYS.unpack_from(body)
        topic = body[_KEYS.size:_KEYS.size + tlen].decode()
        key = body[_KEYS.size + tlen:_KEYS.size + tlen + klen].decode()
        record = Record(self.number, topic, key, body[_KEYS.size + tlen + klen:])
        self.number += 1
        return record

    def close(self) -> None:
        self._file.close()
