"""reap_orphans: children of a SIGKILLed orchestrator are ended; strangers never signalled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from escapee_helpers import Escapees, bystander_problems, subreaper_scope
from process_helpers import Orchestrator, is_running, read_line

from sessionstore import ChildState, SessionStatus, SessionStore
from sessionstore.process import ReapReport, reap_orphans
from sessionstore.process._cgroup import cgroup_unavailable, left_behind


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


REAP = (
    "import sys\n"
    "from sessionstore import SessionStore\n"
    "from sessionstore.process import reap_orphans\n"
    "with SessionStore.open(sys.argv[1]) as store:\n"
    "    print(reap_orphans(store, grace_s=float(sys.argv[2])).model_dump_json())\n"
)


def _reap_elsewhere(db: str, grace_s: float = 0.5) -> ReapReport:
    """Run reap_orphans in another process, as an operator would (not the orphans' subreaper)."""
    out = subprocess.run(
        [sys.executable, "-c", REAP, db, str(grace_s)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return ReapReport.model_validate_json(out.stdout)


def _has_marker(pid: int) -> bool:
    return "SESSIONSTORE_TREE" in psutil.Process(pid).environ()


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Orphans of the dead orchestrator are re-parented to the test process and counted here."""
    with subreaper_scope():
        yield


@pytest.mark.slow
@pytest.mark.parametrize("stubborn", [False, True], ids=["cooperative", "stubborn"])
def test_reap_ends_daemons_of_children_that_already_exited(
    db_path: str, tmp_path: Path, subreaper: None, stubborn: bool
) -> None:
    """Owner SIGKILLed, children exited: reap ends their marked daemons, never claims verified."""
    kinds = ["setsid", "nohup", "daemon", "doublefork"]
    esc = Escapees(db_path, kinds, *(["--stubborn"] if stubborn else []), tmp=tmp_path)
    try:
        pidfds = {pid: os.pidfd_open(pid) for pid in esc.pids}
        with_marker = [p for p in esc.pids if _has_marker(p)]
        hidden = [p for p in esc.pids if p not in with_marker]  # doublefork cleared its env
        assert len(with_marker) == 3 and len(hidden) == 1
        esc.proc.kill()
        assert esc.proc.wait(10) == -signal.SIGKILL
        before = esc.descendants()

        t = time.monotonic()
        report = _reap_elsewhere(db_path)
        took = time.monotonic() - t
        (session,) = report.sessions
        ended = [p for p in with_marker if not is_running(pidfds[p])]
        after = esc.descendants()
        problems = bystander_problems(esc)
        with SessionStore.open(db_path) as store:
            status = store.get_session(esc.session_id).status
        print(
            "\nMEASURE reap-after-sigkill-"
            + ("stubborn " if stubborn else "cooperative ")
            + json.dumps(
                {
                    "before": len(before),
                    "after": len(after),
                    "reap_s": round(took, 3),
                    "ended": len(ended),
                    "bystanders_signalled": len(problems),
                    "claim": session.verification,
                    "reality_hidden_alive": [is_running(pidfds[p]) for p in hidden],
                }
            )
        )
        assert ended == with_marker  # every marked daemon ended, though no root was alive
        assert all(is_running(pidfds[p]) for p in hidden)  # reality: one is out of sight
        assert session.verification == "unverified" and not session.verified_no_orphans
        assert session.descendants_ended == 3
        assert session.new_status is SessionStatus.CRASHED and status is SessionStatus.CRASHED
        assert not problems, problems
        assert len(before) == 4 and len(after) == 1

        again = _reap_elsewhere(db_path)
        assert again.sessions == []  # nothing with its marker is left to find
        for fd in pidfds.values():
            os.close(fd)
    finally:
        esc.close()


@pytest.mark.slow
def test_reap_empties_the_cgroup_a_dead_owner_left(
    db_path: str, tmp_path: Path, subreaper: None
) -> None:
    """Cgroup tier: reap ends even env-cleared escapees (they are in the cgroup), removes it."""
    if cgroup_unavailable() is not None:
        pytest.skip(f"cgroup tier unavailable here: {cgroup_unavailable()}")
    kinds = ["setsid", "envi", "doublefork", "node"]
    esc = Escapees(db_path, kinds, "--cgroup", "--stubborn", tmp=tmp_path)
    try:
        pidfds = {pid: os.pidfd_open(pid) for pid in esc.pids}
        left = left_behind()[esc.session_id]
        esc.proc.kill()
        assert esc.proc.wait(10) == -signal.SIGKILL
        before = esc.descendants()
        t = time.monotonic()
        report = _reap_elsewhere(db_path)
        took = time.monotonic() - t
        (session,) = report.sessions
        gone = esc.all_gone(2)
        problems = bystander_problems(esc)
        print(
            "\nMEASURE reap-after-sigkill-cgroup "
            + json.dumps(
                {
                    "before": len(before),
                    "after": len(esc.descendants()),
                    "reap_s": round(took, 3),
                    "bystanders_signalled": len(problems),
                    "claim": session.verification,
                    "reality_all_gone": gone,
                }
            )
        )
        assert len(before) == len(kinds) and gone
        assert not any(is_running(fd) for fd in pidfds.values())
        assert session.descendants_ended >= len(kinds)
        assert session.verification == "unverified" and "cgroup" in session.enumeration
        assert not problems, problems
        assert [os.path.exists(cg.path) for cg, _, _ in left] == [False]
        with SessionStore.open(db_path) as store:
            assert store.get_session(esc.session_id).status is SessionStatus.CRASHED
        assert _reap_elsewhere(db_path).sessions == []
        for fd in pidfds.values():
            os.close(fd)
    finally:
        esc.close()


def _doctor(db: str) -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "sessionstore", "--db", db, "--json", "doctor"],
        capture_output=True,
        timeout=60,
    )
    return out.returncode, json.loads(out.stdout)


@pytest.mark.slow
def test_doctor_counts_what_reap_ends(db_path: str, tmp_path: Path, subreaper: None) -> None:
    """Owner SIGKILLed, children exited, daemons alive: doctor counts exactly what reap ends."""
    esc = Escapees(db_path, ["setsid", "nohup", "daemon", "doublefork"], tmp=tmp_path)
    try:
        with_marker = [p for p in esc.pids if _has_marker(p)]
        esc.proc.kill()
        assert esc.proc.wait(10) == -signal.SIGKILL
        code, before = _doctor(db_path)
        report = _reap_elsewhere(db_path)
        (session,) = report.sessions
        after_code, after = _doctor(db_path)
        assert before["orphans"] == len(with_marker) == session.descendants_ended == 3
        assert code == 1 and not before["healthy"]
        assert after["orphans"] == 0 and after_code == 0
    finally:
        esc.close()


@pytest.mark.slow
def test_reap_ends_what_a_third_sigint_left(db_path: str, subreaper: None) -> None:
    """Third SIGINT mid-callback (children untouched): exit -2, PAUSED; reap ends the escapee."""
    r, w = os.pipe()
    orch = None
    try:
        orch = Orchestrator(
            db_path,
            "--escapee",
            "--blocking-callback",
            "--blocking-phase=before_children",
            "--callback-timeout=60",
            f"--notify-fd={w}",
            pass_fds=[w],
        )
        os.close(w)
        w = -1
        (escapee,) = orch.pids["escapee"]
        assert _has_marker(escapee)
        orch.send(signal.SIGINT)
        assert read_line(r, 10).strip() == "in-callback"
        orch.send(signal.SIGINT)
        _wait_stderr(orch, "again", 10)  # the second was seen before the third is sent
        orch.send(signal.SIGINT)
        assert orch.wait(10) == -signal.SIGINT
        assert is_running(orch.pidfds[escapee])  # the hard exit left it: reap's to end
        with SessionStore.open(db_path) as store:
            assert store.get_session(orch.session_id).status is SessionStatus.PAUSED
        report = _reap_elsewhere(db_path)
        (session,) = report.sessions
        assert session.descendants_ended == 1
        assert session.verification == "unverified"  # reap never claims verified
        assert not is_running(orch.pidfds[escapee])
    finally:
        os.close(r)
        if w != -1:
            os.close(w)
        if orch is not None:
            orch.close()


def _wait_stderr(orch: Orchestrator, needle: str, timeout: float) -> None:
    assert orch.proc.stderr is not None
    deadline = time.monotonic() + timeout
    while needle not in read_line(orch.proc.stderr.fileno(), deadline - time.monotonic()):
        pass
