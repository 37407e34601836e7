"""reap_orphans: children of a SIGKILLed orchestrator are ended; strangers never signalled."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator

import pytest
from process_helpers import Orchestrator, is_running

from sessionstore import ChildState, SessionStatus, SessionStore
from sessionstore.process import reap_orphans


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """A process whose pid a dead orchestrator recorded with the wrong identity."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.slow
def test_reap_dry_run_then_real(db_path: str, stranger: subprocess.Popen[bytes]) -> None:
    """Dry run changes nothing; the real run ends matching trees, spares the stranger."""
    orch = Orchestrator(
        db_path,
        "--no-install",
        "--coop=1",
        "--ignore-term=1",
        "--shell-tree",
        f"--mismatch-pid={stranger.pid}",
    )
    try:
        orch.proc.kill()  # the owner dies without any shutdown
        assert orch.wait(10) == -signal.SIGKILL
        ours = orch.all_pids
        with SessionStore.open(db_path) as store:
            dry = reap_orphans(store, dry_run=True, grace_s=0.5)
            (session,) = dry.sessions
            actions = {c.pid: c.action for c in session.children}
            assert actions[stranger.pid] == "would_mark_gone"
            assert {actions[p] for p in orch.pids["coop"] + orch.pids["ignore_term"]} == {
                "would_terminate"
            }
            assert session.new_status is SessionStatus.CRASHED
            assert all(is_running(orch.pidfds[p]) for p in ours)
            assert store.get_session(orch.session_id).status is SessionStatus.ACTIVE

            real = reap_orphans(store, grace_s=0.5)
            (session,) = real.sessions
            actions = {c.pid: c.action for c in session.children}
            assert actions[stranger.pid] == "marked_gone"
            assert actions[orch.pids["coop"][0]] == "terminated"
            assert actions[orch.pids["ignore_term"][0]] == "killed"
            assert session.descendants_ended >= 2
            # Another process cannot see env-cleared escapees of a dead owner: never "verified".
            assert not session.verified_no_orphans and session.verification == "unverified"
            assert session.verification_reason and "another process" in session.verification_reason
            assert orch.all_gone(5)
            assert stranger.poll() is None  # a stranger's process is never signalled
            rows = {c.pid: c.state for c in store.children(orch.session_id, include_exited=True)}
            assert rows[stranger.pid] is ChildState.GONE
            assert rows[orch.pids["ignore_term"][0]] is ChildState.KILLED
            assert store.get_session(orch.session_id).status is SessionStatus.CRASHED

            assert reap_orphans(store).sessions == []  # nothing left to do
    finally:
        orch.close()


def test_reap_leaves_sessions_of_live_owners_alone(
    store: SessionStore, session_id: str, stranger: subprocess.Popen[bytes]
) -> None:
    """A session whose owner (this test process) is alive is skipped, its children untouched."""
    store.add_child(session_id, stranger.pid)
    report = reap_orphans(store, grace_s=0.1)
    assert report.sessions == []
    assert report.skipped[session_id] == "owner is alive"
    assert stranger.poll() is None
    assert store.get_session(session_id).status is SessionStatus.ACTIVE


def test_reap_rejects_negative_durations(store: SessionStore) -> None:
    """Negative grace or verify durations raise ValueError before anything is read."""
    with pytest.raises(ValueError, match="grace_s"):
        reap_orphans(store, grace_s=-1)
