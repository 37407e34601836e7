"""``prune``, ``vacuum`` and ``backup`` as users run them: the real CLI in subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest
from test_main import CLI, _env, run, run_many, sha

from sessionstore import SessionStore
from sessionstore._ops import CreateSession, LogEvent, SetStatus, new_id

pytestmark = pytest.mark.timeout(120)

WORKERS = str(Path(__file__).parent.parent / "workers.py")


def _db(tmp_path: Path) -> tuple[str, str, list[str]]:
    """A database with one live session and three sessions that ended two days ago."""
    path = str(tmp_path / "sessions.db")
    old = time.time() - 2 * 86400
    with SessionStore.open(path) as store:
        live = store.create_session("live").id
        store.log_event(live, "still going")
        olds = []
        for _ in range(3):
            sid = new_id()
            olds.append(sid)
            store.apply_ops(
                [
                    CreateSession(ts=old, session_id=sid, name="old"),
                    LogEvent(ts=old + 1, session_id=sid, level="info", message="x" * 2000),
                    SetStatus(ts=old + 2, session_id=sid, status="completed"),
                ]
            )
    return path, live, olds


def test_prune_vacuum_backup_from_the_command_line(tmp_path: Path) -> None:
    """Prune removes the old ended sessions, vacuum compacts, backup makes a usable copy."""
    path, live, olds = _db(tmp_path)
    pruned = run("--db", path, "prune", "--older-than", "1d", "--json").json()
    assert pruned["sessions_deleted"] == 3 and pruned["complete"] is True
    assert pruned["before_rfc3339"].endswith("Z")
    assert run("--db", path, "prune", "--older-than", "1d").out.startswith("pruned 0 session(s)")
    vac = run("--db", path, "vacuum", "--json").json()
    assert set(vac) == {"bytes_before", "bytes_after", "seconds"}
    dest = tmp_path / "copy.db"
    backup = run("--db", path, "backup", str(dest), "--json").json()
    assert backup["integrity"] == "ok" and backup["path"] == str(dest)
    sessions = run("--db", str(dest), "sessions", "--json").json()["sessions"]
    assert [s["id"] for s in sessions] == [live]
    for sid in olds:
        assert run("--db", str(dest), "show", sid).rc == 5


def test_backup_refuses_an_existing_destination_and_a_planted_symlink(tmp_path: Path) -> None:
    """Exit 2 with a JSON error under --json; the file or the link's target untouched."""
    path, _, _ = _db(tmp_path)
    target = tmp_path / "victim"
    target.write_bytes(b"victim")
    link = tmp_path / "link.db"
    link.symlink_to(target)
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"precious")
    for dest in (link, existing):
        r = run("--db", path, "backup", str(dest), "--json")
        assert r.rc == 2 and r.out == ""
        err = json.loads(r.err)
        assert (err["event"], err["error"], err["exit_code"]) == ("error", "usage", 2)
    assert target.read_bytes() == b"victim" and existing.read_bytes() == b"precious"
    assert run("--db", path, "backup", str(link), "--force").rc == 0
    assert not link.is_symlink() and target.read_bytes() == b"victim"


def test_maintenance_refuses_a_foreign_file_untouched(tmp_path: Path) -> None:
    """Another application's SQLite file: exit 3 for each command, byte-identical."""
    foreign = tmp_path / "other.db"
    conn = apsw.Connection(str(foreign))
    conn.execute("CREATE TABLE notes (x); INSERT INTO notes VALUES (1)")
    conn.close()
    before = sha(foreign)
    results = run_many(
        [
            ["--db", str(foreign), "prune", "--older-than", "1d"],
            ["--db", str(foreign), "vacuum"],
            ["--db", str(foreign), "backup", str(tmp_path / "b.db")],
        ]
    )
    assert [r.rc for r in results] == [3, 3, 3]
    assert sha(foreign) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_prune_under_a_held_lock_is_journaled_within_its_timeout(tmp_path: Path) -> None:
    """A peer holds the write lock: exit 0, "journaled" on stderr, applied once it is free."""
    path, _, olds = _db(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, WORKERS, "hold_write", path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        r = subprocess.run(
            [*CLI, "--db", path, "--timeout", "0.5", "prune", "--older-than", "1d"],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=60,
        )
        elapsed = time.monotonic() - t0
    finally:
        assert holder.stdin is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        holder.communicate(timeout=30)
    assert r.returncode == 0, r.stderr
    assert "journaled" in r.stderr
    assert elapsed < 0.5 + 3.0  # the bound plus an interpreter's start-up
    replay = run("--db", path, "replay", "--json").json()
    assert replay["replay"]["applied"] == 1
    for sid in olds:
        assert run("--db", path, "show", sid).rc == 5
