"""``sessionstore stop|pause|kill SESSION`` from another terminal, against real ``run`` trees.

The owner is found in the store and verified before any signal; the process table is checked
for the whole tree afterwards; a dead owner is reported and never signalled, and ``--reap``
ends what it left behind.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from _trees import CLI, kill_leftovers, start, wait_all_gone

from sessionstore import ProcessIdentity, SessionStatus, SessionStore

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_tree_left() -> Iterator[None]:
    """Kill what a failed test left of its trees (orphans escape the per-test child check)."""
    yield
    assert kill_leftovers() == []


# Three workers; the last one ignores SIGTERM (only SIGKILL ends it): an ignored signal stays
# ignored across exec. Every worker lives until it is ended: a test that checks that nothing
# was signalled must not meet a process that ends on its own (a `sleep 1` in a loop did).
WORKERS = """\
sh -c 'echo ready; exec sleep 1000' &
sh -c 'echo ready; exec sleep 1000' &
sh -c 'trap "" TERM; echo ready; exec sleep 1000' &
wait
"""


def _cli(db: str, *args: str) -> tuple[int, dict[str, Any], str]:
    r = subprocess.run([*CLI, "--db", db, "--json", *args], capture_output=True, text=True)
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else {}, r.stderr


def _status(db: str, name: str) -> SessionStatus:
    with SessionStore.open(db) as store:
        return next(s for s in store.list_sessions() if s.name == name).status


def _tree(tmp_path: Path, db: str, name: str, grace: str = "1") -> Any:
    script = tmp_path / "workers.sh"
    script.write_text(WORKERS)
    return start(db, ["sh", str(script)], ready=3, run_args=["--name", name, "--grace", grace])


def test_stop_ends_the_whole_tree_and_reports_it(tmp_path: Path) -> None:
    """``stop NAME``: SIGTERM to the verified owner, every process gone, session stopped."""
    db = str(tmp_path / "stop.db")
    tree = _tree(tmp_path, db, "web")
    procs = [*tree.before, psutil.Process(tree.wrapper.pid)]
    assert len(tree.before) >= 4
    t0 = time.monotonic()
    code, doc, err = _cli(db, "stop", "web")
    last = wait_all_gone(procs, timeout=30)
    wrapper_code, _ = tree.finish()
    assert last is not None
    print(f"stop -> last process gone: {last - t0:.3f} s (tree of {len(procs)})")
    assert code == 0, err
    assert doc["signalled"] == ["SIGTERM"] and doc["owner_ended"] is True
    assert doc["owner"]["pid"] == tree.wrapper.pid
    assert doc["shutdown"]["verified_no_orphans"] is True
    assert doc["status"] == "stopped" and doc["children_alive"] == []
    assert wrapper_code == -signal.SIGTERM
    assert tree.left() == []
    assert _status(db, "web") is SessionStatus.STOPPED


def test_pause_then_run_session_resumes_and_stop_finds_the_new_owner(tmp_path: Path) -> None:
    """After ``pause``, ``run --session NAME`` takes the session over; ``stop`` ends that one."""
    db = str(tmp_path / "pause.db")
    first = _tree(tmp_path, db, "job")
    code, doc, err = _cli(db, "pause", "job")
    first.finish()
    assert code == 0, err
    assert doc["status"] == "paused"
    second = start(db, ["sh", str(tmp_path / "workers.sh")], ready=3, run_args=["--session", "job"])
    code, doc, err = _cli(db, "stop", "job")
    second.finish()
    assert code == 0, err
    assert doc["owner"]["pid"] == second.wrapper.pid  # not the first, dead, owner
    # The resume recorded the wrapper as the owner: the first, dead, one is no longer a candidate.
    assert [c["identity"] for c in doc["owner_candidates"]] == ["alive"]
    assert second.left() == []
    assert _status(db, "job") is SessionStatus.STOPPED


def test_kill_skips_the_grace(tmp_path: Path) -> None:
    """``kill``: a worker ignoring SIGTERM under a 60 s grace is ended well before it."""
    db = str(tmp_path / "kill.db")
    tree = _tree(tmp_path, db, "stubborn", grace="60")
    t0 = time.monotonic()
    code, doc, err = _cli(db, "kill", "stubborn")
    tree.finish()
    elapsed = time.monotonic() - t0
    assert code == 0, err
    assert doc["signalled"][0] == "SIGQUIT" and doc["owner_ended"] is True
    assert tree.left() == []
    assert elapsed < 30  # far below the 60 s grace


def test_dead_owner_is_reported_never_signalled_and_reap_ends_its_orphans(
    tmp_path: Path,
) -> None:
    """A SIGKILLed wrapper: stop signals nothing and exits 1; ``stop --reap`` ends the orphans."""
    db = str(tmp_path / "dead.db")
    tree = _tree(tmp_path, db, "orphaned")
    tree.wrapper.kill()  # no shutdown: its children are orphans now
    tree.reap()
    orphans = tree.left()
    assert len(orphans) >= 4
    code, doc, _ = _cli(db, "stop", "orphaned")
    assert code == 1
    assert doc["signalled"] == [] and doc["owner_candidates"][0]["identity"] in ("gone", "zombie")
    assert all(p.is_running() for p in orphans)
    code, doc, err = _cli(db, "stop", "orphaned", "--reap", "--grace", "1")
    assert code == 0, err
    assert wait_all_gone(orphans, timeout=30) is not None
    assert tree.left() == []
    assert doc["signalled"] == []


def test_an_owner_whose_pid_now_names_another_process_is_never_signalled(
    tmp_path: Path,
) -> None:
    """A recorded owner identity that no longer matches its pid: that process is left alone."""
    db = str(tmp_path / "foreign.db")
    made = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from sessionstore import SessionStore\n"
            f"with SessionStore.open({db!r}) as s: print(s.create_session('x').id)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    session = made.stdout.strip()
    stranger = subprocess.Popen(["sleep", "1000"])
    try:
        real = ProcessIdentity.capture(stranger.pid)
        wrong = real.model_copy(update={"start_ticks": real.start_ticks + 1})
        with SessionStore.open(db) as store:
            store.save_checkpoint(
                session, "sessionstore.run", {"owner": wrong.model_dump(), "host": None}
            )
        code, doc, _ = _cli(db, "kill", session[:10])
        assert stranger.poll() is None  # still running: never signalled
        assert doc["signalled"] == []
        assert [c["identity"] for c in doc["owner_candidates"]] == ["reused", "gone"]
        assert code == 0
    finally:
        stranger.kill()
        stranger.wait()
