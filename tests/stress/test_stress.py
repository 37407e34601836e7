"""The exit-storm harness: real storms (slow), and its verifier fed constructed situations.

Storms are kept small (a few orchestrators, 1-2 s of load) so the whole file runs in well
under a minute on 2 cores. Failures the naive baseline shows only sometimes (BUSY, lost writes,
hangs) are not asserted from a storm; the verifier is shown to detect each of them from a
situation built on purpose instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionstore import SessionStore, stress
from sessionstore.stress._models import StressOptions, StressReport
from sessionstore.stress._verify import (
    RUN_ENV,
    AckCounter,
    end_survivors,
    read_acks,
    scan_stderr,
    track,
    verify_database,
)

_TEST_MARK = "SESSIONSTORE_STRESS_TEST_MARK"


@pytest.fixture(autouse=True)
def _marked_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every process a test's runs start inherits a mark of this test alone."""
    monkeypatch.setenv(_TEST_MARK, uuid.uuid4().hex)


def _run_processes_left() -> list[int]:
    """Living processes of this test's stress runs (there must be none after a run).

    Only this test's: another suite running stress on the same machine is none of its business
    (counting every process with a run marker failed when two suites ran side by side).
    """
    mark = os.environ[_TEST_MARK]
    left = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            env = proc.environ()
            if (
                RUN_ENV in env
                and env.get(_TEST_MARK) == mark
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                left.append(proc.pid)
    return left


def _cli(argv: list[str], db_path: str) -> int:
    parser = argparse.ArgumentParser()
    stress.add_cli_arguments(parser)
    return stress.cli_main(parser.parse_args(argv), db_path)


# ------------------------------------------------------------------------------- storms


@pytest.mark.slow
def test_short_storm_holds_every_invariant(db_path: str) -> None:
    """8 orchestrators with a stubborn child each all die by SIGTERM, losing and leaking nothing."""
    report = stress.run(db_path, procs=8, children=2, seconds=2, stubborn=1)

    assert report.ok, report.failures
    assert report.acked > 8 * 100
    assert report.missing == 0 and report.integrity == "ok"
    assert [w.exit_code for w in report.workers] == [-signal.SIGTERM] * 8
    # Each orchestrator: a stubborn child with a grandchild, a cooperative one with a grandchild.
    assert report.descendants == 8 * 4
    assert report.orphans == 0 and report.active_sessions == 0
    assert max(w.exit_s or 0 for w in report.workers) < report.exit_budget_s
    assert _run_processes_left() == []


@pytest.mark.slow
def test_naive_baseline_leaves_orphans_and_bad_exits_then_cleans_up(db_path: str) -> None:
    """The naive store never ends its children's trees; the harness reports and kills them."""
    report = stress.run(
        db_path, procs=4, children=2, seconds=1, stubborn=1, baseline="naive", deadline_s=3
    )

    # Deterministic in the naive design: the handler signals at most the first direct child
    # (never a tree), then crashes on the closed connection, or spins until it is killed.
    assert not report.ok
    assert {"no_orphans", "exit_status", "child_rows_ended"} <= set(report.failures)
    assert report.orphans > 0
    assert all(w.exit_code != -signal.SIGTERM for w in report.workers)
    assert report.orphans_left == 0
    assert _run_processes_left() == []


@pytest.mark.slow
def test_hung_orchestrator_is_killed_at_its_deadline_and_reported(db_path: str) -> None:
    """An orchestrator still in a 30 s grace at a 1.5 s deadline is SIGKILLed and reported hung."""
    report = stress.run(
        db_path, procs=1, children=1, seconds=0, stubborn=1, grace_s=30, deadline_s=1.5,
        settle_s=0.2,
    )  # fmt: skip

    assert report.hung == 1
    assert report.workers[0].exit_code == -signal.SIGKILL
    assert {"no_hung", "exit_status", "no_orphans"} <= set(report.failures)
    # The stubborn child and its grandchild outlived their killed parent: found and ended.
    assert report.orphans == 2 and report.orphans_left == 0
    assert report.storm_s < 5
    assert _run_processes_left() == []


@pytest.mark.slow
def test_cli_json_and_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--compare --json prints both reports as JSON; the exit status follows sessionstore's."""
    db = str(tmp_path / "c.db")
    argv = ["--procs", "2", "--children", "1", "--seconds", "0.3", "--deadline", "3", "--json"]

    code = _cli([*argv, "--compare"], db)

    out = json.loads(capsys.readouterr().out)
    ours = StressReport.model_validate(out["sessionstore"])
    naive = StressReport.model_validate(out["naive"])
    assert code == 0 and ours.ok and out["sessionstore"]["ok"] is True
    assert not naive.ok and naive.db_path == str(tmp_path / "c.naive.db")
    assert _run_processes_left() == []


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"procs": 0}, "procs"),
        ({"seconds": -1}, "seconds"),
        ({"children": -1}, "children"),
        ({"stubborn": 3}, "stubborn"),
        ({"rate": -5}, "rate"),
    ],
)
def test_bad_numbers_are_refused_before_anything_starts(
    db_path: str, kwargs: dict[str, float], needle: str
) -> None:
    """Nonsensical counts raise ValueError naming the option, and no database is created."""
    args: dict[str, float] = {"procs": 2, "children": 2, "seconds": 1, **kwargs}
    with pytest.raises(ValueError, match=needle):
        stress.run(db_path, **args)  # type: ignore[arg-type]
    assert not os.path.exists(db_path)


@pytest.mark.parametrize("where", ["missing_dir", "under_a_file", "a_directory"])
def test_unusable_db_paths_are_refused(tmp_path: Path, where: str) -> None:
    """A database path in a missing folder, under a regular file, or naming a folder is refused."""
    (tmp_path / "file").write_text("x")
    path = {
        "missing_dir": tmp_path / "nope" / "s.db",
        "under_a_file": tmp_path / "file" / "s.db",
        "a_directory": tmp_path,
    }[where]
    with pytest.raises(ValueError):
        stress.run(str(path), procs=1, children=0, seconds=0)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--procs", "0"], "--procs"),
        (["--procs", "2", "--seconds", "-1"], "--seconds"),
        (["--procs", "2", "--grace", "-1"], "--grace"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    db_path: str, capsys: pytest.CaptureFixture[str], argv: list[str], flag: str
) -> None:
    """The CLI answers bad input with exit status 2 and one stderr line naming the flag."""
    assert _cli(argv, db_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and err[0].startswith("sessionstore stress: error:")
    assert not os.path.exists(db_path)


def test_cli_unwritable_db_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unusable --db path gets exit 2 and one line, before any process starts."""
    assert _cli(["--procs", "2"], str(tmp_path / "missing" / "s.db")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


@settings(max_examples=40, deadline=None)
@given(procs=st.integers(-5, 300), seconds=st.floats(-10, 10, allow_nan=False))
def test_options_accept_exactly_the_documented_ranges(
    tmp_path_factory: pytest.TempPathFactory, procs: int, seconds: float
) -> None:
    """StressOptions accepts 1 <= procs <= 256 and seconds >= 0, and refuses everything else."""
    db = str(tmp_path_factory.getbasetemp() / "h.db")
    valid = 1 <= procs <= 256 and seconds >= 0
    try:
        StressOptions(db_path=db, procs=procs, children=1, seconds=seconds)
    except ValueError:
        assert not valid
    else:
        assert valid


# ------------------------------------------------------------------------------- verifier


def _ack_file(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_verifier_finds_lost_writes_and_an_active_session(db_path: str, tmp_path: Path) -> None:
    """Acked events, checkpoints and heartbeats absent from the database are counted missing."""
    with SessionStore.open(db_path) as store:
        sid = store.create_session("s").id
        kept = store.log_event(sid, "kept").op_id
        ckpt = store.save_checkpoint(sid, "c", {}).id
        store.heartbeat(sid)
    acks = _ack_file(
        tmp_path / "w.acks",
        [f"S {sid}", f"E {kept}", "E lost-event", f"C {ckpt}", "C lost-ckpt", "H 9999999999.0"],
    )
    rec = read_acks(acks)
    found = verify_database(db_path, [rec])

    assert rec.acked == 6
    assert found.integrity == "ok"
    assert found.sessions[0].missing == 3  # two rows, and a heartbeat newer than the stored one
    assert found.sessions[0].status == "active"


def test_verifier_counts_a_session_it_cannot_find_as_all_missing(db_path: str) -> None:
    """A session acknowledged but absent loses every write recorded for it."""
    SessionStore.open(db_path).close()
    rec = read_acks("/nonexistent")  # an empty record ...
    rec.session_id, rec.events = "no-such-session", {"a", "b"}
    assert verify_database(db_path, [rec]).sessions[0].missing == 3


def test_torn_last_ack_line_is_ignored(tmp_path: Path) -> None:
    """A line cut short by a kill mid-write is not counted as acknowledged."""
    path = tmp_path / "w.acks"
    path.write_text("S sid\nE one\nE tw")
    rec = read_acks(str(path))
    assert rec.events == {"one"} and rec.acked == 2


def test_ack_counter_reads_only_what_is_new(tmp_path: Path) -> None:
    """The live counter counts ack lines as files grow, including a line completed later."""
    path = tmp_path / "w.acks"
    path.write_text("S s\nE a\nE b")
    counter = AckCounter([str(path)])
    assert counter.update() == 2
    with path.open("a") as f:
        f.write("\nK 123\nH 1.0\n")
    assert counter.update() == 4  # "E b" completed, K is not a write, H is


def test_stderr_scan_counts_tracebacks_and_busy_reports(tmp_path: Path) -> None:
    """Tracebacks and BUSY/locked lines in a worker's stderr are counted."""
    path = tmp_path / "w.stderr"
    path.write_text(
        "Traceback (most recent call last):\n  x\napsw.BusyError: database is locked\n"
        "write failed: BusyError: database is locked\nfine\n"
    )
    found = scan_stderr(str(path))
    assert (found.tracebacks, found.busy_lines) == (1, 2)
    assert found.tail[-1] == "fine" and found.hang_dump == []


def test_stderr_scan_keeps_a_hung_workers_stack_dump(tmp_path: Path) -> None:
    """The stacks faulthandler writes for a hung orchestrator are kept for the report."""
    path = tmp_path / "w.stderr"
    path.write_text(
        "Timeout (0:00:10.700000)!\nThread 0x1 (most recent call first):\n"
        '  File "_store.py", line 420 in txn\n\nThread 0x2 (most recent call first):\n'
    )
    found = scan_stderr(str(path))
    assert found.hang_dump[:2] == [
        "Thread 0x1 (most recent call first):",
        '  File "_store.py", line 420 in txn',
    ]
    assert found.tracebacks == 0


def test_survivor_is_killed_only_while_its_identity_holds() -> None:
    """A living tracked process is killed; a record whose start ticks differ is left alone."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        tracked = track(proc.pid, worker=0)
        assert tracked is not None
        stranger = type(tracked)(pid=proc.pid, start_ticks=tracked.start_ticks + 1, worker=0)

        orphans, left = end_survivors([stranger], settle_s=0.01)
        assert (orphans, left) == ([], [])
        assert proc.poll() is None  # a reused pid is never signalled

        orphans, left = end_survivors([tracked], settle_s=0.01)
        assert orphans == [tracked] and left == []
        assert proc.wait(timeout=5) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
