"""Sessions named on the command line (id, prefix, name) and user data printed as data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sessionstore import SessionStore, __version__

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "sessionstore"]
NAME = "we[/]ird [bold]name"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def test_markup_like_names_are_printed_as_data_by_export_import_and_resume(
    tmp_path: Path,
) -> None:
    """A name and checkpoint name containing ``[/]`` go through export, new, import, resume."""
    db = str(tmp_path / "a.db")
    with SessionStore.open(db) as store:
        sid = store.create_session(NAME).id
        store.save_checkpoint(sid, "step [/] one", {"n": 1})
        store.pause_session(sid)
    export = tmp_path / "out dir.json"
    other = str(tmp_path / "b.db")
    steps = [
        _cli("--db", db, "export", NAME, "-o", str(export)),
        _cli("new", other),
        _cli("--db", other, "import", str(export)),
        _cli("--db", other, "resume", sid[:8]),
        _cli("--db", db, "show", NAME),
    ]
    assert [r.returncode for r in steps] == [0] * 5, [r.stderr for r in steps]
    assert NAME in steps[0].stdout and NAME in steps[2].stdout
    assert "'step [/] one'" in steps[3].stdout
    assert all(r.stderr == "" for r in steps)


def test_prefixes_and_names_resolve_and_ambiguity_is_refused(tmp_path: Path) -> None:
    """A unique prefix or a live name selects a session; an ambiguous one exits 2, listed."""
    db = str(tmp_path / "p.db")
    with SessionStore.open(db) as store:
        a = store.create_session("twin").id
        b = store.create_session("twin").id
        solo = store.create_session("solo").id
    by_name = _cli("--db", db, "--json", "show", "solo")
    ambiguous = _cli("--db", db, "show", "twin")
    common = len([c for c in zip(a, b, strict=True) if c[0] == c[1]])
    shared_prefix = _cli("--db", db, "show", a[: min(common, 4)])
    unknown = _cli("--db", db, "show", "nobody")
    assert json.loads(by_name.stdout)["session"]["id"] == solo
    assert ambiguous.returncode == 2 and a in ambiguous.stderr and b in ambiguous.stderr
    assert shared_prefix.returncode == 2
    assert unknown.returncode == 5


def test_version_and_out_of_range_durations(tmp_path: Path) -> None:
    """``--version`` prints it; ``--grace 1e308`` / ``--timeout inf`` are refused at once (2)."""
    version = _cli("--version")
    grace = _cli("--db", str(tmp_path / "x.db"), "run", "--grace", "1e308", "--", "true")
    timeout = _cli("--timeout", "inf", "status")
    demo = _cli("demo", "--grace", "1e308")
    assert version.returncode == 0 and version.stdout.strip() == f"sessionstore {__version__}"
    for r in (grace, timeout, demo):
        assert r.returncode == 2 and "at most" in r.stderr, r.stderr
    assert not (tmp_path / "x.db").exists()


def test_import_refuses_an_out_of_range_timestamp_and_writes_nothing(tmp_path: Path) -> None:
    """An export whose event time is 1e308 is refused (exit 2); the target file is unchanged."""
    db = str(tmp_path / "a.db")
    with SessionStore.open(db) as store:
        sid = store.create_session("t").id
        store.log_event(sid, "one")
    export = tmp_path / "e.json"
    assert _cli("--db", db, "export", sid, "-o", str(export)).returncode == 0
    doc = json.loads(export.read_text())
    doc["events"][0]["created_at"] = 1e308
    export.write_text(json.dumps(doc))
    target = str(tmp_path / "b.db")
    assert _cli("new", target).returncode == 0
    before = Path(target).read_bytes()
    r = _cli("--db", target, "import", str(export))
    sessions = _cli("--db", target, "sessions")
    assert r.returncode == 2 and "events[0].created_at" in r.stderr
    assert Path(target).read_bytes() == before
    assert sessions.returncode == 0


def test_import_reports_rows_whose_ids_collide_as_not_stored(tmp_path: Path) -> None:
    """A checkpoint id already used by another session is reported not stored (exit 1)."""
    db = str(tmp_path / "a.db")
    with SessionStore.open(db) as store:
        sid = store.create_session("orig").id
        store.save_checkpoint(sid, "plan", {"n": 1})
    export = tmp_path / "e.json"
    assert _cli("--db", db, "export", sid, "-o", str(export)).returncode == 0
    doc = json.loads(export.read_text())
    other = "00000000-0000-7000-8000-000000000001"
    doc["session"]["id"] = other
    for row in doc["checkpoints"]:
        row["session_id"] = other
    export.write_text(json.dumps(doc))
    r = _cli("--db", db, "--json", "import", str(export))
    assert r.returncode == 1, r.stderr
    summary = json.loads(r.stdout)
    assert summary["not_stored"] == 1 and summary["checkpoints"]["added"] == 0
    assert "not stored" in r.stderr and r.stderr.count("\n") == 1
