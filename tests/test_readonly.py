"""read_only=True and the read commands: nothing is written, for the owner or another user.

Every check compares the whole directory (each file's bytes, mtime, owner and mode) before and
after. "Another user" is a forked child that drops to uid/gid 65534 after importing everything,
so it needs no interpreter it could not read; the database's directory is made traversable.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from _procs import finish, release, start

from sessionstore import (
    SessionStore,
    StoreConfig,
    StoreOpenError,
    StoreReadOnlyError,
)
from sessionstore.cli import main

NOBODY = 65534
READ_COMMANDS = [
    ["status"],
    ["sessions"],
    ["show", "{sid}"],
    ["events", "{sid}"],
    ["children", "--session", "{sid}"],
    ["doctor"],
    ["show", "no-such-session"],  # a failing read command writes nothing either
]


def _snapshot(folder: Path) -> dict[str, tuple[str, int, int, int, int]]:
    out = {}
    for entry in sorted(folder.iterdir()):
        st = entry.lstat()
        digest = hashlib.sha256(entry.read_bytes()).hexdigest()
        out[entry.name] = (digest, st.st_mtime_ns, st.st_uid, st.st_gid, st.st_mode)
    return out


def _populated(folder: Path, *, journal: bool = True) -> tuple[Path, str]:
    """A closed store with a session, events, a child row and (optionally) a pending journal."""
    path = folder / "sessions.db"
    with SessionStore.open(path) as store:
        session = store.create_session("shared")
        store.log_event(session.id, "hello", data={"n": 1})
        store.save_checkpoint(session.id, "plan", {"step": 1})
        store.add_child(session.id, os.getppid())
    if journal:
        store.log_event(session.id, "journaled after close")  # waits in -ops.jsonl
    return path, session.id


def _as_nobody(fn: Callable[[], int]) -> int:
    """Run ``fn`` in a forked child as uid/gid 65534; returns its exit status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 70
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = fn()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _cli_quietly(argv: list[str]) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(argv)


def test_read_only_store_reads_and_refuses_every_write(shared_dir: Path) -> None:
    """Reads work; writes, checkpoint and replay raise StoreReadOnlyError; nothing changes."""
    path, sid = _populated(shared_dir)
    before = _snapshot(shared_dir)
    store = SessionStore.open(path, read_only=True)
    try:
        assert store.read_only and store.snapshot is not None  # nobody has it open
        assert [e.message for e in store.events(sid)] == ["hello"]  # journal not replayed
        assert store.latest_checkpoint(sid).data == {"step": 1}  # type: ignore[union-attr]
        writes: list[Callable[[], object]] = [
            lambda: store.create_session("x"),
            lambda: store.log_event(sid, "x"),
            lambda: store.heartbeat(sid),
            lambda: store.pause_session(sid),
            lambda: store.save_checkpoint(sid, "x", {}),
            lambda: store.remove_child(sid, os.getppid()),
            store.checkpoint,
            store.replay,
        ]
        for write in writes:
            with pytest.raises(StoreReadOnlyError):
                write()
    finally:
        report = store.close()
    assert report.replayed == 0 and report.journaled == 0 and report.errors == []
    assert _snapshot(shared_dir) == before


def test_read_only_beside_a_live_writer_sees_its_commits_and_creates_nothing(
    shared_dir: Path,
) -> None:
    """With another process holding the database open (-wal/-shm exist): a live view."""
    path, sid = _populated(shared_dir, journal=False)
    holder = start("hold_open", str(path))  # keeps a connection open, so -wal/-shm stay
    try:
        with SessionStore.open(path) as writer:
            writer.log_event(sid, "live")
            names_before = sorted(p.name for p in shared_dir.iterdir())
            with SessionStore.open(path, read_only=True) as reader:
                assert reader.snapshot is None
                assert [e.message for e in reader.events(sid)] == ["hello", "live"]
            assert sorted(p.name for p in shared_dir.iterdir()) == names_before
    finally:
        release([holder])
        finish(holder)


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_read_only_never_creates_a_store(shared_dir: Path, kind: str) -> None:
    """No file, or an empty one: StoreOpenError and nothing created."""
    path = shared_dir / "sessions.db"
    if kind == "empty":
        path.touch()
    before = _snapshot(shared_dir)
    with pytest.raises(StoreOpenError, match="read-only open creates"):
        SessionStore.open(path, read_only=True)
    assert _snapshot(shared_dir) == before


@pytest.mark.parametrize("argv", READ_COMMANDS, ids=lambda a: "-".join(a))
def test_read_commands_write_nothing_for_the_owner(shared_dir: Path, argv: list[str]) -> None:
    """Each read command leaves the database, its journal and side files byte-identical."""
    path, sid = _populated(shared_dir)
    before = _snapshot(shared_dir)
    code = _cli_quietly(["--db", str(path), *(a.format(sid=sid) for a in argv)])
    assert code == (5 if "no-such-session" in argv else 0)
    assert _snapshot(shared_dir) == before


@pytest.mark.parametrize("live", [False, True], ids=["closed", "held-open-by-owner"])
def test_read_commands_write_nothing_for_another_user(shared_dir: Path, live: bool) -> None:
    """Another user runs every read command: same bytes, same owners, no -wal/-shm of theirs."""
    path, sid = _populated(shared_dir)
    holder = start("hold_open", str(path)) if live else None
    try:
        before = _snapshot(shared_dir)

        def run_all() -> int:
            codes = [
                _cli_quietly(["--db", str(path), *(a.format(sid=sid) for a in argv)])
                for argv in READ_COMMANDS
            ]
            return 0 if codes == [0, 0, 0, 0, 0, 0, 5] else 1

        assert _as_nobody(run_all) == 0
        assert _snapshot(shared_dir) == before
        assert all(uid == 0 for _, _, uid, _, _ in _snapshot(shared_dir).values())
    finally:
        if holder is not None:
            release([holder])
            finish(holder)
    # The owner can still write afterwards (nothing of another user's was left in the way).
    with SessionStore.open(path, config=StoreConfig(write_deadline_s=2)) as store:
        store.log_event(sid, "owner writes after")
        assert store.stats().failures == []


def test_read_only_beside_a_writer_opening_and_closing_never_fails(shared_dir: Path) -> None:
    """A peer opening and closing the store in a loop never makes a read-only open fail.

    For a moment its locks are held with no -shm beside the file (while it opens, and at the
    last close); read-only opens wait that moment out: 500 of 500 read.
    """
    path, sid = _populated(shared_dir, journal=False)
    peer = start("open_close_until_told", str(path))
    try:
        failures = []
        for n in range(500):
            try:
                with SessionStore.open(path, read_only=True) as store:
                    store.events(sid, limit=1)
            except Exception as err:
                failures.append((n, repr(err)))
        assert not failures, failures
    finally:
        release([peer])
        finish(peer)
