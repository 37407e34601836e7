"""A worker process of ``python -m sessionstore demo``; one script, four behaviours.

``python -m sessionstore.cli._demo_worker --role ROLE --db PATH --session ID``:

* ``polite``: logs an event every ``--interval``; on SIGTERM closes its store and exits 0.
* ``stubborn``: the same, but ignores SIGTERM, so only SIGKILL ends it.
* ``parent``: starts a ``grandchild`` (same process group) and leaves it behind on SIGTERM,
  like the stop scripts that track only direct children (DESIGN.md incident 5).
* ``grandchild``: writes nothing; waits until a signal ends it.

Each writes ``ready`` on stdout once its signal handling is in place, then lets go of stdout,
so the demo starts its clock only when every worker would react to SIGTERM as designed.
Workers write to the database from their own processes: the demo is several processes writing
one file at once, with the orchestrator owning checkpoints.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
from collections.abc import Sequence

from .._config import StoreConfig
from .._store import SessionStore

__all__ = ["ROLES", "main"]

ROLES = ("polite", "stubborn", "parent", "grandchild")


class _Stop:
    """Set by the SIGTERM handler; the handler only sets a flag (the wakeup fd does the rest)."""

    requested = False


def _on_term(_signum: int, _frame: object) -> None:
    _Stop.requested = True


def _wakeup_pipe() -> int:
    # SIGTERM makes select() return at once through the wakeup fd, so the pacing wait below
    # never delays the reaction to a signal (a plain sleep would finish its interval first).
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    return r


def _ready() -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the demo reads only this line; no pipe kept open
    os.close(devnull)


def _spawn_grandchild(args: argparse.Namespace) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "sessionstore.cli._demo_worker", "--role", "grandchild"]
    argv += ["--db", args.db, "--session", args.session]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def _run_grandchild(wake: int) -> int:
    _ready()
    while True:  # default SIGTERM disposition: the signal itself ends this process
        select.select([wake], [], [])
        os.read(wake, 64)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one demo worker until a signal ends it. Returns its exit code."""
    parser = argparse.ArgumentParser(prog="sessionstore.cli._demo_worker")
    parser.add_argument("--role", choices=ROLES, required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--session", required=True)
    parser.add_argument("--interval", type=float, default=0.25)
    args = parser.parse_args(argv)

    wake = _wakeup_pipe()
    if args.role == "grandchild":
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return _run_grandchild(wake)
    if args.role == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, _on_term)

    # The orchestrator owns checkpoints and the journal replay; workers only write.
    store = SessionStore.open(
        args.db, config=StoreConfig(checkpointing=False, replay_on_open=False)
    )
    grandchild = _spawn_grandchild(args) if args.role == "parent" else None
    if grandchild is not None:
        store.log_event(args.session, f"parent {os.getpid()} started grandchild {grandchild.pid}")
    _ready()
    tick = 0
    while not _Stop.requested:
        tick += 1
        store.log_event(
            args.session, f"{args.role} worker tick {tick}", data={"pid": os.getpid(), "n": tick}
        )
        ready, _, _ = select.select([wake], [], [], args.interval)
        if ready:
            os.read(wake, 64)
    store.log_event(args.session, f"{args.role} worker {os.getpid()} stopping on SIGTERM")
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
