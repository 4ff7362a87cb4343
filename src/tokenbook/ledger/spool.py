"""The local spool: bookings that could not reach Redis, kept on disk until they can be replayed.

Layout: a directory (``ledger_spool_dir``) of append-only JSONL files
``ledger-<unix ms>-<pid>-<n>.jsonl``, one `LedgerEntry.to_spool` line per booking. The writer
appends to one *active* file while Redis is unreachable and *seals* it when Redis is back; sealed
files are replayed oldest first and deleted once every line has been applied. Files left by an
earlier process (a crash, a restart during an outage) are sealed files too and are replayed the
same way. Each file is ``flock``-ed by whoever writes or replays it, so replicas that share a
directory never replay the same file at the same time (and a replay that happens twice anyway is
harmless: the booking script skips what it already booked).

Bounded: the directory's spool files together never exceed ``max_bytes`` (default 256 MiB);
lines that do not fit are refused (`append` says how many were kept) and the caller counts them
in ``tokenbook_ledger_dropped_total{reason="spool_full"}``.

Durability (``fsync`` policy): every append is one ``write(2)`` straight to the file (no
user-space buffer), so a crash of tokenbook itself loses nothing that was spooled. What a power
loss or kernel crash can lose is what was not yet fsync-ed: the file is fsync-ed once
``fsync_entries`` lines were appended since the last fsync, or ``fsync_interval_s`` after an
append, whichever comes first (defaults 100 lines / 1 s; 0 turns a trigger off, both 0 leaves it
to the OS; ``fsync_entries: 1`` syncs every line). The interval is enforced by the writer's
periodic tick, so the last lines of a quiet outage are synced too.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from tokenbook.ledger.entry import LedgerEntry

log = logging.getLogger(__name__)

_PATTERN = "ledger-*.jsonl"


class SpoolError(OSError):
    """The spool directory or file cannot be written (permissions, disk full, ...)."""


@dataclass
class _Active:
    path: Path
    fd: int


@dataclass
class SpoolReader:
    """Reads one sealed spool file for replay; holds its lock until `close` / `remove`."""

    path: Path
    _file: BinaryIO
    corrupt: int = 0  # lines that were not spool entries (a torn last line after a crash)
    _pending: list[LedgerEntry] = field(default_factory=list)

    def batch(self, max_entries: int) -> list[LedgerEntry]:
        """Up to ``max_entries`` more entries; an empty list at the end of the file."""
        out: list[LedgerEntry] = []
        while len(out) < max_entries:
            line = self._file.readline()
            if not line:
                break
            if not line.strip():
                continue
            try:
                out.append(LedgerEntry.from_spool(line))
            except ValueError as exc:
                self.corrupt += 1
                log.error("spool %s: skipping an unreadable line (%s)", self.path.name, exc)
        return out

    def close(self) -> None:
        self._file.close()  # also releases the flock

    def remove(self) -> None:
        """Every line was applied: delete the file (while still holding its lock)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.close()


class Spool:
    def __init__(
        self,
        directory: str | Path,
        *,
        max_bytes: int = 256 * 1024 * 1024,
        fsync_entries: int = 100,
        fsync_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._fsync_entries = fsync_entries
        self._fsync_interval = fsync_interval_s
        self._clock = clock
        self._active: _Active | None = None
        self._seq = 0
        self._bytes: int | None = None  # spool bytes in the directory; None: not scanned yet
        self._unsynced = 0
        self._first_unsynced_at = 0.0

    # -- size -----------------------------------------------------------------------------

    def _files(self) -> list[Path]:
        try:
            return sorted(self.directory.glob(_PATTERN))
        except OSError:
            return []

    def _scan(self) -> int:
        total = 0
        for path in self._files():
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        self._bytes = total
        return total

    @property
    def size(self) -> int:
        """Bytes of spool files in the directory (this process's and any left by others)."""
        return self._scan() if self._bytes is None else self._bytes

    # -- writing --------------------------------------------------------------------------

    def _open_active(self) -> _Active:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._seq += 1
            name = f"ledger-{int(time.time() * 1000)}-{os.getpid()}-{self._seq}.jsonl"
            path = self.directory / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise SpoolError(
                exc.errno, f"cannot create a spool file in {self.directory}: {exc}"
            ) from exc
        # A fresh name: nobody else holds it, the lock only keeps replayers away.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._active = _Active(path, fd)
        log.warning("spooling ledger entries to %s until Redis is back", path)
        return self._active

    def append(self, lines: Sequence[bytes]) -> int:
        """Append whole lines while they fit; returns how many were kept (in order).

        Raises `SpoolError` when nothing could be written at all.
        """
        if not lines:
            return 0
        used = self.size
        kept: list[bytes] = []
        for line in lines:
            if used + len(line) > self.max_bytes:
                break
            kept.append(line)
            used += len(line)
        if not kept:
            return 0
        active = self._active or self._open_active()
        data = b"".join(kept)
        view = memoryview(data)
        try:
            while view:
                written = os.write(active.fd, view)
                view = view[written:]
        except OSError as exc:
            # Part of the data may be on disk; the torn line is skipped at replay. Count
            # nothing as kept: the caller counts the batch as dropped (spool_error).
            raise SpoolError(exc.errno, f"cannot write the spool {active.path}: {exc}") from exc
        self._bytes = used
        if self._unsynced == 0:
            self._first_unsynced_at = self._clock()
        self._unsynced += len(kept)
        return len(kept)

    def sync_due(self) -> bool:
        if self._active is None or self._unsynced == 0:
            return False
        if self._fsync_entries and self._unsynced >= self._fsync_entries:
            return True
        return bool(
            self._fsync_interval and self._clock() - self._first_unsynced_at >= self._fsync_interval
        )

    async def sync(self) -> None:
        """fsync the active file (in a thread: a disk fsync must not stall the event loop)."""
        if self._active is None or self._unsynced == 0:
            return
        fd = self._active.fd
        self._unsynced = 0
        try:
            await asyncio.to_thread(os.fsync, fd)
        except OSError as exc:
            log.error("fsync of the spool %s failed: %s", self._active.path, exc)

    def seal(self) -> None:
        """Close the active file: from now on it is a file to replay."""
        active, self._active = self._active, None
        if active is None:
            return
        with contextlib.suppress(OSError):
            os.fsync(active.fd)
        os.close(active.fd)  # releases the lock
        self._unsynced = 0

    # -- replay ---------------------------------------------------------------------------

    def sealed(self) -> list[Path]:
        """Spool files waiting for replay, oldest first (never the active one)."""
        active = self._active.path if self._active else None
        return [p for p in self._files() if p != active]

    def has_sealed(self) -> bool:
        return bool(self.sealed())

    def open(self, path: Path) -> SpoolReader | None:
        """A reader for a sealed file, or None if another process holds it (or it is gone)."""
        try:
            f = path.open("rb")
        except OSError:
            return None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return None
        return SpoolReader(path, f)

    def forget_size(self) -> None:
        """Re-read the directory's size at the next append (after files were removed)."""
        self._bytes = None

    def readers(self) -> Iterator[SpoolReader]:
        for path in self.sealed():
            reader = self.open(path)
            if reader is not None:
                yield reader

    def close(self) -> None:
        self.seal()
