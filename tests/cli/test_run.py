"""``sessionstore run``: real trees (shell, make -j, node, servers, agents) end with no orphan.

Each test runs the real CLI in a subprocess, counts the tree in the whole process table before
(by an environment marker every descendant inherits), ends it the way it ends in production
(the command exiting, SIGTERM from systemd/docker/``timeout``, Ctrl+C) and checks the process
table, the wrapper's exit status and the database afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _trees import CLI, kill_leftovers, marked, new_mark, settled, start

from sessionstore import SessionStatus, SessionStore

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_tree_left() -> Iterator[None]:
    """Kill what a failed test left of its trees (orphans escape the per-test child check)."""
    yield
    assert kill_leftovers() == []


# Three workers: two backgrounded, one double-forked into its own session (escapes the group).
SHELL_TREE = """\
sh -c 'echo ready; exec sleep 1000' &
sh -c 'echo ready; exec sleep 1000' &
( setsid sh -c 'echo ready; exec sleep 1000' & )
{tail}
"""

NODE_TREE = """\
const {spawn} = require('child_process');
const worker = 'console.log("ready"); setInterval(() => {}, 1000)';
for (let i = 0; i < 2; i++) {
  spawn(process.execPath, ['-e', worker], {stdio: ['ignore', 'inherit', 'inherit']});
}
// A detached grandchild: its own session, unref'd, as daemons are started.
spawn(process.execPath, ['-e', worker], {stdio: ['ignore', 'inherit', 'inherit'],
      detached: true}).unref();
setInterval(() => {}, 1000);
"""

# A prefork server: the parent forwards SIGTERM to its workers and exits; one worker is stuck
# (ignores SIGTERM) so the layer must escalate to SIGKILL after the grace.
SERVER = """\
import os, signal, socket, sys
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen()
workers = []
for i in range(3):
    pid = os.fork()
    if pid == 0:
        if i == 2:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.write(1, b"ready\\n")  # one write: forked siblings must not interleave
        while True:
            conn, _ = sock.accept()
            conn.close()
    workers.append(pid)

def stop(signum, frame):
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
while True:
    signal.pause()
"""


def _db(tmp_path: Path) -> str:
    return str(tmp_path / "run.db")


def _session(db: str) -> tuple[str, SessionStatus, list[str], int]:
    """(name, status, event messages, running child rows) of the only session."""
    with SessionStore.open(db) as store:
        (session,) = store.list_sessions()
        events = [e.message for e in store.events(session.id)]
        running = len(store.children(session.id))
        return session.name, session.status, events, running


def test_shell_script_exiting_on_its_own_takes_its_workers_with_it(tmp_path: Path) -> None:
    """The command exits 3, leaving background and setsid workers: all end, wrapper exits 3."""
    script = tmp_path / "tree.sh"
    script.write_text(SHELL_TREE.format(tail="read line; exit 3"))
    db = _db(tmp_path)
    mark = new_mark()
    proc = subprocess.Popen(
        [*CLI, "--db", db, "run", "--grace", "2", "--", "sh", str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TREE_MARK": mark},
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert [proc.stdout.readline().strip() for _ in range(3)] == ["ready"] * 3
    # The script and its three workers, all seen (a scan alone can miss one inside its exec).
    settled(mark, exclude=[proc.pid], at_least=4, deadline=time.monotonic() + 30)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert marked(mark, exclude=[proc.pid]) == []
    name, status, events, running = _session(db)
    assert name == "sh"
    assert status is SessionStatus.STOPPED
    assert events[0] == "run: command started" and "run: command exited" in events
    assert running == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_wrapper_ends_the_whole_shell_tree(tmp_path: Path, sig: int) -> None:
    """SIGTERM (systemd, docker, timeout) or SIGINT ends every process; the wrapper dies by it."""
    script = tmp_path / "tree.sh"
    script.write_text(SHELL_TREE.format(tail="wait"))
    db = _db(tmp_path)
    tree = start(db, ["sh", str(script)], ready=3, run_args=["--name", "web", "--grace", "2"])
    assert len(tree.before) >= 4
    tree.wrapper.send_signal(sig)
    code, err = tree.finish()
    assert code == -sig, err
    assert tree.left() == []
    name, status, events, running = _session(db)
    assert (name, status, running) == ("web", SessionStatus.PAUSED, 0)
    assert "run: command exited" in events


def test_make_j_tree_ends_on_sigterm(tmp_path: Path) -> None:
    """``make -j3`` with three long recipes: SIGTERM to the wrapper leaves nothing running."""
    (tmp_path / "Makefile").write_text(
        "all: a b c\n" + "".join(f"{t}:\n\t@sh -c 'echo ready; exec sleep 1000'\n" for t in "abc")
    )
    db = _db(tmp_path)
    tree = start(db, ["make", "-j3"], ready=3, cwd=str(tmp_path), run_args=["--grace", "2"])
    assert len(tree.before) >= 4
    tree.wrapper.send_signal(signal.SIGTERM)
    code, err = tree.finish()
    assert code == -signal.SIGTERM, err
    assert tree.left() == []


def test_node_tree_with_a_detached_grandchild_ends_on_ctrl_c(tmp_path: Path) -> None:
    """A node process, two workers and a detached (setsid) one: Ctrl+C ends all four."""
    script = tmp_path / "tree.js"
    script.write_text(NODE_TREE)
    db = _db(tmp_path)
    tree = start(db, ["node", str(script)], ready=3, run_args=["--grace", "2"])
    assert len(tree.before) == 4
    tree.wrapper.send_signal(signal.SIGINT)
    code, err = tree.finish()
    assert code == -signal.SIGINT, err
    assert tree.left() == []
    _, status, _, running = _session(db)
    assert (status, running) == (SessionStatus.PAUSED, 0)


def test_prefork_server_with_a_stuck_worker_is_killed_after_the_grace(tmp_path: Path) -> None:
    """A Python server whose one worker ignores SIGTERM: SIGKILL after --grace, nothing left."""
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    db = _db(tmp_path)
    tree = start(db, [sys.executable, str(script)], ready=3, run_args=["--grace", "1"])
    assert len(tree.before) == 4
    tree.wrapper.send_signal(signal.SIGTERM)
    code, err = tree.finish()
    assert code == -signal.SIGTERM, err
    assert tree.left() == []


# An ASGI app for uvicorn: each worker process says it is ready when it imports the app.
ASGI_APP = """\
import os
os.write(1, b"ready\\n")

async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
"""


def test_uvicorn_with_worker_processes_ends_on_sigterm(tmp_path: Path) -> None:
    """A real web server from the package index (uvicorn, 2 worker processes): SIGTERM ends all."""
    (tmp_path / "asgi_app.py").write_text(ASGI_APP)
    db = _db(tmp_path)
    server = [sys.executable, "-m", "uvicorn", "asgi_app:app", "--workers", "2"]
    server += ["--host", "127.0.0.1", "--port", "0", "--log-level", "warning"]
    tree = start(db, server, ready=2, cwd=str(tmp_path), run_args=["--grace", "5"])
    assert len(tree.before) >= 3  # the supervisor and its two workers, at least
    tree.wrapper.send_signal(signal.SIGTERM)
    code, err = tree.finish()
    assert code == -signal.SIGTERM, err
    assert tree.left() == []
    _, status, _, running = _session(db)
    assert (status, running) == (SessionStatus.PAUSED, 0)


def test_a_self_daemonising_agent_ends_with_the_tree(tmp_path: Path) -> None:
    """ssh-agent (Debian's openssh-client) forks into its own session and its parent exits.

    The daemon is re-parented to the wrapper (a subreaper) and carries the tree's marker; a
    SIGTERM to the wrapper must end it with the rest.
    """
    db = _db(tmp_path)
    script = 'eval "$(ssh-agent -s)" >/dev/null; echo ready; exec sleep 1000'
    tree = start(db, ["sh", "-c", script], ready=1, run_args=["--grace", "2"])
    agents = [p for p in tree.before if p.name() == "ssh-agent"]
    assert len(agents) == 1 and agents[0].ppid() == tree.wrapper.pid  # adopted: parent exited
    assert os.getsid(agents[0].pid) == agents[0].pid  # and it leads its own session
    tree.wrapper.send_signal(signal.SIGTERM)
    code, err = tree.finish()
    assert code == -signal.SIGTERM, err
    assert tree.left() == []


def test_exit_status_passes_through(tmp_path: Path) -> None:
    """0-255 as is; killed by a signal: the wrapper dies by it; not found: 127."""
    db = _db(tmp_path)
    statuses = []
    for command in (["sh", "-c", "exit 0"], ["sh", "-c", "exit 42"], ["sh", "-c", "kill -9 $$"]):
        statuses.append(subprocess.run([*CLI, "--db", db, "run", "-q", "--", *command]).returncode)
    missing = subprocess.run(
        [*CLI, "--db", db, "run", "-q", "--", "no-such-command-here"], capture_output=True
    )
    assert statuses == [0, 42, -9]
    assert missing.returncode == 127


def test_run_without_a_command_is_a_usage_error(tmp_path: Path) -> None:
    """``run`` with nothing after ``--`` starts nothing and exits 2 with one line."""
    r = subprocess.run([*CLI, "--db", _db(tmp_path), "run", "--"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "no command" in r.stderr


def test_the_wrapper_heartbeats_while_the_command_runs(tmp_path: Path) -> None:
    """A command living 0.5 s under ``--heartbeat 0.1`` leaves a heartbeat after the start."""
    db = _db(tmp_path)
    command = [sys.executable, "-c", "import time; time.sleep(0.5)"]
    r = subprocess.run([*CLI, "--db", db, "run", "-q", "--heartbeat", "0.1", "--", *command])
    assert r.returncode == 0
    with SessionStore.open(db) as store:
        (session,) = store.list_sessions()
    assert session.heartbeat_at is not None and session.heartbeat_at > session.created_at


# ``python -m sessionstore`` with an audit hook that writes one byte to fd ``SIGNAL_FD`` when
# the module ``SIGNAL_AT`` starts to import: the test signals the wrapper at that moment. The
# hook goes in before runpy loads the package (the rest is what ``-m`` does), so every landing
# point it can name is this package's code, never CPython's own start-up, where Ctrl+C makes
# the interpreter itself fail ("Could not import runpy module", exit 1), which no program can
# change.
_AT_IMPORT = (
    "import os, runpy, sys\n"
    "fd, at = int(os.environ['SIGNAL_FD']), os.environ['SIGNAL_AT']\n"
    "def hook(event, args):\n"
    "    global fd\n"
    "    if event == 'import' and args[0] == at and fd >= 0:\n"
    "        os.write(fd, b'i')\n"
    "        os.close(fd)\n"
    "        fd = -1\n"
    "sys.addaudithook(hook)\n"
    "sys.argv[0] = 'sessionstore'\n"
    "runpy.run_module('sessionstore', run_name='__main__', alter_sys=True)\n"
)
_AT = {
    "import": "sessionstore",  # the first line of this package that runs
    "parser": "sessionstore.cli._main",  # the command line's modules loading
    # main() running, loading the command's module: ``run`` imports the process layer. (Not
    # ``cli._run`` itself: a module loaded by ``importlib.import_module`` raises no audit event.)
    "command": "sessionstore.process",
}


def _signal_round(db: str, mark: str, sig: int, when: str) -> tuple[int, str]:
    """One wrapper signalled at a moment of its start-up; its exit status and stderr.

    The moment: as a module starts to import (``_AT``), or as its first stderr byte arrives
    (``started``, written right after the spawn and its rows: the busiest moment).
    """
    read_fd, write_fd = os.pipe()
    args = ["--db", db, "run", "--grace", "1", "--", "sh", "-c", "sleep 1000 & sleep 1000"]
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _AT_IMPORT, *args] if when in _AT else [*CLI, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={
                **os.environ,
                "TREE_MARK": mark,
                "SIGNAL_FD": str(write_fd),
                "SIGNAL_AT": _AT.get(when, ""),
            },
            pass_fds=(write_fd,),
        )
    finally:
        os.close(write_fd)
    assert proc.stderr is not None
    with os.fdopen(read_fd, "rb") as signalled:
        if when in _AT:
            assert signalled.read(1) == b"i", f"the wrapper never imported {_AT[when]}"
        else:
            proc.stderr.read(1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err.decode(errors="replace")


def test_a_signal_at_any_moment_of_start_up_leaves_no_orphan_and_no_active_session(
    tmp_path: Path,
) -> None:
    """24 rounds of SIGTERM/SIGINT at start-up: the wrapper dies by it and leaves nothing.

    The signal lands as the package, the parser or the command start to load, or right after
    the spawn.

    Ctrl+C used to be caught by ``main()`` and end the process with exit status 130 (not by the
    signal) when it landed between the parser and the layer's handlers: a window of 100-300 ms,
    found at 22 of 60 rounds signalled 0-300 ms after the spawn under load.
    """
    rounds = [
        (sig, when)
        for sig in (signal.SIGTERM, signal.SIGINT)
        for when in (*_AT, "started")
        for _ in range(3)
    ]
    db = _db(tmp_path)
    mark = new_mark()
    bad = []
    for sig, when in rounds:
        code, err = _signal_round(db, mark, sig, when)
        # Quiet from the first line of ``__main__`` on; a Ctrl+C landing in the package's own
        # import, just before, still ends by SIGINT, with CPython's traceback.
        quiet = when != "import" or sig != signal.SIGINT
        if code != -sig or (quiet and "Traceback" in err):
            bad.append((sig, when, code, err[-500:]))
    assert bad == []
    assert marked(mark) == []
    with SessionStore.open(db) as store:
        sessions = store.list_sessions()
        assert [s.status for s in sessions if s.status is SessionStatus.ACTIVE] == []
        assert all(store.children(s.id) == [] for s in sessions)


def test_json_mode_reports_start_and_end_as_json_lines_on_stderr(tmp_path: Path) -> None:
    """``run --json``: stdout stays the command's; stderr carries one JSON line per event."""
    r = subprocess.run(
        [*CLI, "--db", _db(tmp_path), "run", "--json", "--", "sh", "-c", "echo out; exit 2"],
        capture_output=True,
        text=True,
    )
    lines = [json.loads(line) for line in r.stderr.splitlines()]  # every line is JSON
    # A store warning under load (a heartbeat journaled) is a {"event": "log"} line too.
    started, ended = (line for line in lines if line["event"] != "log")
    assert r.returncode == 2 and r.stdout == "out\n"
    assert started["event"] == "started" and started["argv"] == ["sh", "-c", "echo out; exit 2"]
    assert ended["event"] == "ended" and ended["exit_code"] == 2
    assert ended["verified_no_orphans"] is True and ended["session_status"] == "stopped"


def test_a_command_that_exits_at_once_never_fails_the_wrapper(tmp_path: Path) -> None:
    """``run -- true``, 20 rounds: exit 0 every time (its exit used to race the identity read)."""
    db = _db(tmp_path)
    bad = []
    for n in range(20):
        r = subprocess.run([*CLI, "--db", db, "run", "-q", "--", "true"], capture_output=True)
        if r.returncode != 0 or b"error" in r.stderr:
            bad.append((n, r.returncode, r.stderr[-200:]))
    assert not bad, bad
