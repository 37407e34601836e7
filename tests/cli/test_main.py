"""The command line, run as users run it: ``python -m sessionstore ...`` in a subprocess.

Commands that do not depend on each other run in parallel (each start costs ~0.3 s of imports);
a failing command is checked for one line on stderr, its exit code, and an unchanged database
file (hashed before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import apsw
import pytest

from sessionstore import SessionStore, StoreConfig
from sessionstore.cli import main

CLI = [sys.executable, "-m", "sessionstore"]


def _rfc(keys: set[str]) -> set[str]:
    """``keys`` plus the RFC 3339 text printed beside each epoch time (``*_at``)."""
    return keys | {f"{k}_rfc3339" for k in keys if k.endswith("_at")}


# The JSON keys the README documents for each command: a contract, only ever extended.
STATUS_KEYS = {
    "db",
    "db_bytes",
    "wal_bytes",
    "journal_bytes",
    "rejected_bytes",
    "sessions",
    "stale_after_s",
    "stale",
    "last_checkpoint",
}
SESSION_KEYS = _rfc(
    {
        "id",
        "name",
        "objective",
        "status",
        "metadata",
        "key",
        "owner",
        "owner_host",
        "created_at",
        "updated_at",
        "paused_at",
        "resumed_at",
        "stopped_at",
        "heartbeat_at",
    }
)
CHILD_KEYS = _rfc(
    {
        "session_id",
        "pid",
        "start_ticks",
        "boot_id",
        "pgid",
        "argv",
        "registered_at",
        "exited_at",
        "exit_code",
        "state",
        "identity",
        "alive",
    }
)
EVENT_KEYS = _rfc({"id", "op_id", "session_id", "level", "message", "data", "created_at"})
DOCTOR_KEYS = {
    "db",
    "healthy",
    "integrity",
    "foreign_key_violations",
    "pragmas",
    "db_bytes",
    "wal_bytes",
    "journal_bytes",
    "rejected_bytes",
    "orphans",
    "dead_owner_sessions",
    "reap_dry_run",
    "problems",
    "warnings",
}


@dataclass
class Result:
    args: Sequence[str]
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.rc == 0, f"{self.args}: rc={self.rc} err={self.err!r}"
        return json.loads(self.out)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SESSIONSTORE_DB"}
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def run_many(
    commands: Sequence[Sequence[str]], *, cwd: str | Path | None = None, **env: str
) -> list[Result]:
    """Run CLI invocations in parallel and return their results, in order."""
    procs = [
        (
            cmd,
            subprocess.Popen(
                [*CLI, *cmd],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
                cwd=cwd,
                env=_env(**env),
            ),
        )
        for cmd in commands
    ]
    results = []
    for cmd, proc in procs:
        out, err = proc.communicate(timeout=60)
        results.append(Result(cmd, proc.returncode, out, err))
    return results


def run(*cmd: str, cwd: str | Path | None = None, **env: str) -> Result:
    """Run one CLI invocation."""
    return run_many([cmd], cwd=cwd, **env)[0]


def sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_one_line_failure(r: Result, code: int) -> None:
    assert r.rc == code, f"{r.args}: rc={r.rc} (wanted {code}) err={r.err!r}"
    lines = r.err.splitlines()
    assert len(lines) == 1, f"{r.args}: stderr is not one line: {r.err!r}"
    assert "Traceback" not in r.err
    if "--json" in r.args:
        err = json.loads(lines[0])  # under --json the one line is a JSON error object
        assert (err["event"], err["exit_code"]) == ("error", code), err
    else:
        assert lines[0].startswith("sessionstore"), lines[0]


@dataclass
class Fixture:
    path: Path
    alpha: str  # active, heartbeat, checkpoints, 25 events, one child row whose process is gone
    beta: str  # paused, with a checkpoint
    gamma: str  # completed


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    """A database with sessions in several states, built once and copied per test."""
    path = tmp_path_factory.mktemp("template") / "sessions.db"
    store = SessionStore.open(path)
    try:
        alpha = store.create_session("alpha", objective="build", metadata={"team": "a"}).id
        store.save_checkpoint(alpha, "plan", {"step": 1})
        store.save_checkpoint(alpha, "plan", {"step": 2})
        for i in range(25):
            store.log_event(alpha, f"event {i}", level="warning" if i % 5 == 0 else "info")
        store.heartbeat(alpha)
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, start_new_session=True)
        store.add_child(alpha, cat.pid)
        cat.communicate()  # the row stays "running"; its identity is now gone
        beta = store.create_session("beta").id
        store.save_checkpoint(beta, "resume-here", {"cursor": 42})
        store.pause_session(beta)
        gamma = store.create_session("gamma").id
        store.set_status(gamma, "completed")
    finally:
        store.close()
    return Fixture(path, alpha, beta, gamma)


@pytest.fixture
def db(template: Fixture, tmp_path: Path) -> Fixture:
    """A private copy of the template database."""
    path = tmp_path / "sessions.db"
    shutil.copy(template.path, path)
    return Fixture(path, template.alpha, template.beta, template.gamma)


def test_every_json_output_parses_and_keeps_its_keys(db: Fixture) -> None:
    """Each read command's --json is one JSON document with the documented keys."""
    d = str(db.path)
    status, sessions, show, events, children, doctor, export, paused = run_many(
        [
            ["--db", d, "status", "--json", "--stale-after", "0.001"],
            ["--db", d, "sessions", "--json"],
            ["--db", d, "show", db.alpha, "--json", "--events", "3"],
            ["--db", d, "events", db.alpha, "--json", "--after", "20", "--limit", "3"],
            ["--db", d, "children", "--json", "--all"],
            ["--db", d, "doctor", "--json"],
            ["--db", d, "export", db.alpha, "--json"],
            ["sessions", "--status", "paused", "--json", "--db", d],  # options after the command
        ]
    )
    s = status.json()
    assert set(s) == STATUS_KEYS
    assert s["sessions"] == {
        "total": 3,
        "active": 1,
        "paused": 1,
        "stopped": 0,
        "completed": 1,
        "crashed": 0,
    }
    assert [x["id"] for x in s["stale"]] == [db.alpha]
    assert set(s["stale"][0]) == _rfc(
        {"id", "name", "heartbeat_at", "age_s", "owner", "owner_host"}
    )
    assert set(s["stale"][0]["owner"]) == {"pid", "start_ticks", "boot_id"}  # as in `sessions`
    assert s["last_checkpoint"]["session_id"] == db.beta
    assert set(s["last_checkpoint"]) == _rfc({"id", "session_id", "name", "created_at"})

    ss = sessions.json()["sessions"]
    for x in ss:  # the RFC 3339 text is the epoch number's instant, in UTC
        stamp = datetime.fromisoformat(x["created_at_rfc3339"].replace("Z", "+00:00"))
        assert stamp.tzinfo is not None and stamp.utcoffset() == timedelta(0)
        assert abs(stamp.timestamp() - x["created_at"]) < 1e-5
        assert x["heartbeat_at"] is not None or x["heartbeat_at_rfc3339"] is None
    assert [x["name"] for x in ss] == ["alpha", "beta", "gamma"]
    owners = {x["id"]: x["owner"] for x in ss}  # status reads rows, sessions reads models:
    assert s["stale"][0]["owner"] == owners[db.alpha]  # one owner all the same
    assert all(set(x) == SESSION_KEYS for x in ss)
    assert [x["name"] for x in paused.json()["sessions"]] == ["beta"]

    sh = show.json()
    assert set(sh) == {"session", "children", "last_checkpoint", "events"}
    assert sh["last_checkpoint"]["data"] == {"step": 2}
    assert [e["message"] for e in sh["events"]] == ["event 22", "event 23", "event 24"]
    assert set(sh["children"][0]) == CHILD_KEYS

    ev = events.json()
    assert set(ev) == {"session_id", "events", "last_id"}
    assert [e["id"] for e in ev["events"]] == [21, 22, 23]
    assert ev["last_id"] == 23
    assert all(set(e) == EVENT_KEYS for e in ev["events"])

    ch = children.json()["children"]
    assert len(ch) == 1
    assert ch[0]["alive"] is False
    assert ch[0]["identity"] == "gone"

    doc = doctor.json()
    assert set(doc) == DOCTOR_KEYS
    assert doc["healthy"] is True
    assert doc["integrity"] == ["ok"]
    assert doc["pragmas"]["journal_mode"] == "wal"

    ex = export.json()
    assert {"format", "version", "session", "checkpoints", "events", "children"} <= set(ex)
    assert (len(ex["checkpoints"]), len(ex["events"]), len(ex["children"])) == (2, 25, 1)


def test_human_outputs_are_readable(db: Fixture) -> None:
    """Without --json each read command prints a readable report and exits 0."""
    d = str(db.path)
    results = run_many(
        [
            ["--db", d, "status"],
            ["--db", d, "sessions"],
            ["--db", d, "show", db.alpha],
            ["--db", d, "events", db.alpha, "--limit", "2"],
            ["--db", d, "children", "--all"],
            ["--db", d, "doctor"],
        ]
    )
    assert all(r.rc == 0 and r.err == "" for r in results), [(r.args, r.err) for r in results]
    status, sessions, show, events, children, doctor = (r.out for r in results)
    assert "3 total: 1 active, 1 paused" in status
    assert "alpha" in sessions and "completed" in sessions
    assert "'plan'" in show and "event 24" in show
    assert "event 0" in events and "event 2" not in events
    assert "gone" in children
    assert "healthy" in doctor


def test_write_commands(db: Fixture) -> None:
    """resume, checkpoint and replay change what they say, and report it."""
    d = str(db.path)
    store = SessionStore.open(db.path)
    store.close()
    store.log_event(db.alpha, "written after close")  # journaled beside the database
    assert Path(f"{db.path}-ops.jsonl").stat().st_size > 0

    resumed = run("--db", d, "resume", db.beta, "--json").json()
    assert resumed["session"]["status"] == "active"
    assert resumed["previous_status"] == "paused"
    assert resumed["last_checkpoint"]["data"] == {"cursor": 42}
    assert resumed["replayed"] == 1  # resume applies the journal after itself

    human, replay = run_many(
        [
            ["--db", d, "resume", db.beta],
            ["--db", d, "replay", "--json"],
        ]
    )
    # Alone: a TRUNCATE checkpoint waits only 50 ms for readers (it stalls every writer while
    # it waits) and reports busy past that, which a concurrent resume's reads once caused.
    checkpoint = run("--db", d, "checkpoint", "--json")
    assert "is active" in human.out and '"cursor": 42' in human.out
    cp = checkpoint.json()["checkpoint"]
    assert cp["mode"] == "TRUNCATE"
    assert {"ok", "wal_bytes_before", "wal_bytes_after", "duration_s"} <= set(cp)
    rp = replay.json()
    assert set(rp) == {"replay", "journal_bytes_before", "journal_bytes_after"}
    assert rp["journal_bytes_after"] == 0
    events = run("--db", d, "events", db.alpha, "--json", "--after", "25").json()["events"]
    assert [e["message"] for e in events] == ["written after close"]


def test_export_import_round_trip_is_idempotent(db: Fixture, tmp_path: Path) -> None:
    """Import recreates an exported session exactly; importing it again changes nothing."""
    target = tmp_path / "target.db"
    SessionStore.open(target).close()
    doc_path = tmp_path / "alpha.json"
    exported = run("--db", str(db.path), "export", db.alpha, "-o", str(doc_path), "--json")
    assert exported.json() == {
        "path": str(doc_path),
        "session_id": db.alpha,
        "checkpoints": 2,
        "events": 25,
        "children": 1,
    }
    first = run("--db", str(target), "import", str(doc_path), "--json").json()
    assert first["created"] is True
    assert first["events"] == {"in_file": 25, "added": 25}
    assert first["checkpoints"] == {"in_file": 2, "added": 2}
    assert first["rejected"] == 0
    before = sha(target)
    second, again = run_many(
        [
            ["--db", str(target), "import", str(doc_path), "--json"],
            ["--db", str(target), "export", db.alpha],
        ]
    )
    assert second.json()["ops"] == 0
    assert sha(target) == before

    def comparable(doc: dict[str, Any]) -> dict[str, Any]:
        doc = dict(doc)
        doc.pop("exported_at")
        doc["events"] = [{k: v for k, v in e.items() if k != "id"} for e in doc["events"]]
        return doc

    original = json.loads(doc_path.read_text())
    assert comparable(again.json()) == comparable(original)


def test_bad_input_is_one_line_and_leaves_the_db_unchanged(db: Fixture, tmp_path: Path) -> None:
    """Unknown ids, refused changes and bad arguments: one stderr line, an exit code, no change."""
    d = str(db.path)
    not_json = tmp_path / "bad.json"
    not_json.write_text("{not json")
    wrong_doc = tmp_path / "wrong.json"
    wrong_doc.write_text(json.dumps({"format": "something else"}))
    cases: list[tuple[list[str], int]] = [
        (["--db", d, "show", "no-such-session"], 5),
        (["--db", d, "events", "no-such-session"], 5),
        (["--db", d, "resume", "no-such-session"], 5),
        (["--db", d, "export", "no-such-session"], 5),
        (["--db", d, "children", "--session", "no-such-session"], 5),
        (["--db", d, "resume", db.gamma], 1),  # completed sessions cannot be resumed
        (["--db", d, "import", str(not_json)], 2),
        (["--db", d, "import", str(wrong_doc)], 2),
        (["--db", d, "import", str(tmp_path / "missing.json")], 2),
        (["--db", d, "status", "--bogus"], 2),
    ]
    before = sha(db.path)
    results = run_many([c for c, _ in cases])
    for r, (_, code) in zip(results, cases, strict=True):
        assert_one_line_failure(r, code)
        assert r.out == ""
    assert sha(db.path) == before
    assert not Path(f"{db.path}-ops.jsonl").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--stale-after", "-1"],
        ["events", "some-id", "--limit", "0"],
        ["no-such-command"],
        ["show"],
        ["--timeout", "soon", "status"],
        ["sessions", "--status", "sleeping"],
        ["demo", "--seconds", "nan"],
        [],
    ],
)
def test_bad_arguments_are_one_line_with_exit_2(
    argv: list[str], db: Fixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad arguments are one line on stderr, exit 2, before any database is touched."""
    before = sha(db.path)
    assert main(["--db", str(db.path), *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("sessionstore: error: ")
    assert sha(db.path) == before


def test_unusable_databases_are_refused_untouched(tmp_path: Path) -> None:
    """Missing, empty, non-SQLite and foreign SQLite files: exit 3, nothing created or changed."""
    missing = tmp_path / "nope" / "sessions.db"
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    text = tmp_path / "text.db"
    text.write_text("hello, I am not a database\n" * 100)
    foreign = tmp_path / "foreign.db"
    conn = apsw.Connection(str(foreign))
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    hashes = {p: sha(p) for p in (empty, text, foreign)}
    results = run_many(
        [
            ["--db", str(missing), "status"],
            ["--db", str(empty), "sessions"],
            ["--db", str(text), "doctor"],
            ["--db", str(foreign), "status", "--json"],
            ["--db", str(tmp_path), "status"],  # a directory
        ]
    )
    for r in results:
        assert_one_line_failure(r, 3)
    assert "no database at" in results[0].err
    assert "not a sessionstore one" in results[3].err
    assert not missing.parent.exists()
    assert {p: sha(p) for p in hashes} == hashes


def test_default_path_and_environment(db: Fixture, tmp_path: Path) -> None:
    """--db beats $SESSIONSTORE_DB, which beats ./.sessionstore/sessions.db; none is created."""
    default = tmp_path / ".sessionstore" / "sessions.db"
    from_env, flag_wins, no_default = (
        run("sessions", "--json", SESSIONSTORE_DB=str(db.path), cwd=tmp_path),
        run("--db", str(db.path), "status", SESSIONSTORE_DB=str(tmp_path / "x.db")),
        run("status", cwd=tmp_path),
    )
    assert len(from_env.json()["sessions"]) == 3
    assert flag_wins.rc == 0
    assert_one_line_failure(no_default, 3)
    assert ".sessionstore/sessions.db" in no_default.err
    assert not default.parent.exists()


def test_locked_database_fails_within_the_timeout(db: Fixture) -> None:
    """A database locked by another process: exit 4 after --timeout, file unchanged."""
    before = sha(db.path)
    holder = apsw.Connection(str(db.path))
    try:
        holder.pragma("locking_mode", "EXCLUSIVE")
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("SELECT count(*) FROM sessions").fetchall()
        status, resume = run_many(
            [
                ["--db", str(db.path), "--timeout", "0.2", "status"],
                ["--db", str(db.path), "--timeout", "0.2", "resume", db.beta],
            ]
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    for r in (status, resume):
        assert_one_line_failure(r, 4)
        assert "locked" in r.err
    assert sha(db.path) == before


class LineReader:
    """Lines of a process's stdout, read from the raw pipe.

    select() on the pipe is only consulted when no complete line is buffered here, so a line
    that arrived together with an earlier one is never waited for.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.pending = b""

    def line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, "no output in time"
            chunk = os.read(self.fd, 65536)
            assert chunk, "output ended"
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode()


# The console script the README's install puts beside the interpreter (``sessionstore.cli:entry``).
CONSOLE_SCRIPT = [os.path.join(os.path.dirname(sys.executable), "sessionstore")]


@pytest.mark.parametrize("command", [CLI, CONSOLE_SCRIPT], ids=["python-m", "console-script"])
def test_events_follow_prints_new_events(db: Fixture, command: list[str]) -> None:
    """Events --follow prints the backlog, then events written later, as JSON lines.

    Ctrl+C ends it by SIGINT with no traceback, through either entry point.
    """
    proc = subprocess.Popen(
        [
            *command,
            *("--db", str(db.path), "events", db.alpha, "--after", "24", "--follow", "--json"),
            *("--interval", "0.05", "--follow-timeout", "20"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    lines = LineReader(proc)
    try:
        assert json.loads(lines.line(20))["message"] == "event 24"
        with SessionStore.open(db.path, config=StoreConfig(checkpointing=False)) as store:
            store.log_event(db.alpha, "late news", data={"n": 1})
        late = json.loads(lines.line(20))
        assert (late["message"], late["data"]) == ("late news", {"n": 1})
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGINT  # ends by the signal: a shell sees 130
    assert b"Traceback" not in err
    bounded = run("--db", str(db.path), "events", db.alpha, "--follow", "--follow-timeout", "0.2")
    assert bounded.rc == 0
    assert "event 24" in bounded.out


def test_children_alive_doctor_and_reap_find_orphans(db: Fixture) -> None:
    """A live child of a dead owner: children --alive lists it, doctor fails, reap ends it."""
    d = str(db.path)
    owner = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from sessionstore import SessionStore as S; "
            "s = S.open(sys.argv[1]); print(s.create_session('orphaned').id); s.close()",
            d,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    orphaned = owner.stdout.strip()
    # Its own session and group: the reaper must never have a reason to signal ours.
    cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, start_new_session=True)
    try:
        with SessionStore.open(db.path, config=StoreConfig(checkpointing=False)) as store:
            store.add_child(orphaned, cat.pid)
        alive, doctor, dry = run_many(
            [
                ["--db", d, "children", "--alive", "--json"],
                ["--db", d, "doctor", "--json"],
                ["--db", d, "reap", "--dry-run", "--json"],
            ]
        )
        assert [c["pid"] for c in alive.json()["children"]] == [cat.pid]
        assert doctor.rc == 1
        assert len(doctor.err.splitlines()) == 1 and "orphaned" in doctor.err
        report = json.loads(doctor.out)
        assert (report["healthy"], report["orphans"]) == (False, 1)
        actions = [c["action"] for s in dry.json()["report"]["sessions"] for c in s["children"]]
        assert actions == ["would_terminate"]
        assert cat.poll() is None  # a dry run signals nothing

        reaped = run("--db", d, "reap", "--json").json()
        assert reaped["dry_run"] is False
        assert cat.wait(timeout=10) == -signal.SIGTERM
    finally:
        if cat.poll() is None:
            cat.kill()
            cat.wait()
    after = run("--db", d, "show", orphaned, "--json").json()
    assert after["session"]["status"] == "crashed"
    assert after["children"][0]["state"] != "running"


def test_stress_is_delegated(tmp_path: Path) -> None:
    """Stress hands its arguments to sessionstore.stress; bad ones get its one-line error."""
    help_text, bad = run_many([["stress", "--help"], ["stress", "--procs", "0"]], cwd=tmp_path)
    assert help_text.rc == 0 and "--procs" in help_text.out
    assert bad.rc != 0 and len(bad.err.splitlines()) == 1 and "Traceback" not in bad.err


README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_examples_run_and_document_the_json_keys(tmp_path: Path) -> None:
    """The README's Python examples run as written, and its JSON key table matches the output."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 2
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", block],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for block in blocks
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    documented = {
        m.group(1): {k.strip().strip("`") for k in m.group(2).split("(")[0].split(",")}
        for m in re.finditer(r"^\| `(\w+)` \| (`\w+`.*?) \|$", text, flags=re.MULTILINE)
    }
    assert documented["status"] == STATUS_KEYS
    assert documented["doctor"] == DOCTOR_KEYS
    assert documented["show"] == {"session", "children", "last_checkpoint", "events"}
    assert documented["events"] == {"session_id", "events", "last_id"}
    assert documented["replay"] == {"replay", "journal_bytes_before", "journal_bytes_after"}
    assert documented["resume"] == {"session", "previous_status", "last_checkpoint", "replayed"}


def test_stress_reports_bad_numbers_first_and_never_uses_the_embedded_db(tmp_path: Path) -> None:
    """`stress --procs 0` in an empty folder: the bad number is the error, nothing is created."""
    proc = subprocess.run(
        [sys.executable, "-m", "sessionstore", "stress", "--procs", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "SESSIONSTORE_DB"},
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--procs" in proc.stderr
    assert not (tmp_path / ".sessionstore" / "sessions.db").exists()


def test_events_latest_n_and_follow_starts_near_the_end(db: Fixture) -> None:
    """``-n 3`` prints the last three; ``--follow`` without --after starts at the last ten."""
    d = str(db.path)
    latest, none, follow = run_many(
        [
            ["--db", d, "events", db.alpha, "-n", "3", "--json"],
            ["--db", d, "events", db.alpha, "-n", "0", "--json"],
            ["--db", d, "events", db.alpha, "--follow", "--json", "--follow-timeout", "0.2"],
        ]
    )
    assert [e["message"] for e in latest.json()["events"]] == ["event 22", "event 23", "event 24"]
    assert none.json()["events"] == []
    lines = [json.loads(line)["message"] for line in follow.out.splitlines()]
    assert lines == [f"event {i}" for i in range(15, 25)]


def test_sessions_filters_by_name_since_and_limit(db: Fixture) -> None:
    """``--name``, ``--since`` (relative or ISO) and ``--limit`` narrow the list; bad times: 2."""
    d = str(db.path)
    by_name, recent, future, newest, bad = run_many(
        [
            ["--db", d, "sessions", "--name", "beta", "--json"],
            ["--db", d, "sessions", "--since", "1h", "--json"],
            ["--db", d, "sessions", "--since", "9999-01-01T00:00Z", "--json"],
            ["--db", d, "sessions", "--limit", "2", "--json"],
            ["--db", d, "sessions", "--since", "yesterday"],
        ]
    )
    assert [s["id"] for s in by_name.json()["sessions"]] == [db.beta]
    assert len(recent.json()["sessions"]) == 3
    assert future.json()["sessions"] == []
    assert [s["id"] for s in newest.json()["sessions"]] == [db.beta, db.gamma]
    assert_one_line_failure(bad, 2)


def test_errors_under_json_are_one_json_object_with_the_exit_code(
    db: Fixture, tmp_path: Path
) -> None:
    """Every failure kind under --json: stdout empty, stderr one JSON error object, no text."""
    d = str(db.path)
    cases = [
        (["--db", d, "show", "no-such-session", "--json"], 5, "not_found"),
        (["--db", d, "show", "--json"], 2, "usage"),
        (["--json", "--db", d, "events", db.alpha, "--timeout", "1e308"], 2, "usage"),
        (["--db", str(tmp_path / "missing.db"), "status", "--json"], 3, "no_database"),
        (["--db", d, "import", str(tmp_path / "nothing.json"), "--json"], 2, "usage"),
        (["--db", d, "--json", "resume", db.gamma], 1, "failed"),
    ]
    results = run_many([c for c, _, _ in cases])
    for (cmd, code, kind), r in zip(cases, results, strict=True):
        assert r.rc == code, (cmd, r.rc, r.err)
        assert r.out == "", (cmd, r.out)
        lines = r.err.splitlines()
        assert len(lines) == 1, (cmd, r.err)
        err = json.loads(lines[0])
        assert err["event"] == "error" and err["exit_code"] == code, (cmd, err)
        assert err["error"] == kind and err["message"] and err["type"], (cmd, err)


def test_events_since_until_and_level(db: Fixture) -> None:
    """``--since/--until`` select by the event's time, ``--level`` keeps it and more severe."""
    d = str(db.path)
    later = "2999-01-01T00:00:00Z"
    since_now, until_past, until_later, warnings, last_warning = run_many(
        [
            ["--db", d, "events", db.alpha, "--since", "1h", "--json"],
            ["--db", d, "events", db.alpha, "--until", "2000-01-01T00:00Z", "--json"],
            ["--db", d, "events", db.alpha, "--until", later, "--limit", "3", "--json"],
            ["--db", d, "events", db.alpha, "--level", "warning", "--json"],
            ["--db", d, "events", db.alpha, "--level", "warning", "-n", "1", "--json"],
        ]
    )
    assert len(since_now.json()["events"]) == 25
    assert until_past.json()["events"] == []
    assert [e["message"] for e in until_later.json()["events"]] == [f"event {i}" for i in range(3)]
    assert [e["message"] for e in warnings.json()["events"]] == [
        f"event {i}" for i in range(0, 25, 5)
    ]
    assert [e["message"] for e in last_warning.json()["events"]] == ["event 20"]


def test_resume_clears_a_dead_owner_so_reap_does_not_flag_the_session(db: Fixture) -> None:
    """A session left by a dead orchestrator, resumed from the CLI: no owner, not an orphan."""
    d = str(db.path)
    owner = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from sessionstore import SessionStore as S; "
            "s = S.open(sys.argv[1]); i = s.create_session('left').id; s.pause_session(i); "
            "print(i); s.close()",
            d,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    left = owner.stdout.strip()
    resumed = run("--db", d, "resume", left, "--json").json()
    assert resumed["session"]["status"] == "active"
    assert resumed["session"]["owner"] is None
    dry = run("--db", d, "reap", "--dry-run", "--json").json()
    assert left not in [s["session_id"] for s in dry["report"]["sessions"]]


# ``python -m sessionstore ARGS``, then the names of the modules loaded, written at exit.
_LOADED = """
import atexit, json, runpy, sys
out, sys.argv = sys.argv[1], ["sessionstore", *sys.argv[2:]]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
runpy.run_module("sessionstore", run_name="__main__", alter_sys=True)
"""


def _top_modules_loaded(out: Path, args: list[str]) -> set[str]:
    """The top-level packages ``python -m sessionstore ARGS`` had imported when it exited."""
    subprocess.run(
        [sys.executable, "-c", _LOADED, str(out), *args],
        check=True,
        capture_output=True,
        timeout=60,
        env=_env(),
    )
    return {m.split(".")[0] for m in json.loads(out.read_text())}


def test_json_and_hook_commands_do_not_load_rich(db: Fixture, tmp_path: Path) -> None:
    """``status --json`` and the hooks (log, heartbeat) run without importing rich or psutil."""
    path = str(db.path)
    commands = {
        "status-json": ["--db", path, "status", "--json"],
        "log": ["--db", path, "log", db.alpha, "started", "--data", '{"n": 1}'],
        "heartbeat": ["--db", path, "heartbeat", db.alpha, "--json"],
        "status": ["--db", path, "status"],  # the probe's control: a table does load rich
    }
    loaded = {}
    for name, args in commands.items():
        loaded[name] = _top_modules_loaded(tmp_path / f"{name}.json", args)
    assert "rich" in loaded["status"]
    for name in ("status-json", "log", "heartbeat"):
        assert loaded[name] & {"rich", "psutil"} == set(), name
        assert "apsw" in loaded[name], name  # the probe saw the database read
    for name in ("log", "heartbeat"):
        assert "pydantic" in loaded[name], name  # the probe saw the store at work


def test_status_never_loads_pydantic(db: Fixture, tmp_path: Path) -> None:
    """``status`` reads plain rows through a peek: no pydantic, no model, no retry library.

    Three quarters of a store-based ``status``'s start-up was pydantic and the model classes
    (benchmarks/README.md); shell hooks run it at exit storms.
    """
    path = str(db.path)
    stale = ["--stale-after", "0.001"]  # the stale sessions' rows are read and shown too
    for args in (["--db", path, "status", *stale], ["--db", path, "status", "--json", *stale]):
        loaded = _top_modules_loaded(tmp_path / "loaded.json", args)
        assert "apsw" in loaded, args
        assert loaded & {"pydantic", "pydantic_core", "tenacity", "psutil"} == set(), args


def test_help_and_version_do_not_load_the_store(tmp_path: Path) -> None:
    """``--help`` and ``--version`` build the parser without pydantic, apsw or rich."""
    for args in (["--help"], ["--version"], ["log", "--help"]):
        loaded = _top_modules_loaded(tmp_path / "loaded.json", args)
        assert "sessionstore" in loaded
        assert loaded & {"pydantic", "apsw", "rich", "psutil", "tenacity"} == set(), args
