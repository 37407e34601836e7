"""``sessionstore run -- CMD ARGS...``: any program as a child under the process layer.

The wrapper is the orchestrator, built on the public API only: it opens the store, records a
session (name, argv, cwd), installs a :class:`~sessionstore.ProcessLayer` (subreaper, signal
handlers), spawns the command in its own process group, and lets the layer's one shutdown end
the whole tree, whichever comes first:

* the command exits on its own: what it left running (backgrounded workers, daemons that
  double-forked; the subreaper keeps them findable) is ended, the session is STOPPED;
* SIGINT (Ctrl+C), SIGTERM (systemd, docker, ``timeout``), SIGHUP or SIGQUIT reach the wrapper:
  the layer's shutdown sends SIGTERM to every process group of the tree, waits ``--grace``
  seconds, SIGKILLs what is left and verifies it gone; the session is PAUSED (resumable).
  A second Ctrl+C skips the rest of the grace; a third exits at once. SIGQUIT has no grace.

Signal forwarding policy (compare tini, dumb-init): the stop signals above are not passed on
as they are, they start the ordered shutdown, which signals the whole tree, not only the direct
child. SIGUSR1, SIGUSR2 and SIGWINCH are forwarded unchanged to the command's process group
(reload, log rotation, terminal size). The command is not the terminal's foreground job (it has
its own process group, so Ctrl+C reaches only the wrapper, which then ends the tree in order);
a command that reads from the terminal is therefore stopped by SIGTTIN: run services, builds and
agents under ``run``, not interactive shells.

Exit status: the command's own (0-255); when the command was killed by signal N, or the wrapper
itself was ended by signal N, the wrapper ends by re-raising N (a shell sees 128+N, Popen -N),
the first such signal deciding. 126/127: the command could not be started (as a shell does).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from .._config import StoreConfig
from .._identity import ProcessIdentity, hostname
from .._models import Session
from .._store import SessionStore
from ..errors import SessionStoreError
from ..process import ProcessLayer, ShutdownInProgressError, ShutdownPhase, ShutdownReport
from ..process._os import exit_by_signal
from ._common import CliError, Output, check_database, resolve_db
from ._session import resolve_session

__all__ = ["ENV_SESSION", "RUN_CHECKPOINT", "cmd_run"]

ENV_SESSION = "SESSIONSTORE_SESSION"
"""Set for the command: its session id, so hooks inside it can ``sessionstore log``."""

RUN_CHECKPOINT = "sessionstore.run"
"""The checkpoint ``run`` saves at start: argv, cwd, the wrapper's and the child's identity."""

EXIT_CANNOT_EXECUTE = 126
EXIT_COMMAND_NOT_FOUND = 127

_FORWARDED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT}


def _open_store(db: str, timeout_s: float) -> SessionStore:
    if os.path.exists(db):
        # Never write our schema into an empty file or another application's database.
        check_database(db, timeout_s)
    else:
        parent = os.path.dirname(db)
        if parent:
            os.makedirs(parent, exist_ok=True)  # run, like demo, creates its database
    return SessionStore.open(
        db, config=StoreConfig(busy_timeout_ms=int(timeout_s * 1000), close_timeout_s=2.0)
    )


def _session(store: SessionStore, args: argparse.Namespace, argv: list[str]) -> Session:
    if args.session is None:
        name = args.name or os.path.basename(argv[0]) or "run"
        return store.create_session(
            name, metadata={"run": {"argv": argv, "cwd": os.getcwd(), "host": hostname()}}
        )
    session = resolve_session(store, args.session)
    # The wrapper is the session's orchestrator from now on: `stop`, `reap` and `status` see it
    # as the owner. InvalidTransitionError for a completed session.
    store.resume_session_with_owner(session.id, claim=True)
    return store.get_session(session.id)


def _identity_doc(ident: ProcessIdentity) -> dict[str, Any]:
    return {"pid": ident.pid, "start_ticks": ident.start_ticks, "boot_id": ident.boot_id}


class _Forwarder:
    """Passes SIGUSR1/SIGUSR2/SIGWINCH to the command's process group while it runs."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | subprocess.Popen[str] | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in _FORWARDED:
            self._previous[sig] = signal.signal(sig, self._forward)

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _forward(self, signum: int, _frame: object) -> None:
        proc = self.proc
        # Only while its status is unread: until then the group id cannot name anyone else.
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signum)


def _say(args: argparse.Namespace, message: str, **doc: Any) -> None:
    # stderr, never stdout: stdout is the command's. With --json, one JSON line each.
    if args.quiet:
        return
    line = json.dumps(doc, ensure_ascii=False) if args.json else f"sessionstore: run: {message}"
    with contextlib.suppress(OSError):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def cmd_run(args: argparse.Namespace, out: Output) -> int:
    """``run [--name N] [--grace S] [--session ID] -- CMD ARGS...``: see the module docstring.

    Returns:
        The command's exit status; does not return when a signal decides the exit (see above).

    Raises:
        CliError: no command given, or the database is not usable; nothing was started.
        SessionNotFoundError: ``--session`` names no session.
        InvalidTransitionError: ``--session`` names a completed session.
    """
    argv: list[str] = list(args.cmd)
    if not argv:
        raise CliError("run: no command: sessionstore run [OPTIONS] -- CMD [ARGS...]", 2)
    db = os.path.abspath(resolve_db(args.db))
    # A stop signal between creating the session and installing the layer would kill us by its
    # default action and leave the session active with a dead owner: hold those signals until
    # the layer's handlers are in place, then let a pending one start the ordered shutdown.
    # Unblocked before anything is spawned (a child inherits the mask).
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        store = _open_store(db, args.timeout)
        try:
            session = _session(store, args, argv)
        except BaseException:
            store.close()
            raise
        # exit_on_signal=False: after a signal the layer's thread runs the shutdown, and this
        # thread ends the process by that signal once the report is in (one exit, decided here).
        layer = ProcessLayer(store, session.id, grace_s=args.grace, exit_on_signal=False)
        layer.install()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    forwarder = _Forwarder()
    forwarder.install()
    started: dict[str, Any] = {}

    def log_exit() -> None:
        proc = forwarder.proc
        if proc is None:
            return  # never started: that was logged where it failed
        code = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = proc.wait(timeout=layer.kill_verify_s)
        store.log_event(
            session.id,
            "run: command exited" if code is not None else "run: command did not exit",
            level="info" if code == 0 else "warning",
            data={"pid": started.get("pid"), "exit_code": code},
        )

    layer.on_shutdown(log_exit, phase=ShutdownPhase.AFTER_CHILDREN)
    env = dict(os.environ, **{"SESSIONSTORE_DB": db, ENV_SESSION: session.id})
    code: int | None = None
    try:
        proc = layer.spawn(argv, env=env)
    except ShutdownInProgressError:
        # A stop signal arrived during setup: nothing was started; the same shutdown decides.
        report = layer.shutdown(reason="signalled before the command started")
        forwarder.uninstall()
        layer.uninstall()
        return _finish(args, report, None)
    except OSError as err:
        code = EXIT_COMMAND_NOT_FOUND if isinstance(err, FileNotFoundError) else EXIT_CANNOT_EXECUTE
        store.log_event(
            session.id,
            "run: command could not start",
            level="error",
            data={"argv": argv, "error": f"{err.strerror or err}"},
        )
        _say(
            args,
            f"cannot run {argv[0]!r}: {err.strerror or err}",
            event="not_started",
            session_id=session.id,
            error=str(err.strerror or err),
        )
        report = layer.shutdown(reason="command could not start")
        forwarder.uninstall()
        layer.uninstall()
        return _finish(args, report, code)
    forwarder.proc = proc
    owner = ProcessIdentity.current()
    try:
        child: ProcessIdentity | None = ProcessIdentity.capture(proc.pid)
    except ProcessLookupError:
        # A command that exits at once (`true`) may be gone, and reaped by the layer's exit
        # watcher, before this line; its identity is in the child's row either way.
        child = None
    started.update(pid=proc.pid)
    record = {
        "argv": argv,
        "cwd": os.getcwd(),
        "host": hostname(),
        "owner": _identity_doc(owner),
        "child": None if child is None else _identity_doc(child),
    }
    store.save_checkpoint(session.id, RUN_CHECKPOINT, record)
    store.log_event(session.id, "run: command started", data=record)
    _say(
        args,
        f"session {session.id} ({session.name}): pid {proc.pid}: {' '.join(argv)}",
        event="started",
        session_id=session.id,
        name=session.name,
        pid=proc.pid,
        argv=argv,
    )

    # The command's end on one thread, a signal's shutdown on another: whichever comes first
    # starts the one shutdown, and this thread waits for its report.
    def on_exit() -> None:
        rc = proc.wait()
        with contextlib.suppress(RuntimeError):
            layer.shutdown(reason=f"command exited with status {rc}")

    threading.Thread(target=on_exit, name="sessionstore-run-wait", daemon=True).start()
    # Heartbeats while the command runs, so `status` does not report a long run as stale. The
    # wait is on the shutdown's own event: the loop wakes at once when the tree has ended.
    done = layer.wait(args.heartbeat)
    while done is None:
        if layer.state == "idle":  # once shutdown began the session's last word is its own
            with contextlib.suppress(SessionStoreError):
                store.heartbeat(session.id)
        done = layer.wait(args.heartbeat)
    forwarder.uninstall()
    layer.uninstall()
    return _finish(args, done, proc.returncode)


def _finish(args: argparse.Namespace, report: ShutdownReport, code: int | None) -> int:
    ended = len(report.children) + len(report.descendants)
    orphans = "no orphans (verified)" if report.verified_no_orphans else "orphans NOT verified gone"
    cause = report.cause if report.signal_number else f"status {code}"
    _say(
        args,
        f"ended by {cause}; {ended} process(es) ended; {orphans}",
        event="ended",
        session_id=report.session_id,
        cause=report.cause,
        signal=report.signal_number,
        exit_code=code,
        processes_ended=ended,
        verified_no_orphans=report.verified_no_orphans,
        session_status=None if report.session_status is None else report.session_status.value,
    )
    if report.signal_number:
        exit_by_signal(report.signal_number)  # the first signal decides
    if code is None:
        return 1  # the command could not be verified ended (unkillable): a failure
    if code < 0:
        exit_by_signal(-code)  # the command was killed by a signal: pass that on, as a shell would
    return code
