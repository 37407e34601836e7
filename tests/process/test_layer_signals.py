"""Real orchestrator processes, real signals: the shutdown sequence end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from process_helpers import SCRIPTS, Orchestrator, is_running, read_line

from sessionstore import ChildState, SessionStatus, SessionStore

pytestmark = pytest.mark.slow


@pytest.fixture
def orchestrators() -> Iterator[list[Orchestrator]]:
    started: list[Orchestrator] = []
    yield started
    for orch in started:
        orch.close()


def _rows(db: str, sid: str) -> dict[int, tuple[ChildState, int | None]]:
    with SessionStore.open(db) as store:
        return {c.pid: (c.state, c.exit_code) for c in store.children(sid, include_exited=True)}


def _status(db: str, sid: str) -> SessionStatus:
    with SessionStore.open(db) as store:
        return store.get_session(sid).status


def _wait_stderr(orch: Orchestrator, needle: str, timeout: float) -> None:
    assert orch.proc.stderr is not None
    deadline = time.monotonic() + timeout
    while needle not in read_line(orch.proc.stderr.fileno(), deadline - time.monotonic()):
        pass


def test_sigterm_ends_every_tree_in_order(
    db_path: str, tmp_path: Path, orchestrators: list[Orchestrator]
) -> None:
    """SIGTERM: coop, TERM-ignoring and shell trees all end, rows say how, callbacks in order."""
    log = tmp_path / "callbacks.log"
    orch = Orchestrator(
        db_path,
        "--grace=0.5",
        "--coop=1",
        "--ignore-term=1",
        "--shell-tree",
        f"--callbacks={log}",
        "--raising-callback",
    )
    orchestrators.append(orch)
    assert len(orch.pids["tree"]) == 3  # the shell and its two grandchildren
    orch.send(signal.SIGTERM)
    assert orch.wait(15) == -signal.SIGTERM
    assert orch.all_gone(5)

    rows = _rows(db_path, orch.session_id)
    (coop,) = orch.pids["coop"]
    (stubborn,) = orch.pids["ignore_term"]
    shell = orch.pids["tree"][0]
    assert rows[coop] == (ChildState.EXITED, -signal.SIGTERM)
    assert rows[stubborn] == (ChildState.KILLED, -signal.SIGKILL)
    assert rows[shell] == (ChildState.EXITED, -signal.SIGTERM)
    assert _status(db_path, orch.session_id) is SessionStatus.PAUSED
    assert log.read_text().split() == ["before_children", "after_children", "before_close"]
    with SessionStore.open(db_path) as store:
        messages = [e.message for e in store.events(orch.session_id)]
        final = store.latest_checkpoint(orch.session_id, "shutdown")
    assert "written by after_children" in messages
    assert final is not None and final.data["cause"] == "SIGTERM"
    assert final.data["escalated_to_sigkill"] is True


def test_setsid_escapee_is_found_and_ended(db_path: str, orchestrators: list[Orchestrator]) -> None:
    """A grandchild that setsid()s away from its dead parent is still found and ended."""
    orch = Orchestrator(db_path, "--grace=2", "--escapee")
    orchestrators.append(orch)
    (escapee,) = orch.pids["escapee"]
    assert os.getsid(escapee) == escapee  # really in its own session, outside any child group
    orch.send(signal.SIGTERM)
    assert orch.wait(15) == -signal.SIGTERM
    assert orch.all_gone(5)


@pytest.mark.parametrize("block", ["sqlite", "select"])
def test_sigterm_while_main_thread_blocked(
    db_path: str, orchestrators: list[Orchestrator], block: str
) -> None:
    """SIGTERM ends the orchestrator promptly while its main thread sits in a long C call."""
    orch = Orchestrator(db_path, "--grace=30", "--coop=1", f"--block={block}")
    orchestrators.append(orch)
    sent = orch.send(signal.SIGTERM)
    assert orch.wait(10) == -signal.SIGTERM
    # The blocking call never returns on its own; the bound is loose for loaded CI machines.
    assert time.monotonic() - sent < 5.0
    assert orch.all_gone(5)
    assert _status(db_path, orch.session_id) is SessionStatus.PAUSED


def test_second_sigint_skips_the_grace_period(
    db_path: str, orchestrators: list[Orchestrator]
) -> None:
    """A second SIGINT during the grace wait kills the stubborn child now; exit is by SIGINT."""
    r, w = os.pipe()
    try:
        orch = Orchestrator(db_path, "--grace=60", "--stubborn", f"--notify-fd={w}", pass_fds=[w])
        orchestrators.append(orch)
        os.close(w)
        w = -1
        orch.send(signal.SIGINT)
        assert read_line(r, 10).strip() == "TERM"  # it got SIGTERM and is ignoring it
        sent = orch.send(signal.SIGINT)
        assert orch.wait(10) == -signal.SIGINT
        assert time.monotonic() - sent < 5.0  # far inside the 60 s grace
        assert orch.all_gone(5)
        (child,) = orch.pids["stubborn"]
        assert _rows(db_path, orch.session_id)[child] == (ChildState.KILLED, -signal.SIGKILL)
    finally:
        os.close(r)
        if w != -1:
            os.close(w)


def test_third_sigint_exits_at_once(db_path: str, orchestrators: list[Orchestrator]) -> None:
    """A third SIGINT exits at once, mid-callback, by SIGINT itself; the session is PAUSED."""
    r, w = os.pipe()
    try:
        orch = Orchestrator(
            db_path,
            "--coop=1",
            "--blocking-callback",
            "--callback-timeout=60",
            f"--notify-fd={w}",
            pass_fds=[w],
        )
        orchestrators.append(orch)
        os.close(w)
        w = -1
        orch.send(signal.SIGINT)
        assert read_line(r, 10).strip() == "in-callback"
        orch.send(signal.SIGINT)
        # Two SIGINTs sent back to back may merge into one pending signal: wait until the
        # second was seen (the layer logs the escalation to stderr) before the third.
        _wait_stderr(orch, "again", 10)
        sent = orch.send(signal.SIGINT)
        assert orch.wait(10) == -signal.SIGINT
        assert time.monotonic() - sent < 5.0
        assert orch.all_gone(5)  # the children had already been ended
        assert _status(db_path, orch.session_id) is SessionStatus.PAUSED
    finally:
        os.close(r)
        if w != -1:
            os.close(w)


@pytest.mark.parametrize("skips", [True, False])
def test_repeated_sigterm_cuts_the_grace(
    db_path: str, orchestrators: list[Orchestrator], skips: bool
) -> None:
    """A second SIGTERM kills now (default) or, with the option off, changes nothing; exit -15."""
    r, w = os.pipe()
    try:
        orch = Orchestrator(
            db_path,
            "--grace=30" if skips else "--grace=1",
            "--stubborn",
            f"--notify-fd={w}",
            *([] if skips else ["--sigterm-keeps-grace"]),
            pass_fds=[w],
        )
        orchestrators.append(orch)
        os.close(w)
        w = -1
        first = orch.send(signal.SIGTERM)
        assert read_line(r, 10).strip() == "TERM"
        sent = orch.send(signal.SIGTERM)
        assert orch.wait(15) == -signal.SIGTERM
        if skips:
            assert time.monotonic() - sent < 5.0  # far inside the 30 s grace
        else:
            assert time.monotonic() - first >= 1.0  # the grace period was not cut short
        assert orch.all_gone(5)
        (child,) = orch.pids["stubborn"]
        assert _rows(db_path, orch.session_id)[child] == (ChildState.KILLED, -signal.SIGKILL)
        assert _status(db_path, orch.session_id) is SessionStatus.PAUSED
    finally:
        os.close(r)
        if w != -1:
            os.close(w)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_other_signals_exit_by_their_own_signal(
    db_path: str, orchestrators: list[Orchestrator], sig: signal.Signals
) -> None:
    """SIGINT and SIGHUP shut down the same way and the parent sees that signal as the cause."""
    orch = Orchestrator(db_path, "--grace=2", "--coop=2")
    orchestrators.append(orch)
    orch.send(sig)
    assert orch.wait(10) == -sig
    assert orch.all_gone(5)
    assert _status(db_path, orch.session_id) is SessionStatus.PAUSED


def test_normal_exit_shuts_down_through_atexit(
    db_path: str, orchestrators: list[Orchestrator]
) -> None:
    """Returning from main runs the shutdown at exit: children ended, session STOPPED, exit 0."""
    orch = Orchestrator(db_path, "--grace=2", "--coop=1")
    orchestrators.append(orch)
    _, err = orch.proc.communicate(b"\n", timeout=15)
    assert orch.proc.returncode == 0, err
    assert orch.all_gone(5)
    (coop,) = orch.pids["coop"]
    assert _rows(db_path, orch.session_id)[coop] == (ChildState.EXITED, -signal.SIGTERM)
    assert _status(db_path, orch.session_id) is SessionStatus.STOPPED


def test_asyncio_loop_integration(db_path: str, orchestrators: list[Orchestrator]) -> None:
    """With an asyncio loop in the main thread, SIGTERM goes through the loop and still works."""
    orch = Orchestrator(db_path, "--grace=2", "--coop=1", "--asyncio=run")
    orchestrators.append(orch)
    orch.send(signal.SIGTERM)
    assert orch.wait(10) == -signal.SIGTERM
    assert orch.all_gone(5)
    assert _status(db_path, orch.session_id) is SessionStatus.PAUSED


# ---------------------------------------------------------------- signals at bad moments

_RACE_ROUNDS = 20
_RACE_GRACE_S = 2.0  # the stubborn child must get CPU within it to report SIGTERM (1 s was
# not always enough with 20 processes queued for 2 cores). A child that never reported at all
# also came from the child itself: a SIGTERM landing just before its signal.pause() was never
# handled (fixed in scripts/stubborn.py, which takes it with sigwait)


@dataclass
class _Round:
    """What one orchestrator run ended with."""

    exit_status: int | None
    session: SessionStatus | None
    grace_given_s: float | None  # from the child's SIGTERM receipt to the orchestrator's end
    child_row: tuple[ChildState, int | None] | None
    events: list[str]
    checkpoint_cause: str | None
    stderr: str

    def problems(self, sig: int) -> list[str]:
        found = []
        if self.exit_status != -sig:
            found.append(f"exit status {self.exit_status}, not {-sig}")
        if self.session is not SessionStatus.PAUSED:
            found.append(f"session {self.session}, not paused")
        if self.grace_given_s is None or self.grace_given_s < _RACE_GRACE_S / 2:
            found.append(f"grace not given ({self.grace_given_s} s)")
        # The state (killed/exited) is the exit watcher's business; the SIGKILL after the grace
        # is what this checks.
        if self.child_row is None or self.child_row[1] != -signal.SIGKILL:
            found.append(f"child row {self.child_row}")
        if self.checkpoint_cause != signal.Signals(sig).name:
            found.append(f"final checkpoint cause {self.checkpoint_cause}")
        return found


def _race_round(db: str, args: list[str], sig: int, *, atexit_hook: bool) -> _Round:
    """One orchestrator: signal it at the moment the scenario aims at, then read what it left."""
    r, w = os.pipe()
    orch = None
    try:
        orch = Orchestrator(
            db,
            f"--grace={_RACE_GRACE_S}",
            "--stubborn",
            f"--notify-fd={w}",
            *args,
            pass_fds=[w],
        )
        os.close(w)
        w = -1
        if atexit_hook:  # the main thread returned and an atexit hook before ours is running
            assert read_line(r, 20).strip() == "atexit"
        orch.send(sig)
        if atexit_hook:
            assert orch.proc.stdin is not None
            orch.proc.stdin.write(b"\n")
            orch.proc.stdin.flush()
        line = "?"
        while line and line.strip() != "TERM":
            line = read_line(r, 20)  # '' at EOF: the child died without reporting a SIGTERM
        term_seen = time.monotonic()
        status = orch.wait(30)
        grace = time.monotonic() - term_seen if line else None
        assert orch.all_gone(5)
        _, err = orch.close()
        (child,) = orch.pids["stubborn"]
        with SessionStore.open(db) as store:
            rows = {c.pid: (c.state, c.exit_code) for c in store.children(orch.session_id, True)}
            final = store.latest_checkpoint(orch.session_id, "shutdown")
            return _Round(
                exit_status=status,
                session=store.get_session(orch.session_id).status,
                grace_given_s=grace,
                child_row=rows.get(child),
                events=[e.message for e in store.events(orch.session_id)],
                checkpoint_cause=None if final is None else final.data["cause"],
                stderr=err.decode(errors="replace")[-2000:],
            )
    finally:
        os.close(r)
        if w != -1:
            os.close(w)
        if orch is not None:
            orch.close()


@pytest.fixture
def bystanders() -> Iterator[list[int]]:
    """Two processes the orchestrators must never signal: one in their process group, one not.

    The orchestrators are started in the test's own process group, so a ``sleep`` started here
    shares their group without being their child; the other has a session of its own.
    """
    procs = [
        subprocess.Popen(["sleep", "600"]),
        subprocess.Popen(["sleep", "600"], start_new_session=True),
    ]
    fds = [os.pidfd_open(p.pid) for p in procs]
    yield fds
    for fd in fds:
        os.close(fd)
    for p in procs:
        p.kill()
        p.wait()


_SCENARIOS = {
    # The main thread returns right after READY: the signal lands while it exits, in
    # threading's shutdown, in atexit, or in the layer's own atexit shutdown.
    "main-thread-exit": (["--block=return"], False),
    # Another atexit hook runs (before the layer's) when the signal arrives: on Python 3.12 no
    # thread can be started there.
    "during-atexit": (["--block=return", "--atexit-hook"], True),
    # One signal.pause(): the handler returns, the main thread exits at once.
    "signal-pause": (["--block=pause"], False),
    # App handlers set after install(): they run in the main thread and end it.
    "handler-raises": (["--block=pause-loop", "--user-handler=raise"], False),
    "handler-sys-exit": (["--block=pause-loop", "--user-handler=exit"], False),
    # The seed incident: the app's handler logs, closes the store and exits.
    "seed-handler-before-install": (
        ["--block=pause-loop", "--user-handler=seed", "--user-handler-when=before"],
        False,
    ),
    "seed-handler-after-install": (["--block=pause-loop", "--user-handler=seed"], False),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("scenario", "sig"),
    [
        ("main-thread-exit", signal.SIGINT),
        ("main-thread-exit", signal.SIGTERM),
        ("during-atexit", signal.SIGINT),
        ("during-atexit", signal.SIGTERM),
        ("signal-pause", signal.SIGINT),
        ("handler-raises", signal.SIGINT),
        ("handler-sys-exit", signal.SIGINT),
        ("seed-handler-before-install", signal.SIGINT),
        ("seed-handler-after-install", signal.SIGINT),
    ],
)
def test_signal_at_a_bad_moment_ends_the_same_way(
    tmp_path: Path, bystanders: list[int], scenario: str, sig: signal.Signals
) -> None:
    """20 rounds: exit by the signal, session PAUSED, child given its grace, bystanders spared."""
    args, atexit_hook = _SCENARIOS[scenario]

    def one(i: int) -> _Round:
        return _race_round(str(tmp_path / f"r{i}.db"), args, sig, atexit_hook=atexit_hook)

    with ThreadPoolExecutor(max_workers=4) as pool:
        rounds = list(pool.map(one, range(_RACE_ROUNDS)))
    bad = {i: (rnd.problems(sig), rnd.stderr) for i, rnd in enumerate(rounds) if rnd.problems(sig)}
    assert not bad, f"{len(bad)} of {_RACE_ROUNDS} rounds went wrong: {bad}"
    if scenario.startswith("seed"):
        # Nothing the handler wrote is lost: every write it saw acknowledged ("HANDLER-ACK" on
        # its stderr) is in the store. Whether it gets that far is a race with the layer's own
        # ending, which may re-raise the signal first; that is not a loss.
        acked = [rnd for rnd in rounds if "HANDLER-ACK" in rnd.stderr]
        assert all("user handler ran" in rnd.events for rnd in acked)
        assert acked, "the app's handler never completed a write in any round"
    assert all(is_running(fd) for fd in bystanders)


# ---------------------------------------------------------------- asyncio


def test_sigterm_after_asyncio_run_returned(
    db_path: str, orchestrators: list[Orchestrator]
) -> None:
    """Installed inside asyncio.run(), the layer still shuts down on SIGTERM after it returned."""
    orch = Orchestrator(db_path, "--grace=2", "--coop=1", "--asyncio=closed")
    orchestrators.append(orch)
    orch.send(signal.SIGTERM)
    assert orch.wait(10) == -signal.SIGTERM
    assert orch.all_gone(5)
    assert _status(db_path, orch.session_id) is SessionStatus.PAUSED


def test_app_loop_handler_for_an_owned_signal_is_warned(
    db_path: str, orchestrators: list[Orchestrator]
) -> None:
    """An app's loop.add_signal_handler(SIGTERM) after install() is reported on stderr."""
    orch = Orchestrator(db_path, "--grace=2", "--coop=1", "--asyncio=app-handler")
    orchestrators.append(orch)
    orch.send(signal.SIGTERM)  # the app's handler ends its loop; the process then exits
    assert orch.wait(10) == 0
    assert orch.all_gone(5)  # shut down at exit all the same
    _, err = orch.close()
    # Seen while the loop runs (its add_signal_handler took it) or at exit (the loop's close
    # left SIG_DFL): either way the warning says the layer lost the signal.
    assert b"the layer no longer hears SIGTERM" in err


def test_asyncio_recipe_cancels_the_app_task_before_children(
    db_path: str, tmp_path: Path, orchestrators: list[Orchestrator]
) -> None:
    """The README's asyncio recipe: the app task is cancelled before the children are ended."""
    log = tmp_path / "callbacks.log"
    orch = Orchestrator(db_path, "--grace=2", "--coop=1", "--asyncio=cancel", f"--callbacks={log}")
    orchestrators.append(orch)
    orch.send(signal.SIGINT)
    assert orch.wait(10) == -signal.SIGINT
    assert orch.all_gone(5)
    assert _status(db_path, orch.session_id) is SessionStatus.PAUSED
    order = log.read_text().split("\n")
    assert order.index("app task ended") < order.index("after_children")


def test_asyncio_run_own_sigint_handler_is_chained_in_the_loop(
    db_path: str, tmp_path: Path, orchestrators: list[Orchestrator]
) -> None:
    """SIGINT inside asyncio.run(): its handler (3.11+) cancels the app; exit is still -2."""
    log = tmp_path / "callbacks.log"
    orch = Orchestrator(db_path, "--grace=2", "--coop=1", "--asyncio=run", f"--callbacks={log}")
    orchestrators.append(orch)
    orch.send(signal.SIGINT)
    assert orch.wait(10) == -signal.SIGINT
    assert orch.all_gone(5)
    assert _status(db_path, orch.session_id) is SessionStatus.PAUSED
    # Python 3.10's asyncio.run() sets no SIGINT handler: there is nothing to chain.
    cancelled = "app task ended" in log.read_text().split("\n")
    assert cancelled is (sys.version_info >= (3, 11))


# ---------------------------------------------------------------- bounds


def test_hung_callback_at_exit_keeps_its_budget(
    db_path: str, orchestrators: list[Orchestrator]
) -> None:
    """At interpreter exit (no new threads on 3.12) a hung callback still gets only its budget."""
    r, w = os.pipe()
    try:
        orch = Orchestrator(
            db_path,
            "--coop=1",
            "--block=return",
            "--blocking-callback",  # after_children, waits 60 s
            "--callback-timeout=0.5",
            f"--notify-fd={w}",
            pass_fds=[w],
        )
        orchestrators.append(orch)
        os.close(w)
        w = -1
        assert read_line(r, 20).strip() == "in-callback"
        sent = time.monotonic()
        assert orch.wait(20) == 0
        assert time.monotonic() - sent < 10.0  # not the callback's 60 s
        assert _status(db_path, orch.session_id) is SessionStatus.STOPPED
    finally:
        os.close(r)
        if w != -1:
            os.close(w)


def test_sigterm_while_exiting_with_a_hung_callback(
    db_path: str, orchestrators: list[Orchestrator]
) -> None:
    """SIGTERM during an atexit shutdown held by a hung callback: bounded, then exit by -15."""
    r, w = os.pipe()
    try:
        orch = Orchestrator(
            db_path,
            "--coop=1",
            "--block=return",
            "--blocking-callback",
            "--callback-timeout=0.5",
            f"--notify-fd={w}",
            pass_fds=[w],
        )
        orchestrators.append(orch)
        os.close(w)
        w = -1
        assert read_line(r, 20).strip() == "in-callback"
        sent = orch.send(signal.SIGTERM)
        assert orch.wait(20) == -signal.SIGTERM
        assert time.monotonic() - sent < 10.0
        assert _status(db_path, orch.session_id) is SessionStatus.PAUSED
    finally:
        os.close(r)
        if w != -1:
            os.close(w)


def test_shutdown_bounded_while_a_stopped_peer_holds_the_lock(
    db_path: str, orchestrators: list[Orchestrator]
) -> None:
    """Every write BUSY (stopped peer holds the lock): exit by -15 within the deadline."""
    orch = Orchestrator(
        db_path,
        "--grace=0.5",
        "--coop=3",
        "--callback-timeout=0.2",
        "--write-deadline=0.5",
        "--close-timeout=0.5",
        f"--callbacks={db_path}.log",
    )
    orchestrators.append(orch)
    holder = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "lock_holder.py"), db_path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert read_line(holder.stdout.fileno(), 20).strip() == "locked"
        holder.send_signal(signal.SIGSTOP)
        sent = orch.send(signal.SIGTERM)
        assert orch.wait(60) == -signal.SIGTERM
        took = time.monotonic() - sent
        assert took < orch.deadline_s, f"{took:.1f} s, deadline {orch.deadline_s:.1f} s"
        assert orch.all_gone(5)
    finally:
        holder.kill()
        holder.communicate(timeout=10)
    # What could not be written went to the journal and the next open applies it. When the
    # watchdog has to cut a late sequence (a loaded machine), the status was secured first.
    assert _status(db_path, orch.session_id) is SessionStatus.PAUSED
