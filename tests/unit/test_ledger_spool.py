"""The spool: append-only JSONL files, bounded size, fsync policy, replay reading, locks."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from tokenbook.ledger.entry import LedgerEntry
from tokenbook.ledger.spool import Spool, SpoolError


def _entry(i: int) -> LedgerEntry:
    return LedgerEntry(
        booking_id=f"req-{i}.a",
        request_id=f"req-{i}",
        booked_at=1_767_000_000.0 + i,
        key_id="abcdefghijkl",
        owner="alice",
        team="search",
        agent="crawler",
        workload="indexing",
        provider="openai",
        model="gpt-4o-mini",
        tokens={"input": i},
        cost_usd=0.001 * i,
    )


def _read_all(spool: Spool) -> list[LedgerEntry]:
    out: list[LedgerEntry] = []
    for reader in spool.readers():
        while batch := reader.batch(3):
            out.extend(batch)
        reader.remove()
    return out


def test_nothing_is_created_until_something_is_spooled(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.size == 0
    assert not spool.has_sealed()
    assert not (tmp_path / "spool").exists()


def test_append_seal_and_replay_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    entries = [_entry(i) for i in range(10)]
    assert spool.append([e.to_spool() for e in entries[:4]]) == 4
    assert spool.append([e.to_spool() for e in entries[4:]]) == 6
    assert spool.sealed() == []  # the active file is never offered for replay
    spool.seal()
    assert len(spool.sealed()) == 1
    assert _read_all(spool) == entries
    assert spool.sealed() == []
    spool.forget_size()
    assert spool.size == 0


def test_bounded_size_keeps_whole_lines_only(tmp_path: Path) -> None:
    line = _entry(1).to_spool()
    spool = Spool(tmp_path, max_bytes=len(line) * 3 + 5)
    assert spool.append([_entry(i).to_spool() for i in range(5)]) == 3
    assert spool.append([line]) == 0  # full
    assert spool.size <= len(line) * 3 + 5
    spool.seal()
    assert [e.request_id for e in _read_all(spool)] == ["req-0", "req-1", "req-2"]


def test_the_bound_counts_files_left_by_an_earlier_process(tmp_path: Path) -> None:
    line = _entry(1).to_spool()
    (tmp_path / "ledger-1-1-1.jsonl").write_bytes(line * 2)
    spool = Spool(tmp_path, max_bytes=len(line) * 3)
    assert spool.has_sealed()
    assert spool.append([line, line]) == 1


def test_torn_last_line_is_skipped_and_counted(tmp_path: Path) -> None:
    good = _entry(1).to_spool()
    (tmp_path / "ledger-1-1-1.jsonl").write_bytes(good + good[:20])
    spool = Spool(tmp_path)
    reader = next(spool.readers())
    assert reader.batch(10) == [_entry(1)]
    assert reader.corrupt == 1
    reader.remove()


def test_a_file_locked_by_someone_else_is_not_replayed(tmp_path: Path) -> None:
    path = tmp_path / "ledger-1-99-1.jsonl"
    path.write_bytes(_entry(1).to_spool())
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert list(Spool(tmp_path).readers()) == []
    finally:
        os.close(fd)
    assert len(list(Spool(tmp_path).readers())) == 1


def test_fsync_policy_by_entries_and_by_interval(tmp_path: Path) -> None:
    now = [0.0]
    spool = Spool(tmp_path, fsync_entries=3, fsync_interval_s=1.0, clock=lambda: now[0])
    assert not spool.sync_due()
    spool.append([_entry(1).to_spool()])
    assert not spool.sync_due()
    spool.append([_entry(2).to_spool(), _entry(3).to_spool()])
    assert spool.sync_due()  # three lines since the last fsync


async def test_fsync_interval_and_off(tmp_path: Path) -> None:
    now = [0.0]
    spool = Spool(tmp_path / "a", fsync_entries=0, fsync_interval_s=1.0, clock=lambda: now[0])
    spool.append([_entry(1).to_spool()])
    assert not spool.sync_due()
    now[0] = 1.0
    assert spool.sync_due()
    await spool.sync()
    assert not spool.sync_due()
    never = Spool(tmp_path / "b", fsync_entries=0, fsync_interval_s=0, clock=lambda: now[0])
    never.append([_entry(1).to_spool()] * 500)
    now[0] = 100.0
    assert not never.sync_due()


def test_an_unwritable_directory_is_an_error_not_a_crash(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    spool = Spool(blocker / "spool")
    with pytest.raises(SpoolError, match="cannot create a spool file"):
        spool.append([_entry(1).to_spool()])
