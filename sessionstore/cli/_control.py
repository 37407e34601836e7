"""Control a session from another terminal: stop, pause, kill, complete.

The ``stop-dev.sh`` replacement. The session's owner (the ``run`` wrapper, or any orchestrator
embedding a :class:`~sessionstore.ProcessLayer`) is found from the store, never by name in the
process table: the identity the session recorded (``owner``), and the one ``run`` saved in its
``sessionstore.run`` checkpoint when it took over an existing session. A candidate is signalled
only when it is on this host and its ``(pid, start_ticks, boot_id)`` still names a running
process; on Linux a pidfd is opened first and the identity read again after, so the signal can
reach that process only, never a stranger that recycled the PID.

====== ================================ ===============================================
action signal to a verified live owner  afterwards
====== ================================ ===============================================
stop   SIGTERM (the layer's graceful    session STOPPED
       shutdown: children get --grace)
pause  SIGTERM                          session PAUSED (the layer's own choice after a
                                        signal): ``run --session`` resumes it
kill   SIGQUIT (the layer's shutdown    then SIGKILL to the owner if it is still there
       without grace)                   at --timeout, and its orphans are reaped
====== ================================ ===============================================

The command waits for the owner to end (bounded by ``--timeout``, on the pidfd) and reports what
the owner's shutdown recorded: the session's status, each child's end, whether no orphans was
verified. A dead owner is reported, never signalled; ``--reap`` ends what it left running.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import psutil
from rich.console import Console
from rich.markup import escape

from .._identity import IdentityStatus, ProcessIdentity, check_signal_target, hostname
from .._models import Session, SessionStatus
from .._proc import wait_pidfds
from .._store import SessionStore
from ..errors import InvalidTransitionError, UnsafeSignalError
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    CliError,
    Output,
    dump,
    open_store,
    resolve_db,
    store_config,
)
from ._run import RUN_CHECKPOINT
from ._session import resolve_session

__all__ = ["cmd_complete", "cmd_kill", "cmd_new", "cmd_pause", "cmd_stop"]

_SIGNALS = {"stop": signal.SIGTERM, "pause": signal.SIGTERM, "kill": signal.SIGQUIT}
_SHUTDOWN_CHECKPOINT = "shutdown"  # ProcessLayer's default checkpoint_name


@dataclass
class _Candidate:
    source: str  # "session" or "run"
    identity: ProcessIdentity
    host: str | None

    def status(self) -> str:
        if self.host is not None and self.host != hostname():
            return "other_host"
        return self.identity.check().value


def _candidates(store: SessionStore, session: Session) -> list[_Candidate]:
    found = []
    if session.owner is not None:
        found.append(_Candidate("session", session.owner, session.owner_host))
    run = store.latest_checkpoint(session.id, name=RUN_CHECKPOINT)
    if run is not None and isinstance(run.data, dict) and isinstance(run.data.get("owner"), dict):
        with contextlib.suppress(ValueError, TypeError):
            ident = ProcessIdentity(**run.data["owner"])
            host = run.data.get("host")
            if ident != session.owner:
                # Newest first: `run --session` took the session over after it was created.
                found.insert(0, _Candidate("run", ident, host if isinstance(host, str) else None))
    return found


class _Target:
    """The owner, pinned: a pidfd (Linux) or a psutil handle, checked against its identity."""

    def __init__(self, identity: ProcessIdentity) -> None:
        check_signal_target(identity.pid)
        self.identity = identity
        self._fd: int | None = None
        self._proc: psutil.Process | None = None
        if hasattr(os, "pidfd_open"):
            try:
                self._fd = os.pidfd_open(identity.pid)
            except ProcessLookupError:
                raise
            except OSError:
                self._fd = None  # old kernel: psutil checks (pid, start time) before signalling
        if self._fd is None:
            self._proc = psutil.Process(identity.pid)
        # Read again *after* pinning: the pidfd now names whoever held the PID at that moment.
        if identity.check() is not IdentityStatus.ALIVE:
            self.close()
            raise ProcessLookupError(identity.pid, "the owner ended or its PID was reused")

    def send(self, sig: int) -> None:
        if self._fd is not None:
            signal.pidfd_send_signal(self._fd, sig)
        else:
            assert self._proc is not None
            self._proc.send_signal(sig)

    def wait(self, timeout: float) -> bool:
        """True once the process has ended (a zombie counts: it can never run again)."""
        if self._fd is not None:
            exited = not wait_pidfds([self._fd], time.monotonic() + timeout)
            return exited or self.identity.check() is not IdentityStatus.ALIVE
        assert self._proc is not None
        _, alive = psutil.wait_procs([self._proc], timeout=timeout)
        return not alive

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _shutdown_record(store: SessionStore, session_id: str, since: float) -> dict[str, Any] | None:
    cp = store.latest_checkpoint(session_id, name=_SHUTDOWN_CHECKPOINT)
    if cp is None or cp.created_at < since or not isinstance(cp.data, dict):
        return None
    children = cp.data.get("children") or []
    return {
        "cause": cp.data.get("cause"),
        "children": children,
        "escalated_to_sigkill": cp.data.get("escalated_to_sigkill"),
        "verified_no_orphans": cp.data.get("verified_no_orphans"),
    }


def _alive_children(store: SessionStore, session_id: str) -> list[int]:
    return [
        c.pid
        for c in store.children(session_id)
        if c.identity.check() in (IdentityStatus.ALIVE, IdentityStatus.UNKNOWN)
    ]


def _mark(store: SessionStore, session_id: str, status: SessionStatus) -> str | None:
    """Set the final status unless the session already ended another way; None when not set."""
    current = store.get_session(session_id).status
    if current is status or current in (SessionStatus.COMPLETED, SessionStatus.CRASHED):
        return None
    try:
        store.set_status(session_id, status)
    except InvalidTransitionError as err:
        return f"not marked {status.value}: {err}"
    return None


def _control(args: argparse.Namespace, out: Output, action: str) -> int:
    t0 = time.monotonic()
    wall0 = time.time()
    with open_store(resolve_db(args.db), args.timeout) as store:
        session = resolve_session(store, args.session)
        cands = _candidates(store, session)
        statuses = [
            {"source": c.source, "pid": c.identity.pid, "host": c.host, "identity": c.status()}
            for c in cands
        ]
        live = next(
            (c for c, s in zip(cands, statuses, strict=True) if s["identity"] == "alive"), None
        )
        data: dict[str, Any] = {
            "action": action,
            "session_id": session.id,
            "name": session.name,
            "owner_candidates": statuses,
            # The same owner object as `sessions` and `status` print (pid, start_ticks, boot_id).
            "owner": None if live is None else dump(live.identity),
            "signalled": [],
            "owner_ended": None,
            "waited_s": None,
            "shutdown": None,
            "children_alive": [],
            "reaped": None,
            "status_before": session.status.value,
            "status": None,
            "notes": [],
        }
        notes: list[str] = data["notes"]
        code = EXIT_OK
        if live is not None:
            code = _signal_owner(store, session, live, action, args, data)
        else:
            why = ", ".join(f"{s['source']} pid {s['pid']}: {s['identity']}" for s in statuses)
            notes.append(
                f"owner not running here ({why or 'no owner recorded'}); nothing signalled"
            )
            if any(s["identity"] in ("unknown", "other_host") for s in statuses):
                notes.append("an owner that cannot be verified is never signalled")
        if action == "kill" and data["owner_ended"]:
            args.reap = True  # its children lost their orchestrator without grace
        if args.reap:
            from ..process import reap_orphans

            report = reap_orphans(store, grace_s=args.grace)
            data["reaped"] = dump(report)
        target = {"stop": SessionStatus.STOPPED, "pause": SessionStatus.PAUSED}.get(action)
        if target is not None and data["owner_ended"] is not False:
            note = _mark(store, session.id, target)
            if note:
                notes.append(note)
        data["children_alive"] = _alive_children(store, session.id)
        data["status"] = store.get_session(session.id).status.value
    if data["children_alive"] and code == EXIT_OK:
        notes.append(
            f"{len(data['children_alive'])} recorded child(ren) still running: "
            "`--reap` ends them once their owner is gone"
        )
        code = EXIT_FAILED
    data["elapsed_s"] = round(time.monotonic() - t0, 4)
    data["started_at"] = wall0
    out.result(data, lambda con: _human(con, data))
    return code


def _signal_owner(
    store: SessionStore,
    session: Session,
    owner: _Candidate,
    action: str,
    args: argparse.Namespace,
    data: dict[str, Any],
) -> int:
    notes: list[str] = data["notes"]
    try:
        target = _Target(owner.identity)
    except (ProcessLookupError, psutil.NoSuchProcess):
        data["owner_ended"] = True
        notes.append("the owner ended before it was signalled")
        return EXIT_OK
    except (UnsafeSignalError, PermissionError, psutil.AccessDenied) as err:
        raise CliError(f"{action}: refusing to signal pid {owner.identity.pid}: {err}") from err
    since = time.time()
    try:
        sig = _SIGNALS[action]
        t = time.monotonic()
        try:
            target.send(sig)
        except ProcessLookupError:
            data["owner_ended"] = True
            return EXIT_OK
        except PermissionError as err:
            raise CliError(f"{action}: not allowed to signal pid {owner.identity.pid}") from err
        data["signalled"].append(signal.Signals(sig).name)
        ended = target.wait(args.timeout)
        if not ended and action == "kill":
            # The owner did not end itself in time: SIGKILL it; its orphans are reaped below.
            with contextlib.suppress(ProcessLookupError):
                target.send(signal.SIGKILL)
                data["signalled"].append("SIGKILL")
            ended = target.wait(5.0)
        data["owner_ended"] = ended
        data["waited_s"] = round(time.monotonic() - t, 4)
    finally:
        target.close()
    if not ended:
        notes.append(
            f"owner pid {owner.identity.pid} still running after {args.timeout:g} s "
            "(its grace may be longer: raise --timeout, or `sessionstore kill`)"
        )
        return EXIT_FAILED
    data["shutdown"] = _shutdown_record(store, session.id, since - 1.0)
    if data["shutdown"] is None:
        notes.append("the owner ended without recording a shutdown (not a sessionstore layer?)")
    return EXIT_OK


def _human(con: Console, data: dict[str, Any]) -> None:
    head = f"{data['action']} session {data['session_id']} ({escape(data['name'])}):"
    if data["signalled"]:
        ended = "ended" if data["owner_ended"] else "did NOT end"
        pid = data["owner"]["pid"] if data["owner"] else "-"
        con.print(
            f"{head} sent {'+'.join(data['signalled'])} to owner pid {pid}; "
            f"it {ended} after {data['waited_s']:.2f} s"
        )
    else:
        con.print(head + " nothing signalled")
    sd = data["shutdown"]
    if sd is not None:
        kids = sd["children"]
        outcomes = ", ".join(f"{c.get('pid')} {c.get('outcome')}" for c in kids) or "none"
        verified = "verified" if sd["verified_no_orphans"] else "NOT verified"
        con.print(f"children ended: {len(kids)} ({outcomes}); no orphans {verified}")
    if data["reaped"] is not None:
        n = sum(len(s["children"]) for s in data["reaped"]["sessions"])
        con.print(f"reaped: {len(data['reaped']['sessions'])} orphaned session(s), {n} row(s)")
    con.print(f"status: {data['status_before']} -> {data['status']}")
    for note in data["notes"]:
        con.print(f"note: {escape(note)}")


def cmd_stop(args: argparse.Namespace, out: Output) -> int:
    """``stop SESSION``: graceful shutdown of the owner, session STOPPED."""
    return _control(args, out, "stop")


def cmd_pause(args: argparse.Namespace, out: Output) -> int:
    """``pause SESSION``: graceful shutdown of the owner, session PAUSED (resumable)."""
    return _control(args, out, "pause")


def cmd_kill(args: argparse.Namespace, out: Output) -> int:
    """``kill SESSION``: shutdown without grace; SIGKILL at --timeout; orphans reaped."""
    return _control(args, out, "kill")


def cmd_new(args: argparse.Namespace, out: Output) -> int:
    """``new PATH``: create an empty store (refuses a path that exists)."""
    path = os.path.abspath(args.path)
    if os.path.lexists(path):
        raise CliError(f"{path} already exists (new creates a database, never opens one)", 2)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise CliError(f"no directory {parent}", 2)
    SessionStore.open(path, config=store_config(args.timeout)).close()
    out.result(
        {"db": path, "created": True}, lambda con: con.print(f"created {path}", markup=False)
    )
    return EXIT_OK


def cmd_complete(args: argparse.Namespace, out: Output) -> int:
    """``complete SESSION``: mark the session COMPLETED (no process is signalled)."""
    with open_store(resolve_db(args.db), args.timeout) as store:
        session = resolve_session(store, args.session)
        store.set_status(session.id, SessionStatus.COMPLETED)
        after = store.get_session(session.id)
    data = {"session": dump(after), "previous_status": session.status.value}
    out.result(
        data,
        lambda con: con.print(
            f"session {after.id} ({escape(after.name)}) is {after.status.value} "
            f"(was {session.status.value})"
        ),
    )
    return EXIT_OK
