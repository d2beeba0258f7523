"""The publish spool: a bounded, crash-safe, append-only log of outgoing messages on disk.

Every message is appended before it is sent and forgotten only when Kafka has acknowledged it
and every message before it, so a broker outage or a `kill -9` loses nothing already appended
(writes go to the OS at once; fsync every `sync_interval_s` covers power loss).

Layout in the spool folder: segment files `<first record number:016d>.seg` of records
[4-byte length][4-byte CRC32][2-byte topic length][2-byte key length][topic][key][value], and
`committed` (JSON: `next`, the number of the first record not known to be delivered, and
`acked`, ranges of records above it already delivered out of order, so a restart does not send
them again). On open, segments are read back up to the first torn or corrupt record (the tail of
a crash or power loss), which is cut off and counted (`lost["torn"]`). Files that are not ours
(other names, folders) are left alone. The folder is locked (flock on the folder itself) while
a spool has it open. Opening reads whatever an earlier run left (a clean stop, kill -9, power
loss, a full or read-only disk, an older release's files: the format is unchanged since the
first release, which wrote `next` only) and never fails on it; it fails only on what an
operator must fix (SpoolUnusable: permissions, a file where the folder should be, a folder
another daemon holds).

Reading is separate from committing: `read()` hands out records from a read position that
`rewind()` moves back to the first uncommitted one (after a failed send, so order per partition
is kept); records already acknowledged out of order are skipped then, so only those in flight at
the failure may be sent twice: delivery is at least once.

Bounds: `max_bytes` on disk. When an append would pass it, the policy decides: `drop_oldest`
deletes the oldest segment (its undelivered records are counted as dropped; where the disk will not
delete it, it drops nothing and the record is held in memory, as for any append the disk refuses),
`drop_newest` refuses the new record (counted). Segments roll at `segment_bytes`.

Host faults (disk full, folder read-only, removed or unwritable): an append the disk refuses is
undone (the file is cut back to its last whole record, so a torn record never sits between good
ones) and the record is kept in memory instead, up to `memory_bytes` under the same policy; `fault`
says why. While faulted the disk is tried again at most once a second; once it takes a record,
the records held in memory are written to it (`maintain`), oldest first. Records can be missing
from the numbering (lost with a removed folder, or held in memory when the daemon stopped): reads
and commits step over such gaps. Nothing here raises on a disk error except `Spool()` for a
folder it cannot use at all (`SpoolUnusable`) and `append` when nothing can keep the record.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

_HEAD = struct.Struct(">II")  # length of the body, CRC32 of the body
_KEYS = struct.Struct(">HH")  # topic length, key length
_DISK_RETRY_S = 1.0  # while faulted, how often an append tries the disk again
_ACKED_RANGES_MAX = 10_000  # out-of-order acknowledgements saved in `committed`; the rest are re-sent
_SEGMENT_NAME = re.compile(r"^[0-9]{16}\.seg$")
_FULL = (errno.ENOSPC, errno.EDQUOT)
# a disk in one of these states may come back by itself or by the operator's hand: run degraded
_HOST_FAULTS = (*_FULL, errno.EROFS, errno.EIO)


@dataclass(frozen=True, slots=True)
class Record:
    """One spooled message, numbered in append order."""

    number: int
    topic: str
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class SpoolFault:
    """Why the spool cannot write to its folder: `kind` (full, read_only, removed, permission,
    error), the OS's words, and since when (wall clock)."""

    kind: str
    error: str
    since: float
    folder: Path

    @property
    def reason(self) -> str:
        """What is wrong and what to do, for the log, /readyz and systemd's status line."""
        where = f"spool folder {self.folder}"
        return {
            "full": f"{where}: disk full; free space on that filesystem (or lower kafka.spool.max_mb)",
            "read_only": f"{where}: read-only filesystem; remount it read-write or set kafka.spool.folder "
                         "to a writable folder",
            "removed": f"{where}: removed; recreate it (mkdir -p {self.folder}, owned by the daemon's user)",
            "permission": f"{where}: permission denied; give the daemon's user write access to it",
        }.get(self.kind, f"{where}: {self.error}; check the disk")


LOST_REASONS = ("removed", "unreadable", "unsaved", "torn")  # why records the spool had kept were lost


class SpoolFull(Exception):
    """The spool is at its size limit and its policy drops the newest record."""


class SpoolUnavailable(Exception):
    """The disk cannot take the record and the memory the spool may use instead is full."""


class SpoolUnusable(Exception):
    """The spool folder cannot be used at all (permissions, not a folder, locked by another)."""


def fault_kind(exc: OSError) -> str:
    """The kind of a write error, for SpoolFault."""
    return {errno.ENOSPC: "full", errno.EDQUOT: "full", errno.EROFS: "read_only", errno.ENOENT: "removed",
            errno.EACCES: "permission", errno.EPERM: "permission"}.get(exc.errno, "error")


class Spool:
    """Append, read, acknowledge; see the module docstring for the guarantees."""

    def __init__(self, folder: Path, max_bytes: int, policy: str = "drop_oldest",
                 segment_bytes: int = 4 << 20, sync_interval_s: float = 1.0, memory_bytes: int = 64 << 20) -> None:
        if policy not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"unknown spool policy {policy!r}")
        self.folder = Path(folder)
        self.max_bytes, self.memory_bytes, self.policy = max_bytes, memory_bytes, policy
        self._segment_bytes = max(1024, min(segment_bytes, max_bytes // 4 or 1024))
        self._memory_segment_bytes = max(1024, min(segment_bytes, memory_bytes // 4 or 1024))
        self._sync_interval = sync_interval_s
        self._segments: list[_Segment] = []  # oldest first, by number; gaps are lost records
        self._tail: _Segment | None = None  # the segment appends go to
        self._dirty: Path | None = None  # a segment file written since the last fsync
        self._acked: set[int] = set()  # acknowledged, above the commit mark (out of order)
        self._in_flight_lost: dict[int, str] = {}  # handed out, then their segment dropped: number -> reason
        self._held = 0  # records at or above the commit mark
        self._disk_used = self._memory_used = 0  # bytes of segments on disk, in memory
        self.dropped = 0  # records lost to the size limits since start
        self.lost: dict[str, int] = dict.fromkeys(LOST_REASONS, 0)  # kept, then lost
        self.fault: SpoolFault | None = None
        self._next_disk_try = 0.0
        self._unlink_later: dict[Path, range] = {}  # delivered segments the disk would not let us delete yet
        self._saved_commit: int | None = None  # the commit mark last written to disk
        self._saved_state: dict | None = None  # what `committed` last said
        self._closed: dict | None = None  # what close() said
        self._unreadable_at_load: list[int] = []  # first numbers of segment files the disk failed to read
        self._numbered = 0  # at load: the number after the last one an earlier run gave
        self._reader: _Reader | None = None
        self._last_sync = time.monotonic()
        self._lock_fd: int | None = None
        self._folder_inode = -1
        self._committed = self._read_next = self._next_number = 0
        # every attribute exists from here on: opening runs the same methods as a running spool
        self._lock_fd = self._open_folder()
        self._committed, self._acked = self._read_committed()
        self._load()
        # numbers are never given twice, not even those of records lost in a torn tail: the saved
        # commit mark and acknowledgements may name them (power loss can keep the mark, not the data)
        self._next_number = max(self._committed, self._numbered, max(self._acked, default=-1) + 1)
        self._acked = {n for n in self._acked if n >= self._committed}
        self._held = self._count_from(self._committed)
        self._advance_commit()
        self._read_next = self._committed
        if self.fault is None:
            self._write_committed()  # also tells whether the folder takes writes

    # ------------------------------------------------------------------ state
    @property
    def bytes(self) -> int:
        """Bytes on disk in segments."""
        return self._disk_used

    @property
    def memory_used(self) -> int:
        """Bytes of records held in memory because the disk would not take them."""
        return self._memory_used

    @property
    def pending(self) -> int:
        """Records appended but not yet committed (delivered in order)."""
        return self._held

    @property
    def unread(self) -> int:
        """Records not yet handed out by `read` since the last rewind."""
        return self._count_from(self._read_next)

    def _count_from(self, number: int) -> int:
        return sum(s.end - max(s.first, number) for s in self._segments if s.end > number)

    def _first_from(self, number: int) -> int:
        """The first record number at or after `number` that a segment holds (steps over gaps)."""
        for segment in self._segments:
            if segment.end > number:
                return max(number, segment.first)
        return self._next_number

    # ------------------------------------------------------------------ writing
    def append(self, topic: str, key: str, value: bytes) -> int:
        """Add a record; returns its number. Raises SpoolFull under `drop_newest` when full, and
        SpoolUnavailable when the disk refuses it and the memory allowance is full too."""
        data = _record(topic, key, value)
        if self._disk_ready():
            try:
                number = self._append_disk(data)
            except OSError as exc:
                self._faulted(exc)
            else:
                self.fault = None  # the disk took a record: the fault is over
                if time.monotonic() - self._last_sync >= self._sync_interval:
                    self.sync()
                return number
        return self._append_memory(data)

    def append_many(self, records: list[tuple[str, str, bytes]]) -> list[int | SpoolFull | SpoolUnavailable]:
        """Add records in order (a batch's messages): for each its number, or the exception append
        would have raised for it. One write for them all when the disk takes them as they come (no
        fault, the tail segment has room, the spool is not full); otherwise one append each, with
        every rule of append."""
        datas = [_record(topic, key, value) for topic, key, value in records]
        total = sum(map(len, datas))
        tail = self._tail
        if (self.fault is None and tail is not None and tail.records is None and len(datas) > 1
                and tail.size + total <= self._segment_bytes and self._disk_used + total <= self.max_bytes):
            try:
                fd = os.open(tail.path, os.O_WRONLY | os.O_APPEND)  # type: ignore[arg-type]
            except OSError:
                fd = None
            if fd is not None:
                try:
                    written = os.write(fd, b"".join(datas))
                    if written != total:  # a short write: the disk filled up under it
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                except OSError:
                    self._undo(tail, fd)  # back to the last whole record; each is appended alone below
                else:
                    self._dirty = tail.path
                    numbers: list = [self._added(tail, len(data)) for data in datas]
                    if time.monotonic() - self._last_sync >= self._sync_interval:
                        self.sync()
                    return numbers
                finally:
                    os.close(fd)
        out: list = []
        for topic, key, value in records:
            try:
                out.append(self.append(topic, key, value))
            except (SpoolFull, SpoolUnavailable) as exc:
                out.append(exc)
        return out

    def _disk_ready(self) -> bool:
        """Whether to try the disk: always unless faulted; then once a second, and a removed folder
        must be back (and locked again) first."""
        if self.fault is None:
            return True
        if time.monotonic() < self._next_disk_try:
            return False
        if self._lock_fd is None or self.fault.kind == "removed":
            try:
                if self._lock_fd is None:  # never had it (the disk refused it at start)
                    self.folder.mkdir(parents=True, exist_ok=True)
                self._relock()
            except OSError as exc:
                self._faulted(exc)
                return False
            except SpoolUnusable as exc:
                self._faulted(OSError(errno.EBUSY, str(exc)))
                return False
        return True

    def _append_disk(self, data: bytes) -> int:
        self._make_room(len(data), memory=False)
        segment, fd = self._disk_tail(len(data))
        try:
            written = os.write(fd, data)
            if written != len(data):  # a short write: the disk filled up under it
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            self._undo(segment, fd)
            raise
        finally:
            os.close(fd)
        self._dirty = segment.path
        return self._added(segment, len(data))

    def _append_memory(self, data: bytes) -> int:
        self._make_room(len(data), memory=True)
        segment = self._tail
        if segment is None or segment.records is None or segment.size + len(data) > self._memory_segment_bytes:
            segment = self._start_segment(_Segment(None, self._next_number, records=[]))
        segment.records.append(data)  # type: ignore[union-attr]
        return self._added(segment, len(data))

    def _added(self, segment: _Segment, size: int) -> int:
        number = self._next_number
        segment.add(size)
        self._next_number += 1
        self._held += 1
        if segment.records is None:
            self._disk_used += size
        else:
            self._memory_used += size
        return number

    def _make_room(self, size: int, memory: bool) -> None:
        """Apply the policy until a record of `size` fits the disk (or memory) limit."""
        limit = self.memory_bytes if memory else self.max_bytes
        while (self._memory_used if memory else self._disk_used) + size > limit:
            oldest = next((s for s in self._segments if (s.records is not None) == memory), None)
            if self.policy == "drop_newest" or oldest is None:
                if memory:  # counted by the caller as a message that could not be kept
                    raise SpoolUnavailable(f"{self.fault.reason if self.fault else 'disk refused'}; and the "
                                           f"memory allowance ({limit} bytes) is full")
                self.dropped += 1
                raise SpoolFull(f"spool full ({self._disk_used} of {limit} bytes)")
            if oldest is self._tail:  # the only one: start a new one so it can go
                self._seal_tail()
            if not memory:  # deleted first: a disk that will not delete it (read-only) will not take
                oldest.path.unlink(missing_ok=True)  # the record either; it goes to memory, nothing dropped
            self._drop_segment(oldest)

    def _disk_tail(self, size: int) -> tuple[_Segment, int]:
        """The segment on disk to append to, and its file opened for this one append (no file is
        kept open for writing between appends, so the filesystem can be remounted read-only)."""
        tail = self._tail
        if tail is not None and tail.records is None and tail.size + size <= self._segment_bytes:
            return tail, os.open(tail.path, os.O_WRONLY | os.O_APPEND)  # type: ignore[arg-type]
        self._seal_tail()
        path = self.folder / f"{self._next_number:016d}.seg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o640)
        return self._start_segment(_Segment(path, self._next_number)), fd

    def _start_segment(self, segment: _Segment) -> _Segment:
        self._seal_tail()
        self._segments.append(segment)
        self._tail = segment
        return segment

    def _seal_tail(self) -> None:
        """No more appends to the current segment."""
        self._tail = None

    def _undo(self, segment: _Segment, fd: int) -> None:
        """Cut the tail file back to its last whole record after a failed write; if even that
        fails, stop writing to it (a new segment follows; the torn end is cut off at the next open)."""
        try:
            os.ftruncate(fd, segment.size)
            if segment.count:
                return
        except OSError:
            pass
        self._seal_tail()
        if segment.count == 0:  # nothing in it: forget it, so its name is free for the next
            self._segments.remove(segment)
            _unlink(segment.path)

    def _faulted(self, exc: OSError) -> None:
        self._next_disk_try = time.monotonic() + _DISK_RETRY_S
        kind = fault_kind(exc)
        if self._lock_fd is not None and not self._folder_exists():
            kind = "removed"
        elif kind == "removed" and self._lock_fd is not None:
            kind = "error"  # a file in it vanished, not the folder
        if self.fault is None or self.fault.kind != kind:
            self.fault = SpoolFault(kind, exc.strerror or str(exc), time.time(), self.folder)
        if kind == "removed":
            self._forget_removed_segments()

    def sync(self) -> None:
        """fsync the open segment and the commit mark (power-loss safety); skipped while faulted
        (appends find out when the disk is back)."""
        self._last_sync = time.monotonic()
        if self.fault is not None:
            return
        try:
            self._fsync_dirty()
        except OSError as exc:
            self._faulted(exc)
        self._write_committed()

    def _fsync_dirty(self) -> None:
        if self._dirty is not None:
            fd = os.open(self._dirty, os.O_RDONLY)  # fsync needs no write access
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._dirty = None

    def maintain(self) -> None:
        """Call every `sync_interval_s`: fsync, notice a removed folder, try the disk again while
        faulted, move records held in memory to disk once it takes them, delete what is delivered."""
        if self.fault is None and self._lock_fd is not None and not self._folder_exists():
            self._faulted(OSError(errno.ENOENT, os.strerror(errno.ENOENT)))
        if self.fault is None:
            self._save_memory_segment()
            self._unlink_later = {p: r for p, r in self._unlink_later.items() if not _unlink(p)}
        self.sync()

    def _save_memory_segment(self) -> None:
        """Write the oldest segment held in memory to disk (one per call, to keep each call short)."""
        segment = next((s for s in self._segments if s.records is not None and s is not self._tail), None)
        if segment is None and self._tail is not None and self._tail.records is not None:
            segment = self._tail
        if segment is None or self.bytes + segment.size > self.max_bytes:
            return
        path = self.folder / f"{segment.first:016d}.seg"
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(b"".join(segment.records))  # type: ignore[arg-type]
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            _unlink(tmp)
            self._faulted(exc)
            return
        if segment is self._tail:
            self._seal_tail()
        segment.path, segment.records = path, None
        self._memory_used -= segment.size
        self._disk_used += segment.size

    def _folder_exists(self) -> bool:
        try:
            return os.stat(self.folder).st_ino == self._folder_inode
        except OSError:
            return False

    def _forget_removed_segments(self) -> None:
        """The folder is gone: the records in its segment files are lost (counted)."""
        gone = [s for s in self._segments if s.records is None and not s.path.exists()]  # type: ignore[union-attr]
        for segment in gone:
            self._drop_segment(segment, "removed")

    def _drop_segment(self, segment: _Segment, reason: str = "policy") -> None:
        """Remove a segment; its records not yet delivered are lost, counted under `reason`
        (policy: `dropped`; else `lost[reason]`). Those already handed out by `read` are still in
        the sender's hands: they count only if they are not acknowledged before the next rewind."""
        first = max(segment.first, self._committed)
        self._held -= max(0, segment.end - first)
        gone = [n for n in range(first, segment.end) if n not in self._acked]
        fated = [n for n in gone if n < self._read_next]
        self._count_lost(reason, len(gone) - len(fated))
        self._in_flight_lost.update(dict.fromkeys(fated, reason))
        self._acked = {n for n in self._acked if not segment.first <= n < segment.end}
        self._remove(segment)
        self._advance_commit()

    def _count_lost(self, reason: str, count: int) -> None:
        if reason == "policy":
            self.dropped += count
        else:
            self.lost[reason] += count

    @property
    def dropped_in_hand(self) -> dict[int, str]:
        """Records handed out by `read` whose segment was dropped since (number -> reason)."""
        return self._in_flight_lost

    def unsent(self, number: int) -> None:
        """The sender will not send this handed-out record after all (its segment was dropped): lost now."""
        reason = self._in_flight_lost.pop(number, None)
        if reason is not None:
            self._count_lost(reason, 1)

    def _settle_in_flight_lost(self) -> None:
        """Records of dropped segments that were handed out and never acknowledged: lost now."""
        for reason in self._in_flight_lost.values():
            self._count_lost(reason, 1)
        self._in_flight_lost.clear()

    # ------------------------------------------------------------------ reading and committing
    def read(self, limit: int) -> list[Record]:
        """Up to `limit` records from the read position on, in order; moves the read position."""
        out: list[Record] = []
        while len(out) < limit:
            self._read_next = self._first_from(self._read_next)
            if self._read_next >= self._next_number:
                break
            segment = next(s for s in self._segments if s.first <= self._read_next < s.end)
            try:
                record = self._read_one(segment, self._read_next)
            except OSError as exc:  # its file is gone or unreadable: those records are lost
                self._faulted(exc)
                if segment in self._segments:
                    self._drop_segment(segment, "removed" if not segment.path.exists() else "unreadable")  # type: ignore[union-attr]
                continue
            self._read_next += 1
            if record.number not in self._acked:  # acknowledged out of order before a rewind
                out.append(record)
        return out

    def _read_one(self, segment: _Segment, number: int) -> Record:
        if segment.records is not None:
            return _parse(number, segment.records[number - segment.first][_HEAD.size:])
        reader = self._reader
        if reader is None or reader.segment is not segment or reader.number != number:
            if reader is not None:
                reader.close()
            self._reader = None
            reader = self._reader = _Reader(segment, number)
        return reader.next()

    def ack(self, number: int) -> None:
        """Kafka acknowledged record `number`; commit every record up to the first unacknowledged."""
        if self._in_flight_lost.pop(number, None) is not None or number < self._committed:
            return
        self._acked.add(number)
        self._advance_commit()

    def _advance_commit(self) -> None:
        while True:
            self._committed = self._first_from(self._committed)
            if self._committed not in self._acked:
                break
            self._acked.discard(self._committed)
            self._committed += 1
            self._held -= 1
        # all below the mark is delivered or dropped: never read again (the mark passes the read
        # position when a dropped segment takes it past a delivered record, or acks come after a rewind)
        self._read_next = max(self._read_next, self._committed)
        while self._segments and self._segments[0].end <= self._committed and self._segments[0] is not self._tail:
            self._remove(self._segments[0])

    def _remove(self, segment: _Segment) -> None:
        if segment is self._tail:
            self._seal_tail()
        if self._reader is not None and self._reader.segment is segment:
            self._reader.close()
            self._reader = None
        self._segments.remove(segment)
        if segment.records is not None:
            self._memory_used -= segment.size
            return
        self._disk_used -= segment.size
        if not _unlink(segment.path):  # type: ignore[arg-type]
            self._unlink_later[segment.path] = range(segment.first, segment.end)  # type: ignore[index]

    def rewind(self) -> None:
        """Read again from the first record not committed, skipping those acknowledged since.
        Ends what was in flight: a handed-out record whose segment was dropped counts as lost now.
        A late acknowledgement is still honoured (the record is not read again), unless its
        segment is dropped before it comes (then it was counted as dropped)."""
        self._settle_in_flight_lost()
        self._read_next = self._committed

    def close(self) -> dict:
        """Write what memory holds to disk if it can, fsync, record the commit mark, close the files.
        Never raises; returns what it keeps on disk for the next start and what could not be saved:
        records lost with the memory they were held in, and delivered records the next start sends
        again (the commit mark or a deletion did not reach the disk)."""
        if self._closed is not None:
            return self._closed
        if self._lock_fd is not None and self._folder_exists():
            self.fault = None  # one last try at the disk
        while self.fault is None and self._memory_used:
            before = self._memory_used
            self._save_memory_segment()
            if self._memory_used == before:
                break
        try:
            self._fsync_dirty()
        except OSError:
            pass
        if self._lock_fd is not None:
            self._write_committed()
        unsaved = sum(s.end - max(s.first, self._committed) for s in self._segments
                      if s.records is not None and s.end > self._committed)
        unsaved -= sum(1 for n in self._acked for s in self._segments if s.records is not None and s.first <= n < s.end)
        self.lost["unsaved"] += unsaved
        self._settle_in_flight_lost()
        self._seal_tail()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._closed = {"unsaved": unsaved, "kept_on_disk": self.pending - unsaved, "resent_at_start": self._resent()}
        return self._closed

    def _resent(self) -> int:
        """Delivered records still on disk above the saved commit mark: the next start sends them again."""
        mark = self._saved_commit or 0
        held = [range(s.first, s.end) for s in self._segments if s.records is None]
        return sum(len(range(max(r.start, mark), min(r.stop, self._committed)))
                   for r in (*held, *self._unlink_later.values()))

    # ------------------------------------------------------------------ persistence
    def _open_folder(self) -> int | None:
        """Create and lock the folder. A full or read-only disk is a fault the spool runs through
        (in memory); anything else is the operator's to fix: SpoolUnusable."""
        self._folder_inode = -1
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if exc.errno not in _HOST_FAULTS:
                raise SpoolUnusable(f"cannot use spool folder {self.folder}: {exc.strerror}; "
                                    "fix kafka.spool.folder or its permissions") from None
            self._faulted(exc)
            return None
        if not os.access(self.folder, os.W_OK | os.X_OK):
            if not _read_only(self.folder):
                raise SpoolUnusable(f"cannot use spool folder {self.folder}: permission denied; give the "
                                    "daemon's user write access to it")
            self._faulted(OSError(errno.EROFS, os.strerror(errno.EROFS)))
        return self._relock()

    def _relock(self) -> int:
        """Lock the folder (flock on the folder itself: works on a read-only filesystem too)."""
        try:
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise
            raise SpoolUnusable(f"cannot use spool folder {self.folder}: {exc.strerror}; "
                                "fix kafka.spool.folder or its permissions") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolUnusable(f"spool folder {self.folder} is used by another running daemon; give "
                                "each daemon its own kafka.spool.folder") from None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        self._lock_fd = fd
        self._folder_inode = os.fstat(fd).st_ino
        return fd

    def _read_committed(self) -> tuple[int, set[int]]:
        """The saved commit mark and the records above it delivered out of order; (0, none) when
        the file is missing or damaged (then what the segments hold is sent again: at least once)."""
        try:
            saved = json.loads((self.folder / "committed").read_text())
            mark = int(saved["next"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0, set()
        self._saved_commit = mark
        acked: set[int] = set()
        ranges = saved.get("acked", []) if isinstance(saved, dict) else []
        for pair in ranges if isinstance(ranges, list) else []:
            if isinstance(pair, list) and len(pair) == 2 and all(type(n) is int for n in pair):
                acked.update(range(max(pair[0], mark), pair[1]))
        return mark, acked

    def _write_committed(self) -> None:
        state = {"next": self._committed, "acked": _ranges(self._acked)[:_ACKED_RANGES_MAX]}
        if state == self._saved_state:
            return
        tmp = self.folder / "committed.tmp"
        try:
            with open(tmp, "w") as fh:
                fh.write(json.dumps(state))
            os.replace(tmp, self.folder / "committed")
        except OSError as exc:
            _unlink(tmp)
            self._faulted(exc)
            return
        self._saved_commit, self._saved_state = self._committed, state

    def _load(self) -> None:
        """Re-open segments left by an earlier run, cutting a torn or corrupt tail (where the disk
        lets us: on a read-only one the scan just stops there) and counting what it held."""
        if self._lock_fd is None:
            return
        for stale in self.folder.glob("*.tmp"):
            _unlink(stale)
        torn: list[_Segment] = []
        for path in sorted(p for p in self.folder.iterdir() if _SEGMENT_NAME.match(p.name)):
            segment = self._scan(path)
            if segment is None:
                continue
            if self._segments and segment.first < self._segments[-1].end:
                _unlink(path)  # overlapping what came before (corrupt): unusable
                continue
            self._numbered = max(self._numbered, segment.end + segment.torn)
            if segment.torn:
                torn.append(segment)
            if segment.count == 0:  # created, then nothing whole written to it
                _unlink(path)
                continue
            self._segments.append(segment)
            self._disk_used += segment.size
        self._count_torn(torn)
        while self._segments and self._segments[0].end <= self._committed:
            self._remove(self._segments[0])
        if self._segments:
            self._committed = max(self._committed, self._segments[0].first)

    def _scan(self, path: Path) -> _Segment | None:
        """A segment file read back; None for one that is not a file (left alone). A file the
        daemon may not read is the operator's to fix; one the disk fails to read is skipped (its
        records are counted as unreadable where the next segment's number tells how many)."""
        segment = _Segment(path, int(path.name[:16]))
        try:
            segment.scan()
        except IsADirectoryError:
            return None
        except PermissionError:
            raise SpoolUnusable(f"cannot read spool file {path}: permission denied; give the daemon's user "
                                f"the folder and its files (chown -R) or move the folder away") from None
        except OSError:  # moved aside, so no later segment takes its name; the operator can look at it
            self._unreadable_at_load.append(segment.first)
            with contextlib.suppress(OSError):
                os.replace(path, path.with_name(path.name + ".unreadable"))
            return None
        return segment

    def _count_torn(self, torn: list[_Segment]) -> None:
        """Records cut off with a torn tail: up to the next segment's first record, or the one
        record being written when the last segment tore; those already delivered do not count."""
        firsts = [s.first for s in self._segments]
        for segment in torn:
            later = [s.first for s in self._segments if s.first > segment.first]
            stop = later[0] if later else segment.end + 1
            self.lost["torn"] += sum(1 for n in range(max(segment.end, self._committed), stop) if n not in self._acked)
        for first in self._unreadable_at_load:
            later = [f for f in firsts if f > first]
            if later:
                self.lost["unreadable"] += len(range(max(first, self._committed), min(later)))
        self._unreadable_at_load.clear()


class _Segment:
    """One segment: its first record number, record count and size in bytes; on disk at `path`,
    or in memory as `records` (each one as written: header and body)."""

    def __init__(self, path: Path | None, first: int, records: list[bytes] | None = None) -> None:
        self.path, self.first, self.records = path, first, records
        self.count = 0
        self.size = 0
        self.torn = False  # bytes after the last whole record were cut off when it was read back

    @property
    def end(self) -> int:
        """Number of the record after its last."""
        return self.first + self.count

    def add(self, size: int) -> None:
        self.count += 1
        self.size += size

    def scan(self) -> None:
        """Count valid records; truncate the file after the last one (if the disk lets us)."""
        data = self.path.read_bytes()  # type: ignore[union-attr]
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
            self.torn = True
            try:
                with open(self.path, "r+b") as fh:  # type: ignore[arg-type]
                    fh.truncate(offset)
            except OSError:
                pass  # read-only: appends never go to an old segment, so the torn end stays harmless


def _record(topic: str, key: str, value: bytes) -> bytes:
    """A record as written: header (length, CRC32) and body (topic and key lengths, topic, key, value)."""
    t, k = topic.encode(), key.encode()
    body = _KEYS.pack(len(t), len(k)) + t + k + value
    return _HEAD.pack(len(body), zlib.crc32(body)) + body


def _parse(number: int, body: bytes) -> Record:
    tlen, klen = _KEYS.unpack_from(body)
    topic = body[_KEYS.size:_KEYS.size + tlen].decode()
    key = body[_KEYS.size + tlen:_KEYS.size + tlen + klen].decode()
    return Record(number, topic, key, body[_KEYS.size + tlen + klen:])


class _Reader:
    """Reads one segment's records in order, starting at a given record number."""

    def __init__(self, segment: _Segment, number: int) -> None:
        self.segment, self.number = segment, segment.first
        self._file = open(segment.path, "rb")  # type: ignore[arg-type]  # noqa: SIM115 - closed by close()
        while self.number < number:  # skip to the wanted record (headers only)
            length = self._head()
            self._file.seek(length, os.SEEK_CUR)
            self.number += 1

    def _head(self) -> int:
        head = self._file.read(_HEAD.size)
        if len(head) != _HEAD.size:  # the file shrank under us
            raise OSError(errno.EIO, f"segment {self.segment.path.name} ends early")  # type: ignore[union-attr]
        return _HEAD.unpack(head)[0]

    def next(self) -> Record:
        """The record at `number` (the caller checks it exists); advances."""
        length = self._head()
        body = self._file.read(length)
        if len(body) != length:
            raise OSError(errno.EIO, f"segment {self.segment.path.name} ends early")  # type: ignore[union-attr]
        record = _parse(self.number, body)
        self.number += 1
        return record

    def close(self) -> None:
        self._file.close()


def _unlink(path: Path) -> bool:
    """Delete a file; True when it is gone."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        return False
    return True


def _ranges(numbers: set[int]) -> list[list[int]]:
    """Sorted numbers as half-open [start, stop) ranges."""
    out: list[list[int]] = []
    for n in sorted(numbers):
        if out and out[-1][1] == n:
            out[-1][1] = n + 1
        else:
            out.append([n, n + 1])
    return out


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False
