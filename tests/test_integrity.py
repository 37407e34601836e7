"""Corrupt and unwritable files: refused at open when it can tell, journaled writes when it can't.

The corruption is real: bytes of a b-tree page overwritten on disk, the way a bad sector or a
stray write would, never a patched library.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import apsw
import pytest

from sessionstore import (
    SessionStore,
    StoreConfig,
    StoreCorruptError,
    StoreOpenError,
)

PAGE = 4096


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _root_page(path: Path, table: str) -> int:
    conn = apsw.Connection(f"file:{path}?mode=ro&immutable=1", flags=apsw.SQLITE_OPEN_URI | 1)
    try:
        [(root,)] = conn.execute("SELECT rootpage FROM sqlite_schema WHERE name = ?", (table,))
        return int(root)
    finally:
        conn.close()


def _smash(path: Path, page: int) -> None:
    """Overwrite a page's b-tree header and cell pointers with garbage."""
    with open(path, "r+b") as f:
        f.seek((page - 1) * PAGE)
        f.write(b"\xa5" * 64)


def _store_with_events(path: Path, *, pad_bytes: int = 0) -> str:
    with SessionStore.open(path) as store:
        session = store.create_session("victim")
        for i in range(50):
            store.log_event(session.id, f"event {i}", data={"i": i})
        if pad_bytes:  # overflow pages, to make the file larger than the open-time probe reads
            store.save_checkpoint(session.id, "pad", {"blob": "x" * pad_bytes})
    return session.id


def test_corrupt_page_is_refused_at_open_untouched(tmp_path: Path) -> None:
    """A smashed events page in a small file: open() raises StoreCorruptError; bytes unchanged."""
    path = tmp_path / "s.db"
    _store_with_events(path)
    _smash(path, _root_page(path, "events"))
    before = _digest(path)
    with pytest.raises(StoreCorruptError):  # found by the probe (before it, open succeeded)
        SessionStore.open(path)
    assert _digest(path) == before
    assert not Path(f"{path}-ops.jsonl").exists()


def test_corruption_found_by_a_write_stops_writes_and_journals_them(tmp_path: Path) -> None:
    """Past the probe's size: a write that meets a bad page is journaled, and so is every later one.

    Nothing more goes into the corrupt file, reads raise StoreCorruptError, and stats()
    records each op.
    """
    path = tmp_path / "s.db"
    sid = _store_with_events(path, pad_bytes=5 << 20)
    _smash(path, _root_page(path, "events"))
    store = SessionStore.open(path, config=StoreConfig(checkpointing=False))
    try:
        assert store.integrity_probe.startswith("skipped")
        size_before = os.path.getsize(path)
        first = store.log_event(sid, "meets the bad page")
        second = store.heartbeat(sid)  # would not touch the events page, still not written
        assert first.id is None and second is None
        assert [f.disposition for f in store.stats().failures] == ["journaled", "journaled"]
        assert all("CorruptError" in f.reason for f in store.stats().failures), (
            store.stats().failures
        )
        with pytest.raises(StoreCorruptError):
            store.events(sid)
    finally:
        report = store.close()
    assert report.replayed == 0  # close does not replay into a corrupt file
    assert os.path.getsize(path) == size_before
    journal = Path(f"{path}-ops.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(journal) == 2 and first.op_id in journal[0]


def test_file_this_user_cannot_write_is_refused_at_open(shared_dir: Path) -> None:
    """Another user opening the owner's 0644 file read-write: StoreOpenError at open.

    No write is attempted and nothing is created; read_only=True reads it.
    """
    path = shared_dir / "s.db"
    sid = _store_with_events(path)
    before = {p.name: _digest(p) for p in shared_dir.iterdir()}
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child, as uid 65534
        code = 70
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                SessionStore.open(path).close()
                code = 1
            except StoreOpenError as err:
                code = 2 if "not writable" not in str(err) else 0
            if code == 0:
                with SessionStore.open(path, read_only=True) as reader:
                    code = 0 if len(reader.events(sid)) == 50 else 3
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert {p.name: _digest(p) for p in shared_dir.iterdir()} == before
