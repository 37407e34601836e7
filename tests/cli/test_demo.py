"""The demo, run as users run it: ``python -m sessionstore demo`` in a subprocess.

Both runs check that no demo process (worker or grandchild) outlives the demo: they are found by
the demo's database path, which every worker carries on its command line.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from test_main import CLI, LineReader, _env, run


def _leftovers(marker: str) -> list[int]:
    """PIDs of live processes whose command line mentions ``marker`` (the demo's db path)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(marker in a for a in cmdline):
            found.append(proc.pid)
    return found


@pytest.fixture
def demo_db(tmp_path: Path) -> Iterator[str]:
    """A path for the demo's database; fails the test if any demo process outlives it."""
    path = str(tmp_path / "demo" / "sessions.db")
    yield path
    assert _leftovers(path) == []


@pytest.mark.slow
def test_demo_runs_to_a_clean_finish(demo_db: str) -> None:
    """Demo --seconds 1: every worker ends (the stubborn one by SIGKILL), exit 0, nothing left.

    A 3 s grace, not the demo's 1 s: on a loaded 2-core machine the polite worker's exit on
    SIGTERM (it closes its store first) was seen to run past 1 s and be counted as killed.
    """
    r = run("--db", demo_db, "demo", "--seconds", "1", "--grace", "3", "--json")
    data = r.json()
    report = data["report"]
    roles = {int(pid): role for pid, role in data["roles"].items()}
    outcomes = {roles[c["pid"]]: c["outcome"] for c in report["children"] if c["pid"] in roles}
    assert outcomes == {"polite": "terminated", "stubborn": "killed", "parent": "terminated"}
    assert report["descendants"] or any(c["pid"] not in roles for c in report["children"])
    assert report["escalated_to_sigkill"] is True
    assert report["verified_no_orphans"] is True
    assert report["close_report"]["wal_bytes_after"] == 0
    assert data["session_status"] == "stopped"
    assert data["exit_code"] == 0
    assert data["resume_command"].endswith(f"resume {data['session_id']}")
    assert _leftovers(demo_db) == []
    shown = run("--db", demo_db, "show", data["session_id"], "--json").json()
    assert {c["state"] for c in shown["children"]} <= {"exited", "killed"}
    assert shown["last_checkpoint"]["name"] == "shutdown"


@pytest.mark.slow
def test_demo_ctrl_c_prints_the_report_and_dies_by_the_signal(demo_db: str) -> None:
    """SIGINT mid-demo: the report and resume command are printed, then exit by SIGINT (130)."""
    proc = subprocess.Popen(
        [*CLI, "--db", demo_db, "demo", "--seconds", "60", "--grace", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    lines = LineReader(proc)
    try:
        # The progress line starts once every worker is ready.
        while "workers running" not in lines.line(30):
            pass
        proc.send_signal(signal.SIGINT)
        rest, err_bytes = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out, err = (lines.pending + rest).decode(), err_bytes.decode()
    assert proc.returncode == -signal.SIGINT
    assert "Shutdown of session" in out and "(SIGINT)" in out
    assert "killed (SIGKILL)" in out
    assert "resume with" in out
    assert "Traceback" not in err
    session_id = out.split("Shutdown of session ", 1)[1].split()[0]
    assert run("--db", demo_db, "show", session_id, "--json").json()["session"]["status"] == (
        "paused"
    )
