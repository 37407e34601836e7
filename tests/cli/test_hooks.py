"""Hook-safe writes from the shell: bounded, journaled when locked out, never lost.

The real thing: many ``python -m sessionstore log|heartbeat|checkpoint save|child ...``
processes started at the same moment (agent stop hooks on exit), against one database other
processes write to, or whose write lock a peer holds past every hook's ``--timeout``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from _procs import finish, release, start

from sessionstore import SessionStore

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "sessionstore"]


@dataclass
class Hook:
    """One finished hook process."""

    argv: list[str]
    code: int
    wall_s: float
    stdout: str
    stderr: str

    @property
    def doc(self) -> dict[str, object]:
        return dict(json.loads(self.stdout))


def _run_hook(argv: list[str]) -> Hook:
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    return Hook(argv, r.returncode, time.monotonic() - t0, r.stdout, r.stderr)


def _storm(db: str, session: str, n: int, timeout: float) -> list[Hook]:
    """``n`` hook processes at once: logs, heartbeats and checkpoint saves, each unique."""
    base = [*CLI, "--db", db, "--json", "--timeout", str(timeout)]
    argvs: list[list[str]] = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            argvs.append([*base, "heartbeat", session])
        elif kind == 1:
            argvs.append([*base, "log", session, f"hook {i}", "--data", json.dumps({"i": i})])
        else:
            argvs.append([*base, "checkpoint", "save", session, f"hook-{i}", "--data", f"[{i}]"])
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(_run_hook, argvs))


def _expected(n: int) -> tuple[set[str], set[str]]:
    logs = {f"hook {i}" for i in range(n) if i % 3 == 1}
    checkpoints = {f"hook-{i}" for i in range(n) if i % 3 == 2}
    return logs, checkpoints


def _landed(db: str, session: str) -> tuple[list[str], set[str]]:
    """Event messages (with repeats) and checkpoint names, after the journal is replayed."""
    with SessionStore.open(db) as store:
        messages: list[str] = []
        after = 0
        while page := store.events(session, after_id=after, limit=1000):
            messages += [e.message for e in page]
            after = page[-1].id or after
        names = {c.name for c in store.list_checkpoints(session)}
    return messages, names


def _figures(hooks: Sequence[Hook]) -> str:
    walls = [h.wall_s for h in hooks]
    inside = [float(str(h.doc["elapsed_s"])) for h in hooks if h.code == 0]
    journaled = sum("journaled" in h.stderr for h in hooks)
    return (
        f"{len(hooks)} hooks: wall max {max(walls):.3f} s, in-process max "
        f"{max(inside, default=0):.3f} s, journaled {journaled}"
    )


def test_exit_storm_of_30_hooks_with_writers_running(tmp_path: Path) -> None:
    """30 hooks at once beside two writers: all exit 0 in their bound; nothing is lost."""
    db = str(tmp_path / "storm.db")
    with SessionStore.open(db) as store:
        session = store.create_session("storm").id
    ack = tmp_path / "acks.txt"
    writers = [start("write", db, session, "300", str(ack)) for _ in range(2)]
    release(writers)
    timeout = 5.0
    hooks = _storm(db, session, 30, timeout)
    for w in writers:
        finish(w)
    print(_figures(hooks))
    failed = [(h.code, h.stderr) for h in hooks if h.code != 0]
    assert failed == []
    for h in hooks:
        # The command's own work is bounded by --timeout (plus closing); start-up (imports on
        # a loaded machine, 30 interpreters at once) comes on top and is only bounded loosely.
        assert float(str(h.doc["elapsed_s"])) <= timeout + 1.0, h
        assert h.wall_s <= timeout + 60, h
    messages, names = _landed(db, session)
    logs, checkpoints = _expected(30)
    assert sorted(m for m in messages if m.startswith("hook ")) == sorted(logs)
    assert checkpoints <= names
    acked = ack.read_text().split()
    assert len([a for a in acked if not a.startswith("cp:")]) == 600
    assert messages.count("event 0") == 2 and messages.count("event 299") == 2


def test_hooks_locked_out_past_their_timeout_are_journaled_then_applied(tmp_path: Path) -> None:
    """A peer holds the write lock: each hook exits 0 within its bound saying journaled."""
    db = str(tmp_path / "held.db")
    with SessionStore.open(db) as store:
        session = store.create_session("held").id
    holder = start("hold_write", db)
    try:
        hooks = _storm(db, session, 9, timeout=1.0)
    finally:
        release([holder])
        finish(holder)
    print(_figures(hooks))
    assert [h.code for h in hooks] == [0] * 9, [h.stderr for h in hooks]
    for h in hooks:
        assert "journaled" in h.stderr, h
        assert h.doc["journaled"] is True
        # The journal's lock is never held while a replay waits for the database, so hooks
        # journaling at once do not queue behind each other's replays: each stays within its
        # timeout (0.5 s of slack for a loaded machine's scheduling, not for any wait).
        assert float(str(h.doc["elapsed_s"])) <= 1.0 + 0.5, h
    messages, names = _landed(db, session)  # the open replays the journal
    logs, checkpoints = _expected(9)
    assert sorted(m for m in messages if m.startswith("hook ")) == sorted(logs)
    assert checkpoints <= names


def test_one_hook_locked_out_returns_within_its_timeout(tmp_path: Path) -> None:
    """Alone against a held write lock, a hook is journaled and back within its --timeout."""
    db = str(tmp_path / "held1.db")
    with SessionStore.open(db) as store:
        session = store.create_session("held").id
    holder = start("hold_write", db)
    try:
        hooks = [
            _run_hook([*CLI, "--db", db, "--json", "--timeout", "2", "log", session, f"hook {i}"])
            for i in range(3)
        ]
    finally:
        release([holder])
        finish(holder)
    for h in hooks:
        assert h.code == 0 and h.doc["journaled"] is True, h
        assert float(str(h.doc["elapsed_s"])) <= 2.0 + 0.5, h
    messages, _ = _landed(db, session)
    assert sorted(m for m in messages if m.startswith("hook ")) == ["hook 0", "hook 1", "hook 2"]


def test_hook_exit_codes_for_unknown_session_and_bad_input(tmp_path: Path) -> None:
    """Unknown session: 5; bad JSON or a pid that is not running: 2; one line; nothing written."""
    db = str(tmp_path / "codes.db")
    with SessionStore.open(db) as store:
        store.create_session("codes")
    base = [*CLI, "--db", db]
    results = [
        _run_hook([*base, "log", "no-such-session", "x"]),
        _run_hook([*base, "log", "codes", "x", "--data", "{not json"]),
        _run_hook([*base, "child", "add", "codes", "4194303"]),
        _run_hook([*base, "--timeout", "1e308", "heartbeat", "codes"]),
    ]
    assert [r.code for r in results] == [5, 2, 2, 2]
    for r in results:
        assert r.stderr.count("\n") == 1, r.stderr


def test_child_add_and_remove_record_a_shell_process(tmp_path: Path) -> None:
    """``child add SESSION PID`` captures identity; ``child remove`` records its exit code."""
    db = str(tmp_path / "child.db")
    with SessionStore.open(db) as store:
        session = store.create_session("child").id
    sleeper = subprocess.Popen(["sleep", "1000"])
    try:
        added = _run_hook([*CLI, "--db", db, "child", "add", session[:12], str(sleeper.pid)])
        assert added.code == 0, added.stderr
        with SessionStore.open(db) as store:
            (row,) = store.children(session)
            assert row.pid == sleeper.pid and row.identity.is_alive()
    finally:
        sleeper.kill()
        sleeper.wait()
    removed = _run_hook(
        [*CLI, "--db", db, "child", "remove", session, str(sleeper.pid), "--exit-code", "-9"]
    )
    assert removed.code == 0, removed.stderr
    with SessionStore.open(db) as store:
        (row,) = store.children(session, include_exited=True)
        assert (row.state.value, row.exit_code) == ("exited", -9)


def test_resume_under_a_held_lock_says_so_in_one_line_within_its_timeout(tmp_path: Path) -> None:
    """Locked out, ``resume`` exits 4 with one line in about --timeout; it applies later."""
    db = str(tmp_path / "resume.db")
    with SessionStore.open(db) as store:
        session = store.create_session("r").id
        store.pause_session(session)
    holder = start("hold_write", db)
    try:
        t0 = time.monotonic()
        r = subprocess.run(
            [*CLI, "--db", db, "--timeout", "1", "resume", session], capture_output=True, text=True
        )
        wall = time.monotonic() - t0
    finally:
        release([holder])
        finish(holder)
    assert r.returncode == 4, r.stderr
    assert r.stderr.count("\n") == 1 and "journaled" in r.stderr
    assert wall <= 1.0 + 30  # the timeout plus a generous start-up on a loaded machine
    with SessionStore.open(db) as store:  # the open replays the journaled resume
        assert store.get_session(session).status.value == "active"
