"""A process pinned for signalling: a pidfd held open plus the identity it was verified against.

A PID is not an identity. A pidfd opened while we know who holds the PID refers to that process
for good: signals through it fail with ``ProcessLookupError`` instead of reaching a stranger that
recycled the number (systemd's ``PidRef``). We still re-read ``/proc`` start ticks before every
signal, so a pin made without a pidfd (old kernel, EMFILE, not Linux) is checked the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from typing import Literal

import psutil

from .._identity import boot_id, check_signal_target
from .._proc import ProcessUnreadableError, StatInfo, read_stat, settled_argv
from ..errors import UnsafeSignalError
from ._os import HAVE_PIDFD, fd_readable, open_pidfd, pidfd_group_signal, waitid_pidfd
from ._reports import Outcome

__all__ = ["Pin", "PinSource"]

PinSource = Literal["spawned", "tracked", "recorded", "descendant"]

_OWNER_REAP_WAIT_S = 1.0  # another thread's Popen.wait() stores a reaped status in microseconds


class Pin:
    """One process we may signal, pinned by a pidfd (or a psutil handle off Linux).

    Attributes:
        pid: the process id.
        start_ticks: its start time in clock ticks since boot, read when it was pinned.
        pgid: its process group when pinned; signalled as a group only when not ours.
        sid: its session id when pinned.
        argv: its command line, for humans.
        source: how it came under our care.
        popen: the ``subprocess.Popen`` that owns its exit status, if we have one.
        term_sent / kill_sent: which of our signals it was sent (decides how it ended).
        adopted: proven not forked by this process (see :mod:`._adopted`): a zombie child
            of ours that is ours to reap.
        exit_code: ``Popen.returncode`` form, when known.
        ended: it exited (or is a zombie).
    """

    def __init__(
        self,
        pid: int,
        start_ticks: int,
        *,
        pgid: int | None,
        sid: int | None,
        argv: list[str],
        source: PinSource,
        pidfd: int | None,
        popen: subprocess.Popen[bytes] | subprocess.Popen[str] | None = None,
    ) -> None:
        self.pid = pid
        self.start_ticks = start_ticks
        self.boot_id = boot_id()
        self.pgid = pgid
        self.sid = sid
        self.argv = argv
        self.source: PinSource = source
        self.popen = popen
        self._pidfd = pidfd
        self._psproc: psutil.Process | None = None
        if pidfd is None:
            # No pidfd: psutil's handle checks (pid, start time) before each of its signals.
            with contextlib.suppress(psutil.Error):
                self._psproc = psutil.Process(pid)
        self._lock = threading.Lock()
        self._closed = False
        self.term_sent = False
        self.kill_sent = False
        # Proven not forked by this process (see ._adopted): its zombie is ours to reap.
        self.adopted = False
        self.exit_code: int | None = None
        self.ended = False
        self.reaped = False

    @classmethod
    def pin(
        cls,
        pid: int,
        *,
        source: PinSource,
        expected_start_ticks: int | None = None,
        popen: subprocess.Popen[bytes] | subprocess.Popen[str] | None = None,
        argv: list[str] | None = None,
    ) -> Pin:
        """Pin the process that holds ``pid`` now, verifying it after the pidfd is open.

        The order matters (systemd's ``pidref_verify``): open the pidfd, *then* read ``/proc``;
        if the start ticks match what we expect, the pidfd refers to that very process.

        ``argv`` is what the caller knows (the spawn's own arguments); without it the command
        line is read once the process is past any ``execve`` in progress.

        Raises:
            UnsafeSignalError: ``pid`` is <= 1 or this process.
            ProcessLookupError: no such process, or its identity is not the expected one.
            ProcessUnreadableError: it cannot be read, so it cannot be verified (nothing is pinned).
        """
        check_signal_target(pid)
        pidfd = open_pidfd(pid)
        try:
            info = read_stat(pid)
        except ProcessUnreadableError:
            if pidfd is not None:
                os.close(pidfd)
            raise
        if info is None or (
            expected_start_ticks is not None and info.start_ticks != expected_start_ticks
        ):
            if pidfd is not None:
                os.close(pidfd)
            what = "no such process" if info is None else "pid now belongs to another process"
            raise ProcessLookupError(pid, what)
        if argv is None:
            argv = settled_argv(pid) or []
        return cls(
            pid,
            info.start_ticks,
            pgid=info.pgid,
            sid=info.sid,
            argv=argv,
            source=source,
            pidfd=pidfd,
            popen=popen,
        )

    def fileno(self) -> int | None:
        """The pidfd (readable once the process exits), or None when there is none."""
        return self._pidfd

    def _stat(self) -> StatInfo | None:
        """This pid's stat now; raises ProcessUnreadableError when it cannot be read."""
        return read_stat(self.pid)

    def identity_matches(self) -> bool:
        """True while the PID still names the pinned process (alive or a zombie).

        Unreadable: True only with a pidfd, which names the pinned process whatever its PID
        holds; without one we cannot tell, and a signal could reach a stranger (False).
        """
        try:
            info = self._stat()
        except ProcessUnreadableError:
            return self._pidfd is not None
        return info is not None and info.start_ticks == self.start_ticks

    def has_exited(self) -> bool:
        """True once the process has exited: pidfd readable, or zombie/gone in ``/proc``."""
        if self.ended:
            return True
        fd = self._pidfd
        if fd is not None:
            try:
                return fd_readable(fd)
            except (OSError, ValueError):
                pass  # closed under us: fall back to /proc
        if self.popen is not None and self.popen.returncode is not None:
            return True
        try:
            info = self._stat()
        except ProcessUnreadableError:
            return False  # unknown is not gone: it stays to be verified
        return info is None or info.start_ticks != self.start_ticks or info.finished

    def send(self, sig: int) -> bool:
        """Send ``sig`` to this one process, after re-verifying its identity.

        Returns:
            True when delivered; False when it is gone or its PID names someone else now (and
            then nothing was sent).
        """
        with self._lock:
            if self._closed or self.ended or not self.identity_matches():
                return False
            fd = self._pidfd
            try:
                if fd is not None:
                    signal.pidfd_send_signal(fd, sig)
                elif self._psproc is not None:
                    self._psproc.send_signal(sig)  # checks (pid, create time) first
                else:
                    return False
            except (OSError, psutil.Error):
                # Gone (ProcessLookupError, NoSuchProcess), not ours to signal (EPERM after a
                # setuid exec), or psutil saw the pid reused: nothing was delivered.
                return False
            self.note_signal(sig)
            return True

    def send_group(self, sig: int) -> bool:
        """Send ``sig`` to this process's group, guarded; False when not done.

        The caller marks the members it meant to reach (see :meth:`note_signal`).

        Only the group this process leads; never our own group, never pgid <= 1. Through the
        pidfd when the kernel can (race-free); else ``os.killpg``, only while this pinned leader
        is alive, which keeps the group number from being recycled under us.
        """
        pgid = self.pgid
        if pgid is None or pgid != self.pid:
            return False  # only a group this process leads is "its" group
        try:
            check_signal_target(self.pid, pgid=pgid)
        except UnsafeSignalError:
            return False
        with self._lock:
            if self._closed:
                return False
            fd = self._pidfd
            if fd is not None and pgid == self.pid:
                delivered = pidfd_group_signal(fd, sig)
                if delivered is not None:
                    return delivered
            try:
                info = self._stat()
            except ProcessUnreadableError:
                return False
            if info is None or info.start_ticks != self.start_ticks or info.pgid != pgid:
                return False
            if info.finished:
                return False  # a zombie leader no longer guarantees the group number is ours
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                return False
            return True

    def note_signal(self, sig: int) -> None:
        """Remember that ``sig`` reached this process (directly or through its group)."""
        if sig == signal.SIGTERM:
            self.term_sent = True
        elif sig == signal.SIGKILL:
            self.kill_sent = True

    def outcome(self) -> Outcome:
        """How this process ended, judged from what we sent it and its exit status."""
        if not self.has_exited():
            return "unkillable"
        code = self.exit_code
        if self.kill_sent and (code is None or code == -signal.SIGKILL):
            return "killed"
        if self.term_sent:
            return "terminated"
        return "exited"

    def collect(self, *, reap_adopted: bool) -> None:
        """Record the exit status when we may read it, without stealing it from its owner.

        A Popen child is reaped by ``Popen.poll()`` (its returncode stays right for whoever
        holds the Popen). A child of ours that no Popen owns is read with ``WNOWAIT`` and left
        for its owner, unless ``reap_adopted`` says it is an orphan the subreaper adopted: then
        we must reap it (nobody else will). A non-child gives no status.
        """
        if self.reaped:
            return
        self.ended = True
        if self.popen is not None:
            code = self.popen.poll()
            if code is None:
                # Another thread is inside popen.wait() and holds its lock: peek, don't reap.
                fd = self._pidfd
                code = waitid_pidfd(fd, reap=False) if fd is not None else None
            if code is None and (fd is None or fd_readable(fd)):
                # Too late to peek: that thread reaped it between our poll and our peek. Its
                # returncode lands in the Popen within moments; read it there rather than
                # recording the exit with no code (the alternative, and a flaky test).
                with contextlib.suppress(subprocess.TimeoutExpired):
                    code = self.popen.wait(timeout=_OWNER_REAP_WAIT_S)
            self.reaped = self.popen.returncode is not None
            self.exit_code = code
            return
        fd = self._pidfd
        try:
            info = self._stat()
        except ProcessUnreadableError:
            info = None  # cannot tell it is our child: read nothing, reap nothing
        ours = (
            info is not None and info.ppid == os.getpid() and info.start_ticks == self.start_ticks
        )
        if fd is not None and ours:
            if reap_adopted:
                self.exit_code = waitid_pidfd(fd, reap=True)
                self.reaped = self.exit_code is not None
            else:
                self.exit_code = waitid_pidfd(fd, reap=False)
        elif not HAVE_PIDFD and ours and reap_adopted:
            with contextlib.suppress(ChildProcessError, OSError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid == self.pid:
                    self.exit_code = os.waitstatus_to_exitcode(status)
                    self.reaped = True

    def close(self) -> None:
        """Close the pidfd; the pin can no longer signal (idempotent)."""
        with self._lock:
            fd, self._pidfd = self._pidfd, None
            self._closed = True
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __repr__(self) -> str:
        state = "ended" if self.ended else "live"
        return f"<Pin pid={self.pid} source={self.source} pgid={self.pgid} {state}>"
