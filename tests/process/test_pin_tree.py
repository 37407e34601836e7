"""Pins, tree discovery and tree termination on real processes."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator

import pytest
from process_helpers import wait_pidfds_readable

from sessionstore import UnsafeSignalError
from sessionstore._identity import ProcessIdentity
from sessionstore.process._pin import Pin
from sessionstore.process._terminate import terminate_trees
from sessionstore.process._tree import MARKER_NAME, Scope, TreeFinder, marker_value

TREE = "sleep 600 & sleep 600 & echo ready; wait"

pytestmark = pytest.mark.slow  # real child processes


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _tree(procs: list[subprocess.Popen[bytes]], script: str = TREE) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    procs.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


def test_pin_refuses_wrong_identity_and_unsafe_pids(procs: list[subprocess.Popen[bytes]]) -> None:
    """Pinning checks identity after opening the pidfd; pid <= 1 and our own pid are refused."""
    proc = subprocess.Popen(["sleep", "600"])
    procs.append(proc)
    real = ProcessIdentity.capture(proc.pid).start_ticks
    with pytest.raises(ProcessLookupError):
        Pin.pin(proc.pid, source="tracked", expected_start_ticks=real + 1)
    for pid in (1, os.getpid()):
        with pytest.raises(UnsafeSignalError):
            Pin.pin(pid, source="tracked")


def test_pin_with_stale_identity_never_signals(procs: list[subprocess.Popen[bytes]]) -> None:
    """A pin whose start ticks no longer match the pid's process sends nothing."""
    proc = subprocess.Popen(["sleep", "600"])
    procs.append(proc)
    real = ProcessIdentity.capture(proc.pid).start_ticks
    stale = Pin(proc.pid, real + 1, pgid=None, sid=None, argv=[], source="recorded", pidfd=None)
    assert stale.send(signal.SIGKILL) is False
    assert proc.poll() is None


def test_group_signal_reaches_members_after_leader_is_reaped(
    procs: list[subprocess.Popen[bytes]],
) -> None:
    """The pidfd group signal still reaches the group once its leader is dead and reaped."""
    leader = _tree(procs)
    pin = Pin.pin(leader.pid, source="spawned", popen=leader)
    members = TreeFinder({pin.pid: pin}, Scope(None)).find().new
    assert len(members) == 2 and all(m.pgid == leader.pid for m in members)
    fds = [m.fileno() for m in members]
    leader.kill()
    leader.wait()
    assert pin.send_group(signal.SIGTERM) is True
    assert wait_pidfds_readable([fd for fd in fds if fd is not None], 5)
    for p in [pin, *members]:
        p.close()


def test_marker_finds_escapee_outside_the_tree(procs: list[subprocess.Popen[bytes]]) -> None:
    """A process in its own session carrying our marker is found even with no parent link."""
    owner = ProcessIdentity.current()
    env = {**os.environ, MARKER_NAME: marker_value("sid-1", owner)}
    stray = subprocess.Popen(["sleep", "600"], env=env, start_new_session=True)
    procs.append(stray)
    other = subprocess.Popen(["sleep", "600"], start_new_session=True)
    procs.append(other)
    found = TreeFinder({}, Scope("sid-1", owner=owner)).find().new
    assert [p.pid for p in found] == [stray.pid]
    for p in found:
        p.close()


def test_terminate_trees_escalates_and_verifies(procs: list[subprocess.Popen[bytes]]) -> None:
    """A tree that ignores SIGTERM is frozen, SIGKILLed and verified gone within the budget."""
    leader = _tree(procs, "trap '' TERM; sleep 600 & sleep 600 & echo ready; wait")
    root = Pin.pin(leader.pid, source="spawned", popen=leader)
    result = terminate_trees([root], grace_s=0.2, kill_verify_s=5, scope=Scope(None))
    assert result.escalated_to_sigkill and result.verified_no_orphans
    assert not result.unkillable
    assert len(result.pins) == 3
    assert leader.wait(5) == -signal.SIGKILL
    assert {p.outcome() for p in result.pins} == {"killed"}
    for p in result.pins:
        p.close()


def test_terminate_trees_is_quick_for_cooperative_trees(
    procs: list[subprocess.Popen[bytes]],
) -> None:
    """A tree that obeys SIGTERM ends without SIGKILL and without waiting out the grace."""
    leader = _tree(procs)
    root = Pin.pin(leader.pid, source="spawned", popen=leader)
    result = terminate_trees([root], grace_s=30, kill_verify_s=5, scope=Scope(None))
    assert not result.escalated_to_sigkill and result.verified_no_orphans
    assert result.durations["terminate"] < 10
    assert leader.wait(5) == -signal.SIGTERM
    for p in result.pins:
        p.close()


def test_collect_reads_the_code_while_another_thread_reaps() -> None:
    """The exit code is recorded even when the Popen's owner reaps it at the same moment, 50/50."""
    import threading

    bad = []
    for n in range(50):
        proc = subprocess.Popen(["sleep", "600"])
        pin = Pin.pin(proc.pid, source="spawned", popen=proc)
        proc.kill()
        fd = pin.fileno()
        assert fd is not None and wait_pidfds_readable([fd], 5)
        owner = threading.Thread(target=proc.wait)
        owner.start()
        pin.collect(reap_adopted=False)
        owner.join(5)
        if pin.exit_code != -signal.SIGKILL or proc.returncode != -signal.SIGKILL:
            bad.append((n, pin.exit_code, proc.returncode))
        pin.close()
    assert not bad, bad
