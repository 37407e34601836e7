"""Group commit: threads' writes share transactions, and each caller gets only its own outcome."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _support import HeldInThread, StoppedLockHolder, all_event_ids, wait_forked_child

from sessionstore import (
    InvalidTransitionError,
    SessionNotFoundError,
    SessionStore,
    StoreBusyError,
    StoreConfig,
)
from sessionstore._connection import RetryPolicy
from sessionstore._group import GroupWriter, make_writer
from sessionstore._ops import LogEvent
from sessionstore._writer import Writer

GROUP = StoreConfig(synchronous="FULL", group_commit=True)
_WORKER = str(Path(__file__).with_name("_group_worker.py"))


def _spin_until(predicate: Callable[[], bool]) -> None:
    # Waits on the state itself (no sleep); pytest-timeout bounds a bug.
    while not predicate():
        pass


def _group_writer(store: SessionStore) -> GroupWriter:
    writer = store._writer
    assert isinstance(writer, GroupWriter)
    return writer


class Calls:
    """Run calls in threads; keep each one's result or exception by name."""

    def __init__(self) -> None:
        self.outcomes: dict[str, Any] = {}
        self.elapsed: dict[str, float] = {}
        self._threads: list[threading.Thread] = []

    def start(self, name: str, fn: Callable[[], Any]) -> None:
        def run() -> None:
            started = time.monotonic()
            try:
                self.outcomes[name] = fn()
            except BaseException as err:  # the outcome the test looks at
                self.outcomes[name] = err
            self.elapsed[name] = time.monotonic() - started

        thread = threading.Thread(target=run)
        self._threads.append(thread)
        thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in self._threads)


# ---------------------------------------------------------------------------------- config


def test_group_commit_is_off_by_default() -> None:
    """The default config keeps one transaction per op: the writer is the plain Writer."""
    config = StoreConfig()
    assert config.group_commit is False
    writer = make_writer("x.db", config, RetryPolicy(1.0), time.monotonic)
    assert type(writer) is Writer


@pytest.mark.parametrize(
    "build",
    [
        lambda: StoreConfig(group_commit=True),
        lambda: StoreConfig(group_commit=True, synchronous="NORMAL"),
        lambda: StoreConfig.model_validate({"group_commit": True}),
        lambda: StoreConfig.model_validate_json('{"group_commit": true, "synchronous": "NORMAL"}'),
    ],
)
def test_group_commit_with_normal_is_refused_at_validation(build: Callable[[], Any]) -> None:
    """group_commit with NORMAL is a ValidationError naming the fix, however the config is built."""
    with pytest.raises(ValueError, match="group_commit=True needs synchronous='FULL'"):
        build()


@pytest.mark.parametrize(
    "build",
    [
        lambda: StoreConfig.model_construct(group_commit=True, synchronous="NORMAL"),
        lambda: StoreConfig().model_copy(update={"group_commit": True}),
    ],
)
def test_unvalidated_config_is_refused_by_the_writer(
    db_path: str, build: Callable[[], StoreConfig]
) -> None:
    """A config that skipped validation is refused at open with the same words, before any file."""
    with pytest.raises(ValueError, match="group_commit=True needs synchronous='FULL'"):
        SessionStore.open(db_path, config=build())
    assert not os.path.exists(db_path + "-wal")


def test_group_commit_with_full_is_accepted(db_path: str) -> None:
    """With FULL the store's writer is a GroupWriter and single writes work as before."""
    with SessionStore.open(db_path, config=GROUP) as store:
        sid = store.create_session("s").id
        event = store.log_event(sid, "one", data={"k": 1})
        assert event.id is not None
        assert isinstance(store._writer, GroupWriter)
        assert [e.message for e in store.events(sid)] == ["one"]
        assert store.stats().applied == 2


# ---------------------------------------------------------------------------------- batching


def test_queued_writes_share_one_transaction_each_with_its_own_result(db_path: str) -> None:
    """Eight writes queued behind a held writer commit as one transaction; each gets its own id."""
    with SessionStore.open(db_path, config=GROUP) as store:
        sid = store.create_session("s").id
        writer = _group_writer(store)
        calls = Calls()
        before = (writer.group_commits, writer.group_ops)
        with HeldInThread(lambda: writer._lead):  # as if a commit were in flight
            for i in range(8):
                calls.start(f"w{i}", lambda i=i: store.log_event(sid, f"m{i}"))
            _spin_until(lambda: len(writer._queue) == 8)
        calls.join()
        events = {e.op_id: e for e in store.events(sid)}
        assert len(events) == 8
        for i in range(8):
            returned = calls.outcomes[f"w{i}"]
            assert returned.id == events[returned.op_id].id  # its own row, not a neighbour's
            assert events[returned.op_id].message == f"m{i}"
        assert (writer.group_commits - before[0], writer.group_ops - before[1]) == (1, 8)
        assert store.stats().applied == 9


def test_one_bad_op_fails_only_its_caller(db_path: str) -> None:
    """A missing session and a refused transition fail their callers; the batch's others commit."""
    with SessionStore.open(db_path, config=GROUP) as store:
        sid = store.create_session("s").id
        stopped = store.create_session("stopped").id
        store.stop_session(stopped)
        writer = _group_writer(store)
        calls = Calls()
        before = (writer.group_commits, writer.group_ops)
        with HeldInThread(lambda: writer._lead):  # as if a commit were in flight
            calls.start("good0", lambda: store.log_event(sid, "good0"))
            _spin_until(lambda: len(writer._queue) == 1)
            calls.start("missing", lambda: store.log_event("no-such-session", "lost?"))
            calls.start("refused", lambda: store.pause_session(stopped))
            calls.start("good1", lambda: store.log_event(sid, "good1"))
            calls.start("good2", lambda: store.heartbeat(sid))
            _spin_until(lambda: len(writer._queue) == 5)
        calls.join()
        assert isinstance(calls.outcomes["missing"], SessionNotFoundError)
        assert isinstance(calls.outcomes["refused"], InvalidTransitionError)
        assert calls.outcomes["good0"].id is not None and calls.outcomes["good1"].id is not None
        assert calls.outcomes["good2"] is None
        assert sorted(e.message for e in store.events(sid)) == ["good0", "good1"]
        assert store.get_session(sid).heartbeat_at is not None
        assert store.get_session(stopped).status.value == "stopped"
        assert (writer.group_commits - before[0], writer.group_ops - before[1]) == (1, 5)
        stats = store.stats()
        assert stats.applied == 2 + 1 + 3 and stats.journaled == 0


def test_many_threads_lose_nothing_and_count_like_unbatched(db_path: str) -> None:
    """16 threads x 25 writes: every write applied once, counted once, in shared transactions."""
    with SessionStore.open(db_path, config=GROUP) as store:
        sids = [store.create_session(f"t{i}").id for i in range(16)]
        writer = _group_writer(store)
        acked: list[list[str]] = [[] for _ in sids]
        go = threading.Barrier(len(sids))

        def write(i: int) -> None:
            go.wait()
            for n in range(25):
                acked[i].append(store.log_event(sids[i], f"{n}").op_id)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(len(sids))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for i, sid in enumerate(sids):
            assert all_event_ids(store, sid) == acked[i]  # in each thread's order
        stats = store.stats()
        assert (stats.applied, stats.journaled) == (16 + 16 * 25, 0)
        assert writer.group_ops == 16 + 16 * 25 and writer.group_commits < writer.group_ops
        assert not writer._queue and not writer._lead.locked()


def test_commit_hook_checkpoints_shared_commits(db_path: str) -> None:
    """The commit hook runs after shared commits too: the WAL past its limit gets a RESTART."""
    config = StoreConfig(synchronous="FULL", group_commit=True, checkpoint_wal_bytes=256 * 1024)
    with SessionStore.open(db_path, config=config) as store:
        sids = [store.create_session(f"t{i}").id for i in range(4)]
        writer = _group_writer(store)

        def write(sid: str) -> None:
            for i in range(50):
                store.log_event(sid, f"m{i}", data={"pad": "x" * 3000})

        threads = [threading.Thread(target=write, args=(sid,)) for sid in sids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        last = writer.last_checkpoint
        assert writer.checkpoints >= 2
        assert last is not None and last.mode == "RESTART" and last.ok
        assert store.stats().applied == 4 + 4 * 50


# ---------------------------------------------------------------------------------- deadlines


@pytest.mark.slow
def test_queued_follower_leaves_at_its_deadline_with_nothing_written(db_path: str) -> None:
    """Queued behind a leader stuck on a stopped peer: StoreBusyError at its own deadline."""
    with SessionStore.open(db_path, config=GROUP) as store:
        sid = store.create_session("s").id
        writer = _group_writer(store)
        lead_op = LogEvent(session_id=sid, message="leader")
        late_op = LogEvent(session_id=sid, message="follower")
        calls = Calls()
        with StoppedLockHolder(db_path):
            calls.start("leader", lambda: writer.apply(lead_op, deadline=time.monotonic() + 30))
            # The leader has taken its transaction (the queue is empty again) and waits.
            _spin_until(lambda: writer._lock.locked() and not writer._queue)
            started = time.monotonic()
            with pytest.raises(StoreBusyError):
                writer.apply(late_op, deadline=started + 0.3)
            elapsed = time.monotonic() - started
            assert not writer._queue
        calls.join()  # the peer let go: the leader's transaction commits
        assert calls.outcomes["leader"] is not None
        assert elapsed < 0.3 + 1.0, elapsed
        assert [e.message for e in store.events(sid)] == ["leader"]


@pytest.mark.slow
def test_a_stopped_peer_fails_the_whole_transaction_by_its_earliest_deadline(
    db_path: str,
) -> None:
    """One transaction on a stopped peer: both its ops fail by the earlier deadline; none lands."""
    with SessionStore.open(db_path, config=GROUP) as store:
        sid = store.create_session("s").id
        writer = _group_writer(store)
        long_op = LogEvent(session_id=sid, message="long")
        short_op = LogEvent(session_id=sid, message="short")
        calls = Calls()
        with StoppedLockHolder(db_path):
            with HeldInThread(lambda: writer._lead):  # as if a commit were in flight
                calls.start("long", lambda: writer.apply(long_op, deadline=time.monotonic() + 30))
                _spin_until(lambda: len(writer._queue) == 1)
                calls.start(
                    "short", lambda: writer.apply(short_op, deadline=time.monotonic() + 0.5)
                )
                _spin_until(lambda: len(writer._queue) == 2)
            calls.join()
        assert isinstance(calls.outcomes["long"], StoreBusyError)
        assert isinstance(calls.outcomes["short"], StoreBusyError)
        # The short op's caller was not held past its deadline by the long op's.
        assert max(calls.elapsed.values()) < 0.5 + 1.0, calls.elapsed
        assert store.events(sid) == []


@pytest.mark.slow
def test_write_through_the_store_is_journaled_when_its_transaction_fails(db_path: str) -> None:
    """Through the store: ops of a transaction that hits its deadline are journaled, none lost."""
    config = StoreConfig(synchronous="FULL", group_commit=True, write_deadline_s=0.5)
    with SessionStore.open(db_path, config=config) as store:
        sid = store.create_session("s").id
        writer = _group_writer(store)
        calls = Calls()
        with StoppedLockHolder(db_path):
            with HeldInThread(lambda: writer._lead):  # as if a commit were in flight
                for i in range(4):
                    calls.start(f"w{i}", lambda i=i: store.log_event(sid, f"m{i}"))
                _spin_until(lambda: len(writer._queue) == 4)
            calls.join()
        acked = {calls.outcomes[f"w{i}"].op_id for i in range(4)}
        assert all(calls.outcomes[f"w{i}"].id is None for i in range(4))  # journaled
        stats = store.stats()
        assert (stats.applied, stats.journaled) == (1, 4)
    with SessionStore.open(db_path) as store:  # the next open applies the journal
        assert set(all_event_ids(store, sid)) == acked


# ---------------------------------------------------------------------------------- close


@pytest.mark.slow
def test_close_while_followers_wait_keeps_its_bound_and_loses_nothing(db_path: str) -> None:
    """close() while writes wait on a stopped peer: close stays bounded; every write lands."""
    config = StoreConfig(
        synchronous="FULL", group_commit=True, write_deadline_s=2.0, close_timeout_s=0.3
    )
    store = SessionStore.open(db_path, config=config)
    sid = store.create_session("s").id
    writer = _group_writer(store)
    calls = Calls()
    with StoppedLockHolder(db_path):
        calls.start("w0", lambda: store.log_event(sid, "m0"))
        _spin_until(lambda: writer._lock.locked() and not writer._queue)  # w0 leads, stuck
        for i in range(1, 6):
            calls.start(f"w{i}", lambda i=i: store.log_event(sid, f"m{i}"))
        _spin_until(lambda: len(writer._queue) == 5)
        started = time.monotonic()
        report = store.close()
        close_s = time.monotonic() - started
        calls.join()
    # The close bound: its timeout + grace + two let-go waits + the checkpoint's busy wait.
    assert close_s < 0.3 + 0.25 + 0.2 + 0.05 + 1.0, (close_s, report)
    acked = set()
    for i in range(6):
        returned = calls.outcomes[f"w{i}"]
        assert not isinstance(returned, BaseException), returned
        acked.add(returned.op_id)
    with SessionStore.open(db_path) as reopened:
        assert set(all_event_ids(reopened, sid)) == acked


# ---------------------------------------------------------------------------------- faults


@pytest.mark.slow
def test_full_disk_fails_every_op_of_the_transaction_and_applies_none(db_path: str) -> None:
    """RLIMIT_FSIZE under one shared transaction: all six ops fail alike; none is applied."""
    with SessionStore.open(db_path):
        pass
    done = subprocess.run(
        [sys.executable, _WORKER, "full_disk", db_path],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[0])
    outcomes = result["outcomes"]
    assert "acknowledged" not in outcomes, outcomes
    assert len(set(outcomes)) == 1 and outcomes[0] in ("FullError", "IOError"), outcomes
    with SessionStore.open(db_path) as store:
        present = set(all_event_ids(store, result["sid"]))
    assert present == {result["control"]}, present  # nothing of the batch, the control alone


@pytest.mark.slow
def test_sigint_in_the_leader_never_strands_the_lock_or_a_follower(tmp_path: Path) -> None:
    """24 rounds of SIGINT storms at a writing main thread: no hang, no lock left, nothing lost."""
    db = str(tmp_path / "sigint.db")
    with SessionStore.open(db):
        pass
    proc = subprocess.Popen(
        [sys.executable, _WORKER, "sigint", db, "24"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    lines = [json.loads(line) for line in out.splitlines()]
    *rounds, last = lines
    assert last.get("done") and len(rounds) == 24
    bad = [
        r["round"]
        for r in rounds
        if r["hung"] or any(r["left"].values()) or not r["after_applied"] or r["errors"]
    ]
    assert not bad, [r for r in rounds if r["round"] in bad][:3]
    assert sum(r["interrupted"] for r in rounds) > 24  # the storms really hit writes
    # ... and leaders mid-transaction: their followers' ops were journaled, not stranded.
    assert sum(r["journaled"] for r in rounds) > 0
    with SessionStore.open(db) as store:  # replays what was journaled
        present = set(all_event_ids(store, last["sid"]))
    lost = {r["round"]: len(set(r["acked"]) - present) for r in rounds}
    assert not any(lost.values()), lost


# ---------------------------------------------------------------------------------- fork


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_commits_with_its_own_queue(db_path: str) -> None:
    """Forked while threads group-commit: the child's own threads group-commit; neither hangs."""
    store = SessionStore.open(db_path, config=GROUP)
    sid = store.create_session("s").id
    child_sid = store.create_session("children").id
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            store.log_event(sid, "parent")

    threads = [threading.Thread(target=write) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        codes = [_fork_and_write(store, child_sid) for _ in range(10)]
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert codes == [0] * 10, codes
    store.log_event(sid, "parent after")
    store.close()
    with SessionStore.open(db_path) as reopened:
        assert len(all_event_ids(reopened, child_sid)) == 10 * 4 * 5


def _fork_and_write(store: SessionStore, sid: str) -> int | None:
    pid = os.fork()
    if pid == 0:  # the child: four threads, five writes each, through the inherited store
        code = 0
        try:
            children = [
                threading.Thread(target=lambda: [store.log_event(sid, "child") for _ in range(5)])
                for _ in range(4)
            ]
            for thread in children:
                thread.start()
            for thread in children:
                thread.join(20)
            if any(thread.is_alive() for thread in children):
                code = 3
        except BaseException:  # the child reports any failure through its exit code
            code = 5
        os._exit(code)
    return wait_forked_child(pid)


# ---------------------------------------------------------------------------------- interrupts


def _interrupt_at(code: Any, marker: str) -> Callable[..., Any]:
    """A trace function raising KeyboardInterrupt once, at the line of ``code`` with ``marker``.

    What a signal handler does at that bytecode, placed exactly: the exception comes out of the
    traced frame at that line, as a handler's would.
    """
    lines, first = inspect.getsourcelines(code)
    target = first + next(i for i, line in enumerate(lines) if marker in line)
    fired = [False]

    def local(frame: Any, event: str, _arg: Any) -> Any:
        if event == "line" and frame.f_lineno == target and not fired[0]:
            fired[0] = True
            raise KeyboardInterrupt
        return local

    def tracer(frame: Any, event: str, _arg: Any) -> Any:
        return local if event == "call" and frame.f_code is code.__code__ else None

    return tracer


def test_interrupt_between_commit_and_hand_out_strands_no_follower(db_path: str) -> None:
    """KeyboardInterrupt after the commit, before the outcomes go out: followers are journaled."""
    config = StoreConfig(synchronous="FULL", group_commit=True, write_deadline_s=30)
    with SessionStore.open(db_path, config=config) as store:
        sid = store.create_session("s").id
        writer = _group_writer(store)
        writer._last_batch = 2  # as under load: the main thread's write goes through the queue
        release = threading.Event()
        holding = threading.Event()

        def hold_writer() -> None:
            with writer._lock:
                holding.set()
                release.wait(60)

        def release_when_all_queued() -> None:
            _spin_until(lambda: writer._lead.locked() and len(writer._queue) == 4)
            release.set()

        calls = Calls()
        holder = threading.Thread(target=hold_writer)
        holder.start()
        assert holding.wait(30)
        helper = threading.Thread(target=release_when_all_queued)
        helper.start()

        def follow(i: int) -> Any:
            _spin_until(writer._lead.locked)  # the main thread leads
            return store.log_event(sid, f"follower {i}")

        for i in range(3):
            calls.start(f"f{i}", lambda i=i: follow(i))
        sys.settrace(_interrupt_at(GroupWriter._commit_round, "taken.finish(ok, value)"))
        try:
            with pytest.raises(KeyboardInterrupt):
                store.log_event(sid, "main")
        finally:
            sys.settrace(None)
        calls.join()
        # Within a poll or so of the interrupt, not at their 30 s deadlines: no follower waits
        # for an outcome that will never come.
        assert max(calls.elapsed.values()) < 5.0, calls.elapsed
        helper.join(30)
        holder.join(30)
        assert not writer._lead.locked() and not writer._lock.locked() and not writer._queue
        returned = [calls.outcomes[f"f{i}"] for i in range(3)]
        assert all(not isinstance(r, BaseException) for r in returned), returned
        # The interrupt came before any outcome went out (the main thread's own op is the
        # first of the batch): every follower's op was journaled, though its commit happened
        # (the replay at the next open finds it applied).
        assert store.stats().journaled == 3
        assert store.log_event(sid, "after").id is not None
    with SessionStore.open(db_path) as reopened:
        present = set(all_event_ids(reopened, sid))
    assert {r.op_id for r in returned} <= present
