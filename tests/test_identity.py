"""Process identity: (pid, start_ticks, boot_id) tells a process from a stranger with its pid."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from sessionstore import ProcessIdentity, ProcessNotFoundError, SessionStore, UnsafeSignalError
from sessionstore._identity import IdentityStatus, boot_id, check_signal_target, read_process_info


def test_capture_self_is_alive() -> None:
    """Our own identity reads back as alive, with this boot's id."""
    me = ProcessIdentity.current()
    assert me.pid == os.getpid() and me.boot_id == boot_id()
    assert me.check() is IdentityStatus.ALIVE
    assert ProcessIdentity.capture(os.getpid()) == me


def test_child_alive_then_zombie_then_gone() -> None:
    """A child is ALIVE, a ZOMBIE once it exited unreaped, GONE once reaped."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    ident = ProcessIdentity.capture(proc.pid)
    info = read_process_info(proc.pid)
    assert info is not None and info.ppid == os.getpid() and info.argv[0] == sys.executable
    assert ident.check() is IdentityStatus.ALIVE
    assert proc.stdin is not None
    proc.stdin.close()
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, still unreaped
    assert ident.check() is IdentityStatus.ZOMBIE
    assert not ident.is_alive()
    proc.wait()
    assert ident.check() is IdentityStatus.GONE
    assert read_process_info(proc.pid) is None


def test_other_start_time_or_boot_is_not_the_same_process() -> None:
    """Same pid, other start ticks: REUSED. Recorded under another boot: OTHER_BOOT."""
    me = ProcessIdentity.current()
    reused = ProcessIdentity(pid=me.pid, start_ticks=me.start_ticks + 1, boot_id=me.boot_id)
    assert reused.check() is IdentityStatus.REUSED
    old_boot = ProcessIdentity(pid=me.pid, start_ticks=me.start_ticks, boot_id="another-boot")
    assert old_boot.check() is IdentityStatus.OTHER_BOOT


def test_capture_of_a_missing_pid_raises() -> None:
    """No process, no identity: ProcessLookupError."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(ProcessLookupError):
        ProcessIdentity.capture(proc.pid)


@pytest.mark.parametrize(
    ("pid", "pgid"), [(0, None), (1, None), (-1, None), (os.getpid(), None), (12345, 1)]
)
def test_unsafe_signal_targets_refused(pid: int, pgid: int | None) -> None:
    """Pid <= 1, our own pid, and process group <= 1 are refused with the pid named."""
    with pytest.raises(UnsafeSignalError) as info:
        check_signal_target(pid, pgid=pgid)
    assert info.value.pid == pid


def test_own_process_group_refused() -> None:
    """Signalling our own process group would signal ourselves: refused."""
    with pytest.raises(UnsafeSignalError, match="own group"):
        check_signal_target(12345, pgid=os.getpgrp())
    with pytest.raises(TypeError):
        check_signal_target("12345")  # type: ignore[arg-type]


@pytest.mark.parametrize("pid", [2**40, 2**63 - 1, 4_194_305])
def test_pid_above_pid_max_is_a_value_error(pid: int) -> None:
    """A pid no process can have is refused as a ValueError naming pid_max, never an OSError."""
    with pytest.raises(ValueError, match="pid_max") as info:
        check_signal_target(pid)
    assert isinstance(info.value, UnsafeSignalError)


def test_add_child_of_a_bad_or_missing_pid(store: SessionStore) -> None:
    """add_child: 2**40 is a ValueError; a free pid is ProcessNotFoundError with errno ESRCH."""
    session = store.create_session("pids")
    with pytest.raises(ValueError, match="pid_max"):
        store.add_child(session.id, 2**40)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: its pid is free; Linux hands out pids in order, so it stays free
    with pytest.raises(ProcessNotFoundError) as info:
        store.add_child(session.id, proc.pid)
    assert isinstance(info.value, ProcessLookupError)
    assert (info.value.errno, info.value.pid) == (errno.ESRCH, proc.pid)


def test_hostname_is_what_gethostname_says() -> None:
    """hostname() (read from uname) is socket.gethostname(): owner_host rows stay comparable."""
    import socket

    from sessionstore._identity import hostname

    assert hostname() == socket.gethostname()
