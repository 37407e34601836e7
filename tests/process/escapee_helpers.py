"""Escapee scenarios: an orchestrator subprocess, bystanders, counts taken without the library.

The orchestrator is scripts/escapees.py; bystanders record every signal they receive.

The test process is made a child subreaper for the scenario, so whatever outlives the
orchestrator is re-parented to it and counted (and cleaned up) here, not lost to init. Every
escapee holds the write end of one pipe: EOF on the read end proves that none is left, however
many times it changed pid. Nothing sleeps to synchronise: readiness is a line on a pipe.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from _support import zombie_children
from process_helpers import SCRIPTS, read_line

from sessionstore.process._os import set_child_subreaper

ESCAPEES = str(SCRIPTS / "escapees.py")
BYSTANDER = str(SCRIPTS / "bystander.py")
MARKER = b"SESSIONSTORE_TREE="


@contextlib.contextmanager
def subreaper_scope() -> Iterator[None]:
    """Make this (test) process a child subreaper for the block; reap what it adopted after."""
    set_child_subreaper(True)
    try:
        yield
    finally:
        set_child_subreaper(False)


def descendants_of(pid: int, exclude: set[int]) -> list[int]:
    """Live (non-zombie) descendants of ``pid`` by parent links, minus ``exclude``."""
    found = []
    with contextlib.suppress(psutil.NoSuchProcess):
        for proc in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                if proc.pid not in exclude and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc.pid)
    return found


def marked(session_id: str) -> list[int]:
    """Live processes anywhere carrying this session's tree marker (read through psutil)."""
    found = []
    needle = "SESSIONSTORE_TREE"
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            value = proc.environ().get(needle)
            if value is not None and value.startswith(session_id + ":"):
                found.append(proc.pid)
    return found


class Bystander:
    """A process that must never be signalled; it logs every catchable signal it gets."""

    def __init__(self, log: Path, *, pgid: int | None = None, new_session: bool = False) -> None:
        self.log = log
        log.touch()
        kwargs: dict[str, Any] = {}
        if pgid is not None:
            kwargs["preexec_fn"] = lambda: os.setpgid(0, pgid)
        self.proc = subprocess.Popen(
            [sys.executable, BYSTANDER, str(log)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=new_session,
            **kwargs,
        )
        assert self.proc.stdout is not None
        assert read_line(self.proc.stdout.fileno(), 30).strip() == "ready"

    def finish(self) -> tuple[str, str, int | None]:
        """(signals it logged, its state before release, its exit status) — then it is gone."""
        try:
            state = psutil.Process(self.proc.pid).status()
        except psutil.NoSuchProcess:
            state = "gone"
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        if state == psutil.STATUS_STOPPED:
            self.proc.send_signal(signal.SIGCONT)
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return self.log.read_text(), state, code


class Escapees:
    """One ``escapees.py`` orchestrator and the escapees its launchers left behind."""

    def __init__(self, db: str, kinds: list[str], *args: str, tmp: Path) -> None:
        self.kinds = kinds
        self.read_fd, write_fd = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, ESCAPEES, db, str(write_fd), ",".join(kinds), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=[write_fd],
            # Its own process group in our session, so a bystander can join that group.
            preexec_fn=os.setpgrp,
        )
        os.close(write_fd)
        self._buf = b""
        assert self.proc.stdout is not None
        line = read_line(self.proc.stdout.fileno(), 60)
        if not line.startswith("READY "):
            self.close()
            raise AssertionError(f"escapees.py did not start: {line!r} {self.proc.stderr!r}")
        self.session_id: str = json.loads(line[len("READY ") :])["session_id"]
        self.pids = self._read_pids(len(kinds), 30)
        self.bystanders = [
            Bystander(tmp / "bystander-group.log", pgid=self.proc.pid),
            Bystander(tmp / "bystander-session.log", new_session=True),
        ]

    def _read_pids(self, count: int, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.read_fd, selectors.EVENT_READ)
            while self._buf.count(b"\n") < count:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise TimeoutError(f"escapees reported {self._buf!r}, wanted {count} pids")
                chunk = os.read(self.read_fd, 4096)
                if not chunk:
                    raise AssertionError(f"pipe closed after {self._buf!r}")
                self._buf += chunk
        return [int(x) for x in self._buf.split()]

    def all_gone(self, timeout: float) -> bool:
        """True when every escapee (every pid a hopper ever had) has exited: EOF on the pipe."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.read_fd, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return False
                if not os.read(self.read_fd, 4096):
                    return True

    def descendants(self) -> list[int]:
        """Live processes below the orchestrator, or adopted by us after it died."""
        mine = {b.proc.pid for b in self.bystanders} | {self.proc.pid}
        if self.proc.poll() is None:
            return descendants_of(self.proc.pid, mine)
        return descendants_of(os.getpid(), mine)

    def close(self) -> None:
        """Kill what is left: the orchestrator, its descendants, whatever we adopted."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)
        for b in getattr(self, "bystanders", []):
            if b.proc.poll() is None:
                b.proc.kill()
                b.proc.wait()
        for _ in range(50):  # a hopper may still be hopping: until nothing adopted is left
            left = descendants_of(os.getpid(), set())
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            reap_adopted()
        reap_adopted()
        os.close(self.read_fd)


def reap_adopted() -> None:
    """Reap zombie children of this process that no Popen owns (adopted orphans)."""
    for pid in zombie_children():
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def bystander_problems(esc: Escapees) -> list[str]:
    """Each bystander that logged a signal, was stopped or killed, or did not exit 0."""
    problems = []
    for b in esc.bystanders:
        logged, state, code = b.finish()
        if logged or state in (psutil.STATUS_STOPPED, "gone") or code != 0:
            problems.append(f"bystander {b.log.name}: signals {logged!r} state {state} exit {code}")
    return problems
