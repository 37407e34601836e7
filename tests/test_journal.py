"""The durable journal: concurrent appends never tear, crashes lose no complete line."""

from __future__ import annotations

import fcntl
import json
import os
import resource
import select
import signal
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _procs import finish, release, start
from _support import StepClock, all_event_ids

from sessionstore import (
    JournalBusyError,
    JournalFullError,
    SessionStore,
    SessionStoreError,
    StoreConfig,
)
from sessionstore._journal import Journal, _Turns, apply_isolated
from sessionstore._ops import BatchDeadlineError, LogEvent, RemoveChild, new_id, op_adapter
from sessionstore._store import live_stores
from sessionstore.errors import StoreOpenError


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
    assert not os.path.exists(store.journal_path)  # consumed: removed
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
        finish(p, timeout=60)
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


# ------------------------------------------------------------------ replay never blocks an open


def _threads() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.ident is not None}


def test_bad_line_between_good_ones_does_not_block_open(db_path: str) -> None:
    """A bad journal line between good ones never blocks the next open.

    The line (an exit code past 64 bits, refused by every rule) is kept aside with its reason;
    the good ops around it are applied and nothing is left running after the close.
    """
    store = SessionStore.open(db_path)
    sid = store.create_session("s").id
    store.close()
    store.log_event(sid, "before")
    bad = (
        f'{{"op_id":"bad-op","ts":{time.time()},"kind":"remove_child","session_id":"{sid}",'
        f'"pid":4242,"exit_code":{2**64},"state":"exited"}}'
    ).encode()
    with open(store.journal_path, "ab") as f:
        f.write(bad + b"\n")
    store.log_event(sid, "after")
    threads = _threads()
    with SessionStore.open(db_path) as reopened:
        report = reopened.open_replay
        assert (report.applied, report.invalid, report.deferred) == (2, 1, None)
        assert [e.message for e in reopened.events(sid)] == ["before", "after"]
        assert not os.path.exists(reopened.journal_path)  # consumed: removed
        assert report.rejected_path is not None
        reason, kept = Path(report.rejected_path).read_bytes().splitlines()
    assert kept == bad
    assert "exit_code" in json.loads(reason)["kept_aside"]
    assert _threads() <= threads  # nothing left running after the close


def test_op_that_fails_to_bind_is_isolated(store: SessionStore, session_id: str) -> None:
    """A batch failing on one op's bind (OverflowError) is redone op by op: only it is rejected."""
    good = [LogEvent(session_id=session_id, message=f"m{i}") for i in range(3)]
    # Bypasses validation, as an op from an older version or a crafted import could.
    unbindable = RemoveChild.model_construct(session_id=session_id, pid=5, exit_code=2**64)
    results = apply_isolated(store._writer.apply_batch, [good[0], unbindable, *good[1:]])
    assert [r is None for r in results] == [True, False, True, True]
    assert isinstance(results[1], OverflowError)
    assert [e.message for e in store.events(session_id)] == ["m0", "m1", "m2"]


def test_op_by_op_fallback_stops_at_the_deadline(db_path: str) -> None:
    """A timed batch redone op by op after a bad op stops at its deadline, saying how far.

    Before, each of the ops ran its own transaction past the deadline (a close whose queue
    held one bad op could overrun by a thousand of them).
    """
    clock = StepClock()
    config = StoreConfig(checkpointing=False)
    with SessionStore.open(db_path, config=config, clock=clock) as store:
        sid = store.create_session("s").id
        unbindable = RemoveChild.model_construct(session_id=sid, pid=5, exit_code=2**64)
        ops = [unbindable, *(LogEvent(session_id=sid, message=str(i)) for i in range(300))]
        deadline = clock() + 0.05  # 50 readings of the clock: a few one-op transactions
        with pytest.raises(BatchDeadlineError) as stopped:
            apply_isolated(lambda batch: store._writer.apply_batch(batch, deadline=deadline), ops)
        done = stopped.value.results
        assert 1 < len(done) < len(ops)
        assert isinstance(done[0], OverflowError) and done[1:] == [None] * (len(done) - 1)
        assert f"after {len(done)} of {len(ops)} ops" in str(stopped.value)
        # What it says was applied was, in order; nothing after it was tried.
        assert [e.message for e in store.events(sid, limit=len(ops))] == [
            str(i) for i in range(len(done) - 1)
        ]


def test_timed_batch_begun_past_its_deadline_tries_nothing(db_path: str) -> None:
    """apply_batch called at or after its deadline raises before its first transaction."""
    clock = StepClock()
    config = StoreConfig(checkpointing=False)
    with SessionStore.open(db_path, config=config, clock=clock) as store:
        sid = store.create_session("s").id
        with pytest.raises(BatchDeadlineError) as stopped:
            store._writer.apply_batch([LogEvent(session_id=sid, message="late")], deadline=clock())
        assert stopped.value.results == []
        assert store.events(sid) == []


# ------------------------------------------------------------------ files are never followed


def _refused_open(db_path: str, planted: str) -> StoreOpenError:
    threads = _threads()
    with pytest.raises(StoreOpenError) as info:
        SessionStore.open(db_path)
    assert info.value.path == planted
    assert live_stores() == [] and _threads() <= threads  # a failed open leaves nothing
    return info.value


@pytest.mark.parametrize("which", ["-ops.jsonl", "-ops.rejected.jsonl"])
def test_symlinked_side_file_is_refused_and_untouched(
    db_path: str, tmp_path: Path, which: str
) -> None:
    """A symlink at the journal or rejected file is refused, and link and target stay as they were.

    Open raises StoreOpenError (leaving nothing running) and a write after close raises
    instead of following the link.
    """
    store = SessionStore.open(db_path)
    sid = store.create_session("s").id
    store.close()
    target = tmp_path / "victim"
    content = LogEvent(session_id=sid, message="not ours").line + b"garbage\n"
    target.write_bytes(content)
    link = db_path + which
    os.symlink(target, link)
    err = _refused_open(db_path, link)
    assert "symbolic link" in str(err)
    if which == "-ops.jsonl":
        with pytest.raises(StoreOpenError):
            store.log_event(sid, "after close")
    assert target.read_bytes() == content
    assert os.readlink(link) == str(target)


def test_fifo_at_the_journal_is_refused_without_blocking(db_path: str) -> None:
    """A FIFO at the journal path: open fails at once with a clear error, it never waits."""
    SessionStore.open(db_path).close()
    journal = db_path + "-ops.jsonl"
    os.mkfifo(journal, 0o600)
    err = _refused_open(db_path, journal)
    assert "not a regular file" in str(err)
    assert stat.S_ISFIFO(os.lstat(journal).st_mode)
    with pytest.raises(StoreOpenError):
        Journal(db_path, max_bytes=1 << 20).append([LogEvent(session_id="s", message="m")])


def test_another_users_journal_is_refused_and_untouched(db_path: str) -> None:
    """A journal owned by another uid is refused at open and by a write after close."""
    store = SessionStore.open(db_path)
    sid = store.create_session("s").id
    store.close()
    store.log_event(sid, "journaled")
    content = Path(store.journal_path).read_bytes()
    os.chown(store.journal_path, 65534, 65534)
    err = _refused_open(db_path, store.journal_path)
    assert "uid 65534" in str(err)
    with pytest.raises(StoreOpenError):
        store.log_event(sid, "second")
    assert Path(store.journal_path).read_bytes() == content
    assert os.stat(store.journal_path).st_uid == 65534


def test_db_opened_through_a_symlink_shares_the_real_journal(tmp_path: Path) -> None:
    """Side files are named from the resolved path, whichever name the database was opened by.

    A write journaled by a store opened through a symlink is replayed by an open of the real
    path, and stats() reads the real WAL.
    """
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    real = str(real_dir / "sessions.db")
    link = str(tmp_path / "link.db")
    SessionStore.open(real).close()
    os.symlink(real, link)
    via_link = SessionStore.open(link)
    assert via_link.path == real and via_link.journal_path == real + "-ops.jsonl"
    sid = via_link.create_session("s").id
    assert via_link.stats().wal_bytes == os.path.getsize(real + "-wal") > 0
    via_link.close()
    via_link.log_event(sid, "journaled via the link")
    assert not os.path.exists(link + "-ops.jsonl")
    with SessionStore.open(real) as store:
        assert store.open_replay.applied == 1
        assert [e.message for e in store.events(sid)] == ["journaled via the link"]


# ------------------------------------------------------------------ fork


def _wait_child(pid: int, timeout: float) -> int | None:
    """The child's exit code, or None (killed) if it did not exit within ``timeout``."""
    fd = os.pidfd_open(pid)
    try:
        if not select.select([fd], [], [], timeout)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    finally:
        os.close(fd)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads is the point
def test_fork_while_threads_make_ops_never_hangs() -> None:
    """200 forks while 3 threads make ops nonstop: every child makes ids and ops and exits."""
    stop = threading.Event()

    def make_ops() -> None:
        while not stop.is_set():
            LogEvent(session_id="s", message="m", data={"id": new_id()})

    makers = [threading.Thread(target=make_ops) for _ in range(3)]
    for t in makers:
        t.start()
    try:
        for round_no in range(200):
            pid = os.fork()
            if pid == 0:
                try:
                    new_id()
                    LogEvent(session_id="s", message="in the child", data=[new_id()])
                    os._exit(0)
                except BaseException:
                    os._exit(3)
            code = _wait_child(pid, timeout=5)
            assert code is not None, f"fork {round_no + 1}: the child hung (killed after 5 s)"
            assert code == 0, code
    finally:
        stop.set()
        for t in makers:
            t.join(30)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fork_during_replay_leaves_no_lock_in_the_child(
    store: SessionStore, session_id: str, tmp_path: Path
) -> None:
    """A child forked during a replay holds no journal lock and cannot finish the replay.

    Once the parent is done, other processes append at once while the child still lives, and
    the child itself cannot go on with the parent's replay (nor remove lines it did not read).
    The child drops its descriptor in its at-fork hook, which runs when the kernel first
    schedules it: the parent waits for the child's first word (sent after the hooks) before
    probing, or it would race that start.
    """
    journal = store._journal
    journal.append([LogEvent(session_id=session_id, message=f"m{i}") for i in range(3)])
    go_r, go_w = os.pipe()
    up_r, up_w = os.pipe()
    children: list[int] = []

    def apply_then_fork(ops: Any) -> list[Exception | None]:
        pid = os.fork()
        if pid == 0:  # the child: wait until told, then try to carry on the parent's replay
            os.close(go_w)
            os.write(up_w, b"u")  # its at-fork hooks have run
            os.read(go_r, 1)
            return [None] * len(ops)
        children.append(pid)
        return store._writer.apply_batch(ops)

    try:
        report = journal.replay(apply_then_fork)
    except RuntimeError:  # the child, told to go on: it must stop here
        os._exit(0)
    except BaseException:
        if not children:
            os._exit(6)
        raise
    assert report.applied == 3
    os.close(go_r)
    os.close(up_w)
    assert os.read(up_r, 1) == b"u"
    os.close(up_r)
    try:
        assert not os.path.exists(journal.path)  # consumed by the parent alone
        fd = os.open(journal.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the child has it
        finally:
            os.close(fd)
        ack = str(tmp_path / "ack")
        writer = start("journal_append", store.path, session_id, "5", ack)
        release([writer])
        finish(writer, timeout=30)
        assert len(Path(ack).read_text().split()) == 5
    finally:
        os.write(go_w, b"x")
        os.close(go_w)
        [child] = children
        assert _wait_child(child, timeout=30) == 0
    # The child stopped before touching the journal: the 5 lines appended since are all there.
    assert len(Path(journal.path).read_bytes().splitlines()) == 5


def test_locked_database_defers_replay_without_failing_open(db_path: str) -> None:
    """A peer holding the write lock at open: open succeeds and the journal waits, untouched.

    The report says why (deferred), and the next open applies every line.
    """
    store = SessionStore.open(db_path)
    sid = store.create_session("s").id
    store.close()
    store.log_event(sid, "journaled")
    saved = Path(store.journal_path).read_bytes()
    holder = start("hold_write", db_path)
    try:
        config = StoreConfig(busy_timeout_ms=50, write_deadline_s=0.3)
        with SessionStore.open(db_path, config=config) as opened:
            assert opened.open_replay.applied == 0
            assert opened.open_replay.deferred is not None
            assert "StoreBusyError" in opened.open_replay.deferred
            assert Path(opened.journal_path).read_bytes() == saved
    finally:
        holder.communicate("go\n", timeout=30)
    with SessionStore.open(db_path) as reopened:
        assert [e.message for e in reopened.events(sid)] == ["journaled"]


def test_journal_that_cannot_grow_is_a_store_io_error(db_path: str) -> None:
    """A write after close on a disk that cannot grow raises StoreIOError, never a bare OSError.

    It is an OSError too; the op's JSON is logged and stats() lists it as unrecorded.
    """
    store = SessionStore.open(db_path)
    sid = store.create_session("s").id
    store.close()
    store.log_event(sid, "fits")  # the journal now exists, with one line
    size = os.path.getsize(store.journal_path)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child, on a "disk" that cannot grow past `size`
        os.close(read_fd)
        outcome = "no error"
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
            resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
            try:
                store.log_event(sid, "does not fit")
            except Exception as err:
                failures = store.stats().failures
                outcome = ",".join(
                    [
                        type(err).__name__,
                        str(isinstance(err, OSError)),
                        str(isinstance(err, SessionStoreError)),
                        failures[-1].disposition,
                    ]
                )
        finally:
            os.write(write_fd, outcome.encode())
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        outcome = pipe.read().decode()
    os.waitpid(pid, 0)
    assert outcome == "StoreIOError,True,True,unrecorded"
    assert os.path.getsize(store.journal_path) == size


def test_stopped_journal_lock_holder_bounds_the_wait_and_defers_replay(db_path: str) -> None:
    """A peer stopped while holding the journal's lock: an append gives up at its bound, untouched.

    The append raises JournalBusyError (nothing written, the journal as the peer left it), and
    a replay does not wait for the database behind that lock: it is deferred and says why.
    """
    with SessionStore.open(db_path) as store:
        sid = store.create_session("j").id
    journal = Journal(db_path, max_bytes=1 << 20)
    journal.append([LogEvent(session_id=sid, message="before")])
    before = Path(journal.path).read_bytes()
    holder = start("hold_journal_lock", db_path)
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(JournalBusyError):
            journal.append([LogEvent(session_id=sid, message="late")], lock_wait_s=0.3)
        waited = time.monotonic() - t0
        report = journal.replay(lambda ops: [None] * len(ops), lock_wait_s=0.3)
        assert report.applied == 0 and report.deferred is not None
        assert Path(journal.path).read_bytes() == before
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        release([holder])
        finish(holder)
    assert 0.3 <= waited < 3.0  # the bound, plus scheduling on a loaded machine
    with SessionStore.open(db_path) as store:  # the lock is free again: the journal replays
        assert store.open_replay.applied == 1


def test_appends_of_one_process_take_turns_in_arrival_order(db_path: str) -> None:
    """An append waits behind the appends already queued, never behind a flood of later ones.

    Three threads append nonstop; another appends 200 times with a close's 0.1 s bound. First
    come, first served, it waits behind the three flooders' turns at most, plus what they do
    before it joins the queue: between its count and its request the interpreter may run the
    others for a switch interval or two (a dozen appends under load). Without turns the
    flooders re-took the lock between its polls: it waited behind 150-200 appends, and gave
    up with its op unrecorded in one run of three even on an idle machine.
    """
    journal = Journal(db_path, max_bytes=1 << 30)
    stop = threading.Event()
    counts = [0, 0, 0]
    started = threading.Barrier(len(counts) + 1)

    def flood(k: int) -> None:
        started.wait(30)
        while not stop.is_set():
            journal.append([LogEvent(session_id="s", message="flood")])
            counts[k] += 1

    threads = [threading.Thread(target=flood, args=(k,)) for k in range(len(counts))]
    for thread in threads:
        thread.start()
    failures: list[str] = []
    behind: list[int] = []
    try:
        started.wait(30)
        for i in range(200):
            before = sum(counts)
            try:
                journal.append([LogEvent(session_id="s", message=f"close {i}")], lock_wait_s=0.1)
            except JournalBusyError as err:
                failures.append(str(err))
            behind.append(sum(counts) - before)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert failures == []
    assert max(behind) <= 10 * len(counts), behind
    lines = Path(journal.path).read_bytes().splitlines()
    assert sum(b'"close ' in line for line in lines) == 200


def test_a_turn_waiter_interrupted_by_a_signal_leaves_the_queue() -> None:
    """A waiter whose wait a signal handler's exception ends never receives the turn later."""
    turns = _Turns()
    assert turns.acquire(0)  # held, as by another thread's append

    class AlarmError(Exception):
        pass

    def handler(_signum: int, _frame: object) -> None:
        raise AlarmError

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(AlarmError):
            turns.acquire(30)  # queued behind the holder when the signal lands
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    turns.release()  # must not hand the turn to the waiter that is gone
    assert turns.acquire(0)
    turns.release()
