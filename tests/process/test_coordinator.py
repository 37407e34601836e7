"""ProcessLayer in this process: exactly-once shutdown, callbacks, identity safety, track()."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from _support import still_running

from sessionstore import (
    ChildState,
    ProcessIdentity,
    SessionStatus,
    SessionStore,
    StoreConfig,
    UnsafeSignalError,
)
from sessionstore._identity import boot_id
from sessionstore.process import ProcessLayer, ShutdownInProgressError, ShutdownPhase
from sessionstore.process._os import is_child_subreaper

pytestmark = pytest.mark.slow  # real child processes


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process the test itself started (not through the layer)."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _layer(store: SessionStore, sid: str, **kw: float) -> ProcessLayer:
    return ProcessLayer(store, sid, grace_s=kw.pop("grace_s", 2.0), **kw)  # type: ignore[arg-type]


def test_shutdown_from_two_threads_runs_once(store: SessionStore, session_id: str) -> None:
    """Two threads calling shutdown() at once get the same report; callbacks ran once."""
    layer = _layer(store, session_id)
    proc = layer.spawn(["sleep", "600"])
    calls: list[str] = []
    layer.on_shutdown(lambda: calls.append("before"), "before_children")
    barrier = threading.Barrier(2)
    reports = []

    def run() -> None:
        barrier.wait()
        reports.append(layer.shutdown(reason="race"))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(reports) == 2 and reports[0] is reports[1]
    assert calls == ["before"]
    assert proc.wait(5) == -signal.SIGTERM
    assert store.closed
    assert layer.shutdown() is reports[0]  # and later callers get it too


def test_failing_callbacks_do_not_stop_the_sequence(store: SessionStore, session_id: str) -> None:
    """A raising and an over-budget callback are reported; later phases still run, store closes."""
    layer = _layer(store, session_id, callback_timeout_s=0.2)
    release = threading.Event()
    ran: list[str] = []

    def boom() -> None:
        raise ValueError("on purpose")

    layer.on_shutdown(boom, ShutdownPhase.BEFORE_CHILDREN)
    layer.on_shutdown(lambda: release.wait(30), ShutdownPhase.AFTER_CHILDREN)
    layer.on_shutdown(lambda: ran.append("after"), ShutdownPhase.AFTER_CHILDREN)
    layer.on_shutdown(lambda: ran.append("close"), ShutdownPhase.BEFORE_CLOSE)
    try:
        report = layer.shutdown()
    finally:
        release.set()
    assert ran == ["after", "close"]
    errors = {(e.phase, e.timed_out) for e in report.callback_errors}
    assert errors == {(ShutdownPhase.BEFORE_CHILDREN, False), (ShutdownPhase.AFTER_CHILDREN, True)}
    assert "on purpose" in report.callback_errors[0].error
    assert report.session_status is SessionStatus.STOPPED
    assert report.close_report is not None and store.closed


def test_callback_cannot_reenter_shutdown(store: SessionStore, session_id: str) -> None:
    """shutdown() from inside an exit callback raises instead of deadlocking."""
    layer = _layer(store, session_id)
    layer.on_shutdown(layer.shutdown, "after_children")
    report = layer.shutdown()
    assert len(report.callback_errors) == 1
    assert "RuntimeError" in report.callback_errors[0].error


def test_mismatched_identity_is_never_signalled(
    store: SessionStore, session_id: str, sleeper: subprocess.Popen[bytes]
) -> None:
    """A recorded pid whose start ticks don't match is marked gone and left running."""
    real = ProcessIdentity.capture(sleeper.pid)
    wrong = ProcessIdentity(pid=sleeper.pid, start_ticks=real.start_ticks + 1, boot_id=boot_id())
    store.add_child(session_id, sleeper.pid, identity=wrong)
    report = _layer(store, session_id).shutdown()
    assert sleeper.poll() is None  # still running: never signalled
    (outcome,) = report.children
    assert (outcome.pid, outcome.outcome, outcome.source) == (sleeper.pid, "gone", "recorded")
    with SessionStore.open(store.path) as again:
        (row,) = again.children(session_id, include_exited=True)
    assert row.state is ChildState.GONE


def test_recorded_row_with_matching_identity_is_ended(
    store: SessionStore, session_id: str, sleeper: subprocess.Popen[bytes]
) -> None:
    """A running row this layer did not spawn, whose identity matches, is ended by shutdown."""
    store.add_child(session_id, sleeper.pid)
    report = _layer(store, session_id).shutdown()
    assert sleeper.wait(5) == -signal.SIGTERM
    assert [o.outcome for o in report.children] == ["terminated"]


def test_track_adopts_without_stealing_exit_status(
    store: SessionStore, session_id: str, sleeper: subprocess.Popen[bytes]
) -> None:
    """track(pid) records and ends a process; its real parent still reaps the true status."""
    layer = _layer(store, session_id)
    child = layer.track(sleeper.pid)
    assert child.start_ticks == ProcessIdentity.capture(sleeper.pid).start_ticks
    report = layer.shutdown()
    assert sleeper.wait(5) == -signal.SIGTERM  # the status was read with WNOWAIT, not reaped
    (outcome,) = report.children
    assert (outcome.source, outcome.outcome, outcome.exit_code) == (
        "tracked",
        "terminated",
        -signal.SIGTERM,
    )


def test_unsafe_pids_are_refused(store: SessionStore, session_id: str) -> None:
    """track() refuses pid <= 1, our own pid, non-ints and pids that name no process."""
    layer = _layer(store, session_id)
    for pid in (0, 1, -1, os.getpid()):
        with pytest.raises(UnsafeSignalError):
            layer.track(pid)
    with pytest.raises(TypeError):
        layer.track("123")  # type: ignore[arg-type]
    free_pid = subprocess.Popen(["true"])
    free_pid.wait()
    with pytest.raises(ProcessLookupError):
        layer.track(free_pid.pid)
    layer.shutdown()


def test_spawn_after_shutdown_is_refused(store: SessionStore, session_id: str) -> None:
    """Once shutdown stopped accepting children, spawn() raises and starts nothing."""
    layer = _layer(store, session_id)
    layer.shutdown()
    with pytest.raises(ShutdownInProgressError):
        layer.spawn(["sleep", "600"])


def test_spawn_records_identity_group_and_real_exit_code(
    store: SessionStore, session_id: str
) -> None:
    """spawn() puts the child in its own group, records its identity, and its exit code."""
    layer = _layer(store, session_id)
    proc = layer.spawn([sys.executable, "-c", "import sys; sys.exit(3)"])
    (row,) = store.children(session_id)
    assert row.pgid == proc.pid  # process_group=0: it leads its own group
    assert row.start_ticks > 0 and row.argv[0] == sys.executable
    assert proc.wait(10) == 3  # Popen still owns its status
    pins = layer._children.pins()
    assert layer._children.wait_recorded(pins, 5)
    (ended,) = store.children(session_id, include_exited=True)
    assert (ended.state, ended.exit_code) == (ChildState.EXITED, 3)
    layer.shutdown()


def test_exit_recorded_while_the_store_is_closing(store: SessionStore, session_id: str) -> None:
    """The original incident: a child exiting mid-close has its exit queued and applied."""
    layer = _layer(store, session_id)
    proc = layer.spawn(["sleep", "600"])
    closing = threading.Event()
    begin_close = store._gate.begin_close

    def spy() -> bool:
        result = begin_close()
        closing.set()
        return result

    store._gate.begin_close = spy  # type: ignore[method-assign]
    reports = []
    with store.lease("test") as _:
        closer = threading.Thread(target=lambda: reports.append(store.close(timeout=30)))
        closer.start()
        assert closing.wait(10)
        proc.kill()
        assert proc.wait(5) == -signal.SIGKILL
        assert layer._children.wait_recorded(layer._children.pins(), 5)
    closer.join(30)
    assert reports[0].applied_from_queue >= 1 and not reports[0].errors
    with SessionStore.open(store.path) as again:
        (row,) = again.children(session_id, include_exited=True)
    assert (row.state, row.exit_code) == (ChildState.EXITED, -signal.SIGKILL)
    layer.shutdown()


def test_subreaper_is_set_while_tracking_and_undone_after(
    store: SessionStore, session_id: str
) -> None:
    """The layer makes us a child subreaper for its life and restores the setting after."""
    assert not is_child_subreaper()
    layer = _layer(store, session_id)
    layer.spawn(["sleep", "600"])
    assert is_child_subreaper()
    layer.shutdown()
    assert not is_child_subreaper()


def test_bad_arguments_are_rejected(store: SessionStore, session_id: str) -> None:
    """Negative or non-finite durations and unknown phases raise ValueError."""
    with pytest.raises(ValueError, match="grace_s"):
        ProcessLayer(store, session_id, grace_s=-1)
    with pytest.raises(ValueError, match="callback_timeout_s"):
        ProcessLayer(store, session_id, callback_timeout_s=0)
    with pytest.raises(ValueError, match="kill_verify_s"):
        ProcessLayer(store, session_id, kill_verify_s=float("nan"))
    layer = _layer(store, session_id)
    with pytest.raises(ValueError):
        layer.on_shutdown(print, "during_children")
    with pytest.raises(TypeError):
        layer.on_shutdown("not callable", "before_close")  # type: ignore[arg-type]
    layer.shutdown()


@pytest.mark.filterwarnings(
    # Forking while the layer's callback worker runs is what this test proves safe (3.12+ warns).
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)
def test_forked_child_cannot_shut_down_parents_children(
    store: SessionStore, session_id: str
) -> None:
    """In a forked child, shutdown() refuses and the inherited atexit hook does nothing."""
    layer = _layer(store, session_id)
    proc = layer.spawn(["sleep", "600"])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            layer.shutdown()
            os.write(w, b"ran")
        except RuntimeError:
            os.write(w, b"refused")
        layer._at_exit()
        os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.read(r, 16) == b"refused" and os.waitstatus_to_exitcode(status) == 0
    os.close(r)
    assert proc.poll() is None  # the parent's child was not touched
    layer.shutdown()
    assert proc.wait(5) == -signal.SIGTERM


def test_three_hung_callbacks_cost_the_callbacks_budget(
    store: SessionStore, session_id: str
) -> None:
    """Three hung callbacks take the shared budget once: two time out, the third is skipped."""
    layer = _layer(store, session_id, callback_timeout_s=0.5)
    assert layer.callbacks_budget_s == 1.0
    release = threading.Event()
    for _ in range(3):
        layer.on_shutdown(lambda: release.wait(30), "before_children")
    try:
        report = layer.shutdown()
    finally:
        release.set()
    errors = [e.error for e in report.callback_errors]
    assert [e.startswith("timed out") for e in errors] == [True, True, False]
    assert errors[2].startswith("not run")
    assert report.deadline_s == layer.shutdown_deadline_s and not report.deadline_exceeded


def test_shutdown_deadline_is_the_sum_of_the_budgets(db_path: str) -> None:
    """The deadline adds callbacks, grace, verify, record, two writes, close and 3 s slack."""
    with SessionStore.open(db_path, config=StoreConfig(write_deadline_s=3)) as store:
        sid = store.create_session("t").id
        layer = ProcessLayer(
            store, sid, grace_s=1, kill_verify_s=1, callback_timeout_s=0.5, close_timeout_s=2
        )
        assert layer.shutdown_deadline_s == 1 + 1 + 1 + 2 + 2 * 3 + 2 + 3
        default = ProcessLayer(store, sid)
        assert default.shutdown_deadline_s == 10 + 5 + 2 + 2 + 2 * 3 + 5 + 3
        default.shutdown()
        layer.shutdown()


@pytest.mark.timeout(60)
def test_handler_found_at_install_is_chained_once(store: SessionStore, session_id: str) -> None:
    """The app's own handler runs once, first in before_children, with the signal number."""
    calls: list[object] = []
    old = signal.signal(signal.SIGHUP, lambda signum, frame: calls.append(("handler", signum)))
    layer = ProcessLayer(store, session_id, grace_s=2, exit_on_signal=False, subreaper=False)
    layer.on_shutdown(lambda: calls.append("callback"), "before_children")
    try:
        layer.install()
        proc = layer.spawn(["sleep", "600"])
        os.kill(os.getpid(), signal.SIGHUP)
        report = layer.wait(30)
        assert report is not None
        assert calls == [("handler", signal.SIGHUP), "callback"]
        assert report.cause == "SIGHUP" and report.session_status is SessionStatus.PAUSED
        assert proc.wait(5) == -signal.SIGTERM
    finally:
        layer.uninstall()
        signal.signal(signal.SIGHUP, old)


@pytest.mark.timeout(60)
def test_signal_during_an_explicit_shutdown_decides_the_ending(
    store: SessionStore, session_id: str
) -> None:
    """A first signal that arrives while shutdown() runs makes it signal-caused: PAUSED."""
    layer = ProcessLayer(store, session_id, grace_s=2, exit_on_signal=False, subreaper=False)
    layer.on_shutdown(lambda: os.kill(os.getpid(), signal.SIGHUP), "after_children")
    try:
        layer.install()
        report = layer.shutdown(reason="done")
        assert report.signal_number == signal.SIGHUP and report.cause == "SIGHUP"
        assert report.session_status is SessionStatus.PAUSED
        assert report.escalated_by_signal is False
    finally:
        layer.uninstall()


@pytest.mark.timeout(60)
def test_installed_layer_shuts_other_layers_down(store: SessionStore, session_id: str) -> None:
    """The README's several-layers recipe: one signal ends both layers' children and sessions."""
    other_id = store.create_session("other").id
    main = ProcessLayer(store, session_id, grace_s=2, exit_on_signal=False, subreaper=False)
    other = ProcessLayer(store, other_id, grace_s=2, close_store=False, subreaper=False)
    main.on_shutdown(lambda: other.shutdown(), "before_children")
    try:
        main.install()
        procs = [main.spawn(["sleep", "600"]), other.spawn(["sleep", "600"])]
        os.kill(os.getpid(), signal.SIGHUP)
        report = main.wait(30)
        assert report is not None and report.session_status is SessionStatus.PAUSED
        assert [p.wait(5) for p in procs] == [-signal.SIGTERM, -signal.SIGTERM]
        other_report = other.report
        assert other_report is not None
        assert other_report.session_status is SessionStatus.STOPPED
    finally:
        main.uninstall()


class _Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.timeout(60)
def test_a_late_signal_shutdown_secures_paused_before_the_watchdog(db_path: str) -> None:
    """A signal-caused sequence past its status threshold: PAUSED lands behind a stopped peer."""
    from process_helpers import SCRIPTS, read_line

    store = SessionStore.open(db_path, config=StoreConfig(write_deadline_s=0.5))
    holder = None
    try:
        sid = store.create_session("late").id
        layer = ProcessLayer(
            store, sid, exit_on_signal=False, close_store=False, cgroup=False, subreaper=False
        )
        clock = _Clock()
        layer._ending._clock = clock
        holder = subprocess.Popen(
            [sys.executable, str(SCRIPTS / "lock_holder.py"), db_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert holder.stdout is not None
        assert read_line(holder.stdout.fileno(), 20).strip() == "locked"
        holder.send_signal(signal.SIGSTOP)  # every write is BUSY until its deadline
        layer._ending.hear(signal.SIGTERM)  # requested; the sequence is stuck before its end
        budget = layer._budget_s()
        clock.now += budget - 0.1  # past the status threshold, short of the watchdog
        layer._tick()
        assert layer._status_recorded.wait(10)  # applied, or journaled for the next open
    finally:
        if holder is not None:
            holder.kill()
            holder.communicate(timeout=10)
        store.close(timeout=0)
    with SessionStore.open(db_path) as reopened:
        assert reopened.get_session(sid).status is SessionStatus.PAUSED


def test_uninstall_without_shutdown_leaves_no_callback_thread(
    store: SessionStore, session_id: str
) -> None:
    """install() starts the callback worker ahead of time; uninstall() stops it, every cycle.

    Each install/uninstall pair used to leave one idle worker thread for good (only a shutdown
    stopped it). A shutdown after uninstall still runs its callbacks, on a worker of its own.
    """
    layer = ProcessLayer(store, session_id, exit_on_signal=False, subreaper=False)
    ran: list[str] = []
    layer.on_shutdown(lambda: ran.append("ran"), "before_close")
    before = set(threading.enumerate())
    for _ in range(3):
        layer.install()
        started = _callback_workers_since(before)
        assert len(started) == 1
        layer.uninstall()
        assert still_running(started, 10) == []
    report = layer.shutdown(reason="after uninstall")
    assert ran == ["ran"] and report.callback_errors == []
    assert still_running(_callback_workers_since(before), 10) == []


def test_worker_kept_by_a_hung_callback_ends_when_the_callback_returns(
    store: SessionStore, session_id: str
) -> None:
    """The worker a callback holds past its budget is never reused, and ends once it returns.

    It used to go back to waiting for a job that never came: one thread left for good at every
    shutdown whose callback outlasted its budget.
    """
    before = set(threading.enumerate())
    layer = _layer(store, session_id, callback_timeout_s=0.2)
    release = threading.Event()
    layer.on_shutdown(lambda: release.wait(30), "before_children")
    try:
        report = layer.shutdown()
    finally:
        release.set()
    assert [e.timed_out for e in report.callback_errors] == [True]
    workers = _callback_workers_since(before)
    assert workers  # the one that ran the callback, at least
    assert still_running(workers, 10) == []


def _callback_workers_since(before: set[threading.Thread]) -> list[threading.Thread]:
    return [
        t for t in threading.enumerate() if t not in before and t.name == "sessionstore-callback"
    ]
