"""The durable journal: concurrent appends never tear, crashes lose no complete line."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest
from _procs import release, start
from _support import all_event_ids

from sessionstore import JournalFullError, SessionStore
from sessionstore._journal import Journal
from sessionstore._ops import LogEvent, op_adapter


def test_append_is_durable_line_per_op_mode_0600(db_path: str) -> None:
    """Each op is one JSON line; the file is private to its owner."""
    journal = Journal(db_path, max_bytes=1 << 20)
    ops = [LogEvent(session_id="s", message=f"m{i}") for i in range(3)]
    journal.append(ops)
    raw = Path(journal.path).read_bytes()
    assert raw.endswith(b"\n")
    assert [op_adapter.validate_json(line) for line in raw.splitlines()] == ops
    assert stat.S_IMODE(os.stat(journal.path).st_mode) == 0o600


def test_journal_full_is_a_clear_error(db_path: str) -> None:
    """At max_bytes the append raises JournalFullError and writes nothing."""
    journal = Journal(db_path, max_bytes=300)
    journal.append([LogEvent(session_id="s", message="a")])
    size = journal.size()
    with pytest.raises(JournalFullError) as info:
        journal.append([LogEvent(session_id="s", message="x" * 400)])
    assert info.value.limit == 300 and info.value.size == size
    assert journal.size() == size


def test_torn_and_invalid_lines_are_kept_aside(store: SessionStore, session_id: str) -> None:
    """A torn last line and an invalid line are reported and kept aside; good lines apply."""
    good = LogEvent(session_id=session_id, message="good")
    orphan = LogEvent(session_id="no-such-session", message="rejected")
    with open(store.journal_path, "ab") as f:
        f.write(op_adapter.dump_json(good) + b"\n")
        f.write(b'{"kind": "log_event", "oops": true}\n')
        f.write(op_adapter.dump_json(orphan) + b"\n")
        f.write(op_adapter.dump_json(LogEvent(session_id=session_id, message="torn"))[:40])
    report = store.replay()
    assert (report.applied, report.invalid, report.rejected, report.torn) == (1, 1, 1, 1)
    assert [e.message for e in store.events(session_id)] == ["good"]
    assert os.path.getsize(store.journal_path) == 0
    assert report.rejected_path is not None
    kept = Path(report.rejected_path).read_bytes().splitlines()
    assert len(kept) == 6  # per kept-aside line: its reason, then the line byte-exact
    reasons = [json.loads(line)["kept_aside"] for line in kept[0::2]]
    assert reasons[0].startswith("invalid:") and "session_id" in reasons[0]
    assert reasons[1].startswith("rejected: SessionNotFoundError")
    assert reasons[2].startswith("torn:")
    assert kept[1] == b'{"kind": "log_event", "oops": true}'
    assert kept[3] == orphan.line.rstrip(b"\n")


def test_replay_twice_is_harmless(store: SessionStore, session_id: str) -> None:
    """A journal replayed again (a crash between commit and truncate) adds nothing twice."""
    ops = [LogEvent(session_id=session_id, message=f"m{i}") for i in range(5)]
    journal = Journal(store.path, max_bytes=1 << 20)
    journal.append(ops)
    saved = Path(journal.path).read_bytes()
    assert store.replay().applied == 5
    with open(journal.path, "wb") as f:
        f.write(saved)
    assert store.replay().applied == 5
    assert [e.message for e in store.events(session_id)] == [f"m{i}" for i in range(5)]


@pytest.mark.slow
def test_eight_processes_append_without_tearing(db_path: str, tmp_path: object) -> None:
    """8 processes appending at once: every line parses, none interleave, none are lost."""
    with SessionStore.open(db_path) as store:
        sid = store.create_session("j").id
    acks = [str(tmp_path) + f"/ack{i}" for i in range(8)]  # type: ignore[operator]
    procs = [start("journal_append", db_path, sid, "200", ack) for ack in acks]
    release(procs)
    for p in procs:
        p.communicate(timeout=60)
        assert p.returncode == 0
    lines = Path(db_path + "-ops.jsonl").read_bytes().splitlines()
    parsed = [op_adapter.validate_json(line) for line in lines]
    acked = [line for ack in acks for line in Path(ack).read_text().split()]
    assert len(parsed) == len(acked) == 1600
    assert {op.op_id for op in parsed} == set(acked)
    with SessionStore.open(db_path) as store:
        assert store.open_replay.applied == 1600 and store.open_replay.torn == 0
        assert len(all_event_ids(store, sid)) == 1600


@pytest.mark.slow
def test_sigkill_mid_append_loses_no_complete_line(db_path: str, tmp_path: object) -> None:
    """A writer SIGKILLed while appending: the next open replays every acknowledged line."""
    with SessionStore.open(db_path) as store:
        sid = store.create_session("j").id
    ack = str(tmp_path) + "/ack"  # type: ignore[operator]
    proc = start("journal_append", db_path, sid, "1000000", ack)
    release([proc])
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "acked"  # appends are under way
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    acked = Path(ack).read_text().split()
    with SessionStore.open(db_path) as store:
        replay = store.open_replay
        applied = set(all_event_ids(store, sid))
    assert len(acked) > 20
    assert set(acked) <= applied  # every acknowledged op is there
    assert replay.invalid == 0 and replay.torn <= 1
