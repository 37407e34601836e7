"""Worker processes for multi-process tests: ``python tests/workers.py COMMAND ARGS...``.

Each worker prints ``ready`` once set up and, where a start barrier is wanted, waits for a line
on stdin before it begins, so the test starts every worker at the same moment without sleeping.
"""

from __future__ import annotations

import json
import os
import sys
import time

import apsw

from sessionstore import SessionStore, StoreConfig
from sessionstore._journal import Journal
from sessionstore._ops import LogEvent


def _ready_then_wait() -> None:
    print("ready", flush=True)
    sys.stdin.readline()


def write(db: str, session_id: str, n: str, ack_path: str) -> None:
    """Events, heartbeats and checkpoints; every acknowledged event op id goes to ``ack_path``."""
    store = SessionStore.open(db)
    _ready_then_wait()
    with open(ack_path, "a", encoding="utf-8") as ack:
        for i in range(int(n)):
            event = store.log_event(session_id, f"event {i}", data={"pid": os.getpid(), "i": i})
            ack.write(event.op_id + "\n")
            store.heartbeat(session_id)
            if i % 10 == 0:
                cp = store.save_checkpoint(session_id, f"cp-{os.getpid()}", {"i": i})
                ack.write("cp:" + cp.id + "\n")
            ack.flush()
    report = store.close()
    print(json.dumps({"failures": len(store.stats().failures), "errors": report.errors}))


def open_only(db: str) -> None:
    """Open (migrating a new file) at the barrier, then report the schema version."""
    _ready_then_wait()
    with SessionStore.open(db) as store, store.lease() as lease:
        print(lease.execute("PRAGMA user_version")[0][0], flush=True)


def raw_rmw(db: str, n: str) -> None:
    """Raw apsw, deferred transactions that read then write; prints how many failed."""
    conn = apsw.Connection(db)
    conn.set_busy_timeout(5000)
    _ready_then_wait()
    failed = 0
    for _ in range(int(n)):
        try:
            conn.execute("BEGIN")
            conn.execute("SELECT count(*) FROM counter").fetchall()
            conn.execute("UPDATE counter SET n = n + 1")
            conn.execute("COMMIT")
        except apsw.BusyError:
            failed += 1
            if conn.txn_state():
                conn.execute("ROLLBACK")
    conn.close()
    print(failed, flush=True)


def store_rmw(db: str, session_id: str, n: str) -> None:
    """The same contention through the store: prints how many writes were not applied directly."""
    store = SessionStore.open(db)
    _ready_then_wait()
    for i in range(int(n)):
        store.log_event(session_id, f"rmw {i}")
    failures = len(store.stats().failures)
    store.close()
    print(failures, flush=True)


def journal_append(db: str, session_id: str, n: str, ack_path: str) -> None:
    """Append ops to the journal one by one, acknowledging each after it returns."""
    journal = Journal(db, max_bytes=1 << 30)
    _ready_then_wait()
    with open(ack_path, "a", encoding="utf-8") as ack:
        for i in range(int(n)):
            op = LogEvent(session_id=session_id, message=f"journaled {i} " + "x" * 200)
            journal.append([op])
            ack.write(op.op_id + "\n")
            ack.flush()
            if i == 20:
                print("acked", flush=True)  # tells a killer test that appends are under way


def hold_write(db: str) -> None:
    """Hold the database write lock until a line arrives on stdin."""
    conn = apsw.Connection(db)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("CREATE TABLE IF NOT EXISTS _lock_holder (x)")
    _ready_then_wait()
    conn.execute("ROLLBACK")
    conn.close()


def hold_journal_lock(db: str) -> None:
    """Hold the journal's file lock (as an appender does for a moment) until a line arrives."""
    import fcntl

    fd = os.open(db + "-ops.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _ready_then_wait()
    os.close(fd)


def hold_open(db: str) -> None:
    """Keep the store open (so -wal and -shm exist) until a line arrives on stdin."""
    store = SessionStore.open(db)
    _ready_then_wait()
    store.close()


def hold_exclusive(db: str) -> None:
    """Hold the database in exclusive locking mode (its locks held, no -shm) until told."""
    conn = apsw.Connection(db)
    conn.pragma("locking_mode", "EXCLUSIVE")  # before the first WAL access: no -shm is made
    conn.execute("SELECT count(*) FROM sessions").fetchall()
    _ready_then_wait()
    conn.close()


def open_close_until_told(db: str) -> None:
    """Open the store, create a session, close it; again and again until a line on stdin.

    At each open and close the locks are held for a moment with no -shm beside the file, and
    -wal/-shm come and go: what a read-only open beside it must wait out.
    """
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    print("ready", flush=True)
    while not sel.select(timeout=0):
        with SessionStore.open(db) as store:
            store.create_session("churn")
    sys.stdin.readline()


def hold_read(db: str) -> None:
    """Hold a read transaction (pinning the WAL) until a line arrives on stdin."""
    conn = apsw.Connection(db)
    conn.execute("BEGIN")
    conn.execute("SELECT count(*) FROM sessions").fetchall()
    _ready_then_wait()
    conn.execute("COMMIT")
    conn.close()


def poll_reader(db: str, session_id: str) -> None:
    """Read the newest events in a loop until stdin closes (a reader polling during load)."""
    store = SessionStore.open(db, config=StoreConfig(checkpointing=False, replay_on_open=False))
    print("ready", flush=True)
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    while not sel.select(timeout=0):
        store.events(session_id, limit=50)
    store.close()


def load(db: str, session_id: str, seconds: str) -> None:
    """Write events for ``seconds`` (a sustained load); prints the number written."""
    store = SessionStore.open(db)
    _ready_then_wait()
    end = time.monotonic() + float(seconds)
    n = 0
    while time.monotonic() < end:
        store.log_event(session_id, "load", data={"payload": "y" * 300})
        n += 1
    store.close()
    print(n, flush=True)


def leave_open(db: str, session_id: str) -> None:
    """Write and exit without closing: the atexit hook must close the store."""
    store = SessionStore.open(db)
    store.log_event(session_id, "written before exit")
    print("ready", flush=True)


def close_on_full_disk(db: str, session_id: str, n: str) -> None:
    """Close with ``n`` queued writes on a disk that cannot grow (RLIMIT_FSIZE); print the outcome.

    Neither the WAL nor the journal can take a queued op, so close() must report each one as
    unrecorded, end CLOSED and close its connections, without raising.
    """
    import resource
    import signal

    from _support import ClosingInBackground

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    store = SessionStore.open(db, config=StoreConfig(checkpointing=False))
    store.checkpoint("TRUNCATE")  # the WAL is empty: any op below needs the file to grow
    limit = max(os.path.getsize(db), 64 * 1024)
    print("ready", flush=True)
    with ClosingInBackground(store) as closing:
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        blob = "x" * (4 * limit)
        acked = [
            store.log_event(session_id, f"queued {i}", data={"blob": blob}).op_id
            for i in range(int(n))
        ]
        report = closing.finish()
    outcome = {
        "state": store.state.value,
        "writer_open": store._writer.is_open,
        "acked": acked,
        "unrecorded": [json.loads(line)["op_id"] for line in report.unrecorded],
        "errors": report.errors,
        "again": store.close().already_closed,
    }
    print(json.dumps(outcome), flush=True)


def write_until_told(db: str, session_id: str, ack_path: str) -> None:
    """Write events until a line arrives on stdin; each acknowledged op id goes to ``ack_path``.

    Prints ``warm`` once 50 events are acknowledged, so a test can act while writes flow.
    """
    import selectors

    store = SessionStore.open(db)
    _ready_then_wait()
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    n = 0
    with open(ack_path, "a", encoding="utf-8") as ack:
        while not sel.select(timeout=0):
            event = store.log_event(session_id, f"event {n}", data={"n": n, "pad": "x" * 200})
            ack.write(event.op_id + "\n")
            ack.flush()
            n += 1
            if n == 50:
                print("warm", flush=True)
    store.close()
    print(n, flush=True)


def write_rounds(db: str) -> None:
    """Per round, a stdin line ``SID ...``: write events to each SID in turn until ``end``.

    Prints ``started`` after the round's first write, and at ``end`` one JSON line: the event
    op ids acknowledged per session and the sessions found missing. ``quit`` ends the worker.
    """
    import selectors

    from sessionstore import SessionNotFoundError

    store = SessionStore.open(db)
    print("ready", flush=True)
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    line = sys.stdin.readline()
    while line.strip() not in ("", "quit"):
        sids = line.split()
        acked: dict[str, list[str]] = {}
        missing: set[str] = set()
        i = 0
        while True:
            sid = sids[i % len(sids)]
            i += 1
            if sid not in missing:
                try:
                    op_id = store.log_event(sid, "late").op_id
                    acked.setdefault(sid, []).append(op_id)
                except SessionNotFoundError:
                    missing.add(sid)
            if i == 1:
                print("started", flush=True)
            if sel.select(timeout=0):
                break
        sys.stdin.readline()  # "end"
        print(json.dumps({"acked": acked, "missing": sorted(missing)}), flush=True)
        line = sys.stdin.readline()
    store.close()


COMMANDS = {
    "write": write,
    "open": open_only,
    "raw_rmw": raw_rmw,
    "store_rmw": store_rmw,
    "journal_append": journal_append,
    "hold_write": hold_write,
    "hold_journal_lock": hold_journal_lock,
    "hold_open": hold_open,
    "hold_read": hold_read,
    "hold_exclusive": hold_exclusive,
    "open_close_until_told": open_close_until_told,
    "poll_reader": poll_reader,
    "load": load,
    "leave_open": leave_open,
    "close_on_full_disk": close_on_full_disk,
    "write_until_told": write_until_told,
    "write_rounds": write_rounds,
}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
