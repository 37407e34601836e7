"""Real process trees under ``sessionstore run``, found by a marker in their environment.

Every process of a tree inherits ``TREE_MARK=<uuid>`` from the wrapper, whatever its parent is
later (double forks, ``setsid``, re-parenting to init): scanning the whole process table for the
marker finds orphans that a walk of the wrapper's children would miss. Readiness is a line per
worker on the wrapper's stdout (each worker prints it once it runs), never a sleep.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil

CLI = [sys.executable, "-m", "sessionstore"]

_started: list[str] = []


def new_mark() -> str:
    """A fresh marker, remembered so that :func:`kill_leftovers` can find its tree."""
    mark = uuid.uuid4().hex
    _started.append(mark)
    return mark


def kill_leftovers() -> list[int]:
    """SIGKILL every process of every tree started so far (after a failed test); their pids."""
    killed = []
    for mark in _started:
        for proc in marked(mark):
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed.append(proc.pid)
    _started.clear()
    return killed


def marked(mark: str, *, exclude: Sequence[int] = ()) -> list[psutil.Process]:
    """Every living (non-zombie) process on the machine whose environment carries ``mark``."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid in exclude:
            continue
        with contextlib.suppress(psutil.Error, OSError):
            if proc.environ().get("TREE_MARK") == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
    return found


@dataclass
class Tree:
    """A ``sessionstore run`` wrapper and the tree it runs."""

    wrapper: subprocess.Popen[str]
    mark: str
    before: list[psutil.Process] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        """The tree's processes counted once every worker said it is ready."""
        return sorted(p.pid for p in self.before)

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        """Wait for the wrapper; return its status and stderr."""
        _, err = self.wrapper.communicate(timeout=timeout)
        return self.wrapper.returncode, err

    def reap(self, timeout: float = 60) -> int:
        """Wait for the wrapper only (orphans may still hold its pipes) and close the pipes."""
        code = self.wrapper.wait(timeout)
        for pipe in (self.wrapper.stdout, self.wrapper.stderr):
            if pipe is not None:
                pipe.close()
        return code

    def left(self) -> list[psutil.Process]:
        """Processes of the tree still alive anywhere (the wrapper itself excluded)."""
        return marked(self.mark, exclude=[self.wrapper.pid])


def start(
    db: str, command: Sequence[str], *, ready: int, run_args: Sequence[str] = (), cwd: str = "."
) -> Tree:
    """Start ``sessionstore run -- command`` and read ``ready`` lines from its stdout."""
    mark = new_mark()
    env = dict(os.environ, TREE_MARK=mark, PYTHONUNBUFFERED="1")
    wrapper = subprocess.Popen(
        [*CLI, "--db", db, "run", *run_args, "--", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )
    assert wrapper.stdout is not None
    # Raw reads: a buffered readline may swallow several lines, and select() on the fd would
    # then wait for data that already arrived.
    fd = wrapper.stdout.fileno()
    deadline = time.monotonic() + 30
    seen = b""
    while seen.count(b"ready\n") < ready:
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([fd], [], [], max(remaining, 0))
        chunk = os.read(fd, 4096) if readable else b""
        seen += chunk
        if not chunk:
            for proc in [*marked(mark), psutil.Process(wrapper.pid)]:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            _, err = wrapper.communicate(timeout=30)
            raise AssertionError(f"tree did not start: {seen!r}; {err}")
    tree = Tree(wrapper, mark)
    tree.before = settled(mark, exclude=[wrapper.pid], at_least=ready + 1, deadline=deadline)
    return tree


def settled(
    mark: str, *, exclude: Sequence[int], at_least: int, deadline: float
) -> list[psutil.Process]:
    """The processes carrying ``mark`` once at least ``at_least`` have been seen.

    A worker says "ready" just before it execs its long-running program, and inside exec its
    environment reads empty for a moment, so a scan can miss it: a make -j3 tree was once
    counted 3 of 4, and a shell tree 3 of 4 even after a second scan found nothing new. So
    scans go on until the tree's known size is reached (the command and one process per
    ready line) and one more scan finds nothing new.

    Raises:
        AssertionError: fewer than ``at_least`` by ``deadline`` (monotonic).
    """
    found: dict[int, psutil.Process] = {}
    while True:
        new = [p for p in marked(mark, exclude=exclude) if p.pid not in found]
        found.update((p.pid, p) for p in new)
        if not new and len(found) >= at_least:
            return list(found.values())
        if time.monotonic() > deadline:
            raise AssertionError(f"tree {mark}: {len(found)} processes, {at_least} expected")


def wait_all_gone(procs: Sequence[psutil.Process], timeout: float) -> float | None:
    """Block on pidfds until every process has ended; the monotonic time the last one did."""
    fds = {}
    last = time.monotonic()
    for proc in procs:
        try:
            fds[os.pidfd_open(proc.pid)] = proc
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + timeout
    try:
        while fds:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select(list(fds), [], [], remaining)
            for fd in readable:
                del fds[fd]
                os.close(fd)
                last = time.monotonic()
    finally:
        for fd in fds:
            os.close(fd)
    return last
