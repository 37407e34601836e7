"""The layer's children: spawned or adopted, pinned, recorded in the store, watched for exit.

One exit-watcher thread waits on every child's pidfd in one selector and records each exit with
its code through ``store.remove_child`` *as it happens*, whatever state the store is in. While the
store is closing that write joins the store's pending queue and lands before the connection
closes; after it closed, it is journaled. (The incident this layer exists for: a child's exit
callback that found the database already closed and crashed, leaving the row "running".)

Exit statuses are never stolen: a ``Popen`` child is reaped by ``Popen.poll()``, anything else
that is our child is read with ``WNOWAIT`` and left to its owner; there is no ``waitpid(-1)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .._identity import ProcessIdentity, check_signal_target
from .._models import ChildProcess, ChildState
from ._cgroup import CgroupMoveError, SessionCgroup, cgroup_name
from ._errors import ShutdownInProgressError
from ._os import is_child_subreaper
from ._pin import Pin
from ._tree import MARKER_NAME, descends_from_me

__all__ = ["ChildRegistry", "ExitWatcher", "StoreLike", "row_state"]

log = logging.getLogger("sessionstore.process")

_POLL_S = 0.05  # only for children without a pidfd (no pidfd support, EMFILE)

AnyPopen = subprocess.Popen[bytes] | subprocess.Popen[str]


class StoreLike(Protocol):
    """The part of :class:`~sessionstore.SessionStore` the process layer writes through."""

    def add_child(
        self,
        session_id: str,
        pid: int,
        *,
        identity: ProcessIdentity | None = None,
        pgid: int | None = None,
        argv: list[str] | None = None,
    ) -> ChildProcess: ...

    def remove_child(
        self,
        session_id: str,
        pid: int,
        exit_code: int | None = None,
        *,
        state: ChildState = ChildState.EXITED,
        start_ticks: int | None = None,
    ) -> None: ...


def row_state(pin: Pin) -> ChildState:
    """The ``child_processes.state`` a pin's end is recorded with."""
    outcome = pin.outcome()
    if outcome == "killed":
        return ChildState.KILLED
    if outcome == "unkillable":
        return ChildState.UNKILLABLE
    return ChildState.EXITED


class ExitWatcher:
    """One daemon thread: a selector over the pidfds of watched pins plus a control pipe."""

    def __init__(self, on_exit: Callable[[Pin], None]) -> None:
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._incoming: list[Pin] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._ctl_r, self._ctl_w = os.pipe()
        os.set_blocking(self._ctl_w, False)

    def add(self, pin: Pin) -> None:
        """Watch ``pin``; ``on_exit(pin)`` is called on the watcher thread once it exits."""
        with self._lock:
            if self._stopping:
                raise RuntimeError("exit watcher stopped")
            self._incoming.append(pin)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sessionstore-exit-watcher", daemon=True
                )
                self._thread.start()
        self._poke()

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._ctl_w, b"\0")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching and join the thread (idempotent); pins still running are not reported."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        self._poke()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        for fd in (self._ctl_r, self._ctl_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        polled: list[Pin] = []
        with selectors.DefaultSelector() as sel:
            sel.register(self._ctl_r, selectors.EVENT_READ, None)
            while True:
                for key, _ in sel.select(_POLL_S if polled else None):
                    if key.data is None:
                        with contextlib.suppress(OSError):
                            os.read(self._ctl_r, 4096)
                        continue
                    sel.unregister(key.fd)
                    self._handle(key.data)
                with self._lock:
                    if self._stopping:
                        return
                    incoming, self._incoming = self._incoming, []
                for pin in incoming:
                    fd = pin.fileno()
                    if fd is None:
                        polled.append(pin)
                    else:
                        sel.register(fd, selectors.EVENT_READ, pin)
                done = [p for p in polled if p.has_exited()]
                for pin in done:
                    polled.remove(pin)
                    self._handle(pin)

    def _handle(self, pin: Pin) -> None:
        try:
            pin.collect(reap_adopted=False)
            self._on_exit(pin)
        except Exception:  # one bad write must not stop the watcher for every other child
            log.exception("recording the exit of child %d failed", pin.pid)


class ChildRegistry:
    """Spawns and adopts a session's children and keeps their store rows in step with reality.

    Thread-safe. ``stop_accepting()`` closes the gate atomically with respect to ``spawn``:
    a child is either fully registered (pinned, recorded, watched) before the gate closes, or
    never started.
    """

    def __init__(
        self, store: StoreLike, session_id: str, marker: str, *, cgroup: bool = False
    ) -> None:
        self._store = store
        self._session_id = session_id
        self._marker = marker
        self._gate = threading.Lock()
        self._cond = threading.Condition()
        self._accepting = True
        self._pins: dict[tuple[int, int], Pin] = {}
        self._recorded: set[tuple[int, int]] = set()
        self._watcher = ExitWatcher(self._record_exit)
        self._gaps: list[str] = []  # why shutdown cannot see every descendant of some child
        self._want_cgroup = cgroup
        self._cgroup: SessionCgroup | None = None
        self._cgroup_note = "not asked for (cgroup=False)" if not cgroup else "no child spawned"
        self._outside_cgroup = 0  # children (spawned or adopted) not started inside it

    @property
    def cgroup(self) -> SessionCgroup | None:
        """The cgroup the spawned children live in, when the cgroup tier is in use."""
        return self._cgroup

    @property
    def cgroup_note(self) -> str:
        """Why the cgroup tier is not in use (or ``"in use"``)."""
        return self._cgroup_note

    def all_in_cgroup(self) -> bool:
        """True when the cgroup tier is in use and every child was started inside it."""
        with self._cond:
            return self._cgroup is not None and self._outside_cgroup == 0

    def _session_cgroup(self) -> SessionCgroup | None:
        """The cgroup, created at the first spawn; None (with the reason noted) when unusable."""
        if self._cgroup is None and self._want_cgroup:
            self._want_cgroup = False  # one attempt: the reason stays as the note
            try:
                sid, pid, ticks = self._marker.rsplit(":", 2)
                self._cgroup = SessionCgroup.create(cgroup_name(sid, int(pid), int(ticks)))
                self._cgroup_note = "in use"
            except OSError as err:
                self._cgroup_note = str(err)
        return self._cgroup

    def enumeration_gaps(self) -> list[str]:
        """Why some child's tree cannot be enumerated completely (empty when all can).

        A child's tree is complete by construction when it started below this process while
        this process was a child subreaper: every orphan of its tree is then re-parented to us.
        """
        with self._cond:
            return list(self._gaps)

    def _note_gap(self, pin: Pin, *, in_cgroup: bool = False) -> None:
        """Remember why this child's tree could not be enumerated completely, if it cannot."""
        why = None
        if in_cgroup:
            pass  # forked inside the session cgroup: its tree is complete by construction
        elif not is_child_subreaper():
            why = "started while this process was not a child subreaper"
        elif pin.popen is None and not descends_from_me(pin.pid):
            why = "tracked, but not a descendant of this process (its orphans go elsewhere)"
        with self._cond:
            if not in_cgroup:
                self._outside_cgroup += 1
            if why is not None:
                self._gaps.append(f"child {pin.pid} {why}")

    def pins(self) -> list[Pin]:
        """Every pinned child, in registration order."""
        with self._cond:
            return list(self._pins.values())

    def spawn(self, args: Any, popen_kwargs: dict[str, Any]) -> AnyPopen:
        """Start a child in its own process group, pin it, record it, watch it.

        Raises:
            ShutdownInProgressError: shutdown has begun; nothing was started.
            OSError, ValueError: from ``subprocess.Popen``; nothing was started.
            SessionStoreError: the store refused the row; the child was killed and reaped.
        """
        kwargs = dict(popen_kwargs)
        if "process_group" not in kwargs and "start_new_session" not in kwargs:
            # Its own group: a terminal Ctrl-C does not hit it behind our back, and the group
            # gives shutdown a handle on its descendants. Never preexec_fn: not thread-safe.
            if sys.version_info >= (3, 11):
                kwargs["process_group"] = 0
            else:
                kwargs["start_new_session"] = True
        env = kwargs.get("env")
        env = dict(os.environ if env is None else env)
        env[MARKER_NAME] = self._marker
        kwargs["env"] = env
        with self._gate:
            if not self._accepting:
                raise ShutdownInProgressError(self._session_id)
            proc, in_cgroup = self._popen(args, kwargs)
            # Pinned at once: it is our child and nobody else reaps it, so its PID cannot be
            # recycled before this (trio's pattern).
            try:
                # argv from the spawn itself: /proc shows none until execve has filled it in,
                # and Popen returns before that (a read here recorded [] about one time in six).
                pin = Pin.pin(proc.pid, source="spawned", popen=proc, argv=_argv_of(args, kwargs))
            except ProcessLookupError:  # pragma: no cover - our unreaped child always has a pid
                proc.kill()
                proc.wait()
                raise
            self._register(pin)
            self._note_gap(pin, in_cgroup=in_cgroup)
        return proc

    def _popen(self, args: Any, kwargs: dict[str, Any]) -> tuple[AnyPopen, bool]:
        """Start the child, inside the session cgroup when the tier is in use (then True)."""
        cg = self._session_cgroup()
        if cg is not None:
            try:
                proc: AnyPopen = cg.spawn(lambda: subprocess.Popen(args, **kwargs))
                return proc, True
            except CgroupMoveError as err:
                log.warning("starting a child outside the session cgroup: %s", err)
        return subprocess.Popen(args, **kwargs), False

    def track(self, target: int | AnyPopen) -> ChildProcess:
        """Adopt a process started elsewhere: verify, pin, record and watch it.

        Raises:
            UnsafeSignalError: pid <= 1 or this process.
            TypeError: ``target`` is neither an int nor a Popen.
            ProcessLookupError: no such process (or it changed identity while being pinned).
            PermissionError: it cannot be read (``ProcessUnreadableError``), so it cannot be
                verified; nothing was recorded.
            ShutdownInProgressError: shutdown has begun.
        """
        popen: AnyPopen | None
        if isinstance(target, subprocess.Popen):
            popen, pid = target, target.pid
        else:
            popen, pid = None, target
        check_signal_target(pid)
        identity = ProcessIdentity.capture(pid)
        pin = Pin.pin(pid, source="tracked", expected_start_ticks=identity.start_ticks, popen=popen)
        with self._gate:
            if not self._accepting:
                pin.close()
                raise ShutdownInProgressError(self._session_id)
            existing = self._pins.get((pid, pin.start_ticks))
            if existing is not None:
                pin.close()
                pin = existing
                return self._store.add_child(
                    self._session_id, pid, identity=identity, pgid=pin.pgid, argv=pin.argv
                )
            child = self._register(pin)
            self._note_gap(pin)
            return child

    def adopt_recorded(self, pin: Pin) -> None:
        """Watch a pin made from a store row of this session (already recorded)."""
        with self._cond:
            self._pins[(pin.pid, pin.start_ticks)] = pin
            self._outside_cgroup += 1
        self._watcher.add(pin)

    def _register(self, pin: Pin) -> ChildProcess:
        identity = ProcessIdentity(pid=pin.pid, start_ticks=pin.start_ticks, boot_id=pin.boot_id)
        try:
            child = self._store.add_child(
                self._session_id, pin.pid, identity=identity, pgid=pin.pgid, argv=pin.argv
            )
        except BaseException:
            if pin.source == "spawned":
                # Never leave a child running that no row accounts for.
                pin.send(9)
                if pin.popen is not None:
                    pin.popen.wait()
            pin.close()
            raise
        with self._cond:
            self._pins[(pin.pid, pin.start_ticks)] = pin
        self._watcher.add(pin)
        return child

    def stop_accepting(self) -> None:
        """Close the gate: from now on ``spawn``/``track`` raise ShutdownInProgressError."""
        with self._gate:
            self._accepting = False

    def _record_exit(self, pin: Pin) -> None:
        key = (pin.pid, pin.start_ticks)
        try:
            self._store.remove_child(
                self._session_id,
                pin.pid,
                pin.exit_code,
                state=row_state(pin),
                start_ticks=pin.start_ticks,
            )
        finally:
            with self._cond:
                self._recorded.add(key)
                self._cond.notify_all()

    def record(self, pin: Pin, state: ChildState) -> None:
        """Record an end the watcher cannot see (unkillable, gone) for a pinned or row child."""
        self._store.remove_child(
            self._session_id, pin.pid, pin.exit_code, state=state, start_ticks=pin.start_ticks
        )
        with self._cond:
            self._recorded.add((pin.pid, pin.start_ticks))
            self._cond.notify_all()

    def wait_recorded(self, pins: Sequence[Pin], timeout: float) -> bool:
        """Wait until the watcher has recorded the end of each of ``pins`` that has exited.

        Returns:
            True when all were recorded within ``timeout`` seconds.
        """
        keys = {(p.pid, p.start_ticks) for p in pins if p.has_exited()}
        with self._cond:
            return self._cond.wait_for(lambda: keys <= self._recorded, timeout)

    def is_recorded(self, pin: Pin) -> bool:
        """True once the end of ``pin`` was written to the store."""
        with self._cond:
            return (pin.pid, pin.start_ticks) in self._recorded

    def close(self) -> None:
        """Stop the watcher, close every pidfd, remove the cgroup once empty (idempotent)."""
        self._watcher.stop()
        if self._cgroup is not None and not self._cgroup.remove():
            log.warning("cgroup %s still holds processes; left in place", self._cgroup.path)
        with self._cond:
            pins = list(self._pins.values())
        for pin in pins:
            pin.close()


def _argv_of(args: Any, kwargs: dict[str, Any]) -> list[str]:
    """The argv ``Popen`` executes for ``args`` (what ``/proc/<pid>/cmdline`` will show)."""
    if isinstance(args, (str, bytes, os.PathLike)):
        argv = [os.fsdecode(args)]
    else:
        argv = [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in args]
    if kwargs.get("shell"):
        shell = kwargs.get("executable") or "/bin/sh"
        return [os.fsdecode(shell), "-c", *argv]
    return argv
