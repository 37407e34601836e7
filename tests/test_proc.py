"""What the OS says about a process: one reader, where "cannot read" is unknown, never gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from sessionstore import SessionStore
from sessionstore._identity import IdentityStatus, ProcessIdentity, read_process_info
from sessionstore._proc import (
    ProcessUnreadableError,
    environ_value,
    read_argv,
    read_children,
    read_children_lists,
    read_stat,
    settled_argv,
    wait_pidfds,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")


def test_argv_read_the_moment_popen_returns_is_the_real_one() -> None:
    """Popen returns before execve fills in the arguments; the read waits that out, 50 of 50."""
    bad = []
    for n in range(50):
        proc = subprocess.Popen(["sleep", "600", str(n)])
        try:
            info = read_process_info(proc.pid)
            if info is None or info.argv != ["sleep", "600", str(n)]:
                bad.append((n, info and info.argv))
        finally:
            proc.kill()
            proc.wait()
    assert not bad, bad


def test_add_child_records_argv_right_after_spawn(store: SessionStore, session_id: str) -> None:
    """store.add_child(sid, pid) straight after Popen records the real argv, 30 of 30."""
    bad = []
    for n in range(30):
        proc = subprocess.Popen(["sleep", "600", str(n)])
        try:
            row = store.add_child(session_id, proc.pid)
            if row.argv != ["sleep", "600", str(n)]:
                bad.append((n, row.argv))
        finally:
            proc.kill()
            proc.wait()
    assert not bad, bad


def test_zombie_has_no_argv_and_no_wait() -> None:
    """A zombie's command line is unknown (None) at once: no waiting for an exec that never ends."""
    proc = subprocess.Popen(["true"])
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    info = read_stat(proc.pid)
    assert info is not None and info.finished
    assert read_argv(proc.pid) is None and settled_argv(proc.pid, timeout=30) is None
    proc.wait()
    assert read_stat(proc.pid) is None  # reaped: no such process, which is a different answer


def _unprivileged_view(target: int) -> dict[str, object]:
    """Read ``target`` from a forked child running as nobody; what each reader answered."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        answers: dict[str, object] = {}
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            try:
                answers["environ"] = repr(environ_value(target, b"PATH"))
            except ProcessUnreadableError as err:
                answers["environ"] = "unreadable"
                answers["pid"] = err.pid
            stat = read_stat(target)
            answers["stat_pid"] = None if stat is None else stat.pid
            answers["identity"] = ProcessIdentity.capture(target).check().value
            os.write(w, json.dumps(answers).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    result: dict[str, object] = json.loads(data)
    return result


def test_unreadable_environment_is_unknown_not_absent() -> None:
    """Another user's environment raises ProcessUnreadableError: never "no marker", never "gone"."""
    target = subprocess.Popen(["sleep", "600"]) if os.geteuid() == 0 else None
    try:
        pid = target.pid if target is not None else 1
        seen = _unprivileged_view(pid)
        assert seen == {
            "environ": "unreadable",
            "pid": pid,
            "stat_pid": pid,
            "identity": IdentityStatus.ALIVE.value,
        }
    finally:
        if target is not None:
            target.kill()
            target.wait()


def test_read_children_lists_live_and_zombie_children() -> None:
    """read_children names our children, a zombie among them, and None for no such process."""
    live = subprocess.Popen(["sleep", "600"])
    done = subprocess.Popen(["true"])
    fd = os.pidfd_open(done.pid)
    try:
        assert wait_pidfds([fd], time.monotonic() + 10) == set()  # exited, not yet reaped
        assert {live.pid, done.pid} <= set(read_children(os.getpid()) or [])
        assert read_children(2**22 + 1) is None
    finally:
        os.close(fd)
        live.kill()
        live.wait()
        done.wait()


def test_child_lists_grow_at_their_end_until_a_reap() -> None:
    """The kernel property the tree walk reads only the new end by (``_own_children``).

    A child forked since the last read is at the end of this thread's list, each pid is
    followed by a space, so the earlier read is a prefix at a whole pid; reaping one takes it
    out of the middle and the earlier read is no longer a prefix.
    """
    tid = str(threading.get_native_id())
    procs = [subprocess.Popen(["sleep", "600"]) for _ in range(2)]
    try:
        before = (read_children_lists(os.getpid()) or {})[tid]
        assert before.endswith(b" ") and f"{procs[0].pid} ".encode() in before
        procs.append(subprocess.Popen(["sleep", "600"]))
        grown = (read_children_lists(os.getpid()) or {})[tid]
        assert grown.startswith(before)
        assert grown[len(before) :].split() == [str(procs[2].pid).encode()]
        procs[0].kill()
        procs[0].wait()  # reaped: off the list
        after = (read_children_lists(os.getpid()) or {})[tid]
        assert not after.startswith(before) and str(procs[0].pid).encode() not in after.split()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert read_children_lists(2**22 + 1) is None


def test_wait_pidfds_returns_what_is_left_when_woken() -> None:
    """A wake fd with should_stop() ends the wait early; the live process's pidfd is returned."""
    live = subprocess.Popen(["sleep", "600"])
    fd = os.pidfd_open(live.pid)
    r, w = os.pipe()
    try:
        os.write(w, b"!")
        left = wait_pidfds([fd], time.monotonic() + 60, wake_fd=r, should_stop=lambda: True)
        assert left == {fd}
        live.kill()
        assert wait_pidfds([fd], time.monotonic() + 10) == set()
    finally:
        for f in (fd, r, w):
            os.close(f)
        live.wait()
