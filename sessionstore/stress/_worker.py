"""One orchestrator of the stress harness: ``python -m sessionstore.stress._worker SPEC_JSON``.

It opens the database, creates its session, starts its children, tells the harness it is
ready, then writes events, heartbeats and checkpoints in a loop. When the storm's SIGTERM
starts the shutdown sequence, the loop stops (the orchestrator stops accepting work; with
``write_during_shutdown`` it goes on), the shutdown callbacks write too, and the process layer
ends the process by the signal. Every write the store acknowledged is appended to the
worker's ack file at once (``os.write`` on an ``O_APPEND`` descriptor: in the kernel before the
next write starts, so it survives the process dying by a signal), which is how the harness
later proves nothing acknowledged was lost. Ack lines::

    S <session_id>            the session was created
    K <pid>                   a child was started
    E <op_id>                 an event was acknowledged
    H <unix time>             a heartbeat made at or after this time was acknowledged
    C <checkpoint_id>         a checkpoint was acknowledged
    T <unix time>             the shutdown sequence began
    X <kind> <message>        a write call raised

Readiness goes through the harness's FIFO, never a sleep: the worker writes ``R <index> <pid>``
and each child writes ``G <index> <pid> <grandchild pid or ->`` once it is set up.

``baseline == "sessionstore"`` uses SessionStore and ProcessLayer as documented. ``"naive"``
uses :class:`~sessionstore.stress._naive.NaiveStore`, plain ``Popen`` children in the worker's own
process group, and a SIGTERM handler that does its cleanup inside the handler, closing the
database before it deals with the children.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any

import apsw

from ._models import WorkerSpec

__all__ = ["AckLog", "child_argv", "main"]

# How often, in loop iterations, the slower kinds of write happen.
_HEARTBEAT_EVERY = 10
_CHECKPOINT_EVERY = 25

# Children are tiny shells, not Python: 32 orchestrators x K children must start fast on 2 cores.
# $1 is the harness FIFO, $2 the worker index, $3 the lifetime in seconds (so a child that
# escapes every cleanup still ends on its own). The grandchild's stdio goes to /dev/null so it
# holds nothing of ours open.
_PLAIN = 'echo "G $2 $$ -" > "$1"; exec sleep "$3"'
_WITH_GRANDCHILD = 'sleep "$3" </dev/null >/dev/null 2>&1 & echo "G $2 $$ $!" > "$1"; wait'
# An ignored signal stays ignored across fork and exec: the grandchild ignores SIGTERM too.
_STUBBORN = f'trap "" TERM; {_WITH_GRANDCHILD}'


def child_argv(number: int, *, stubborn: int, worker: int, fifo: str, lifetime_s: int) -> list[str]:
    """The command line of a worker's child ``number``.

    The first ``stubborn`` children ignore SIGTERM (and so does their grandchild); the others
    alternate between having a grandchild (even numbers) and being a lone ``sleep``.
    """
    if number < stubborn:
        script = _STUBBORN
    elif (number - stubborn) % 2 == 0:
        script = _WITH_GRANDCHILD
    else:
        script = _PLAIN
    return ["/bin/sh", "-c", script, "sh", fifo, str(worker), str(lifetime_s)]


class AckLog:
    """The worker's append-only record of acknowledged writes (one ``os.write`` per line)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def line(self, *parts: object) -> None:
        """Append one line; short lines on ``O_APPEND`` are written whole."""
        text = " ".join(str(p) for p in parts).replace("\n", " ")
        os.write(self._fd, (text[:1000] + "\n").encode("utf-8", "replace"))


def _announce(fifo: str, line: str) -> None:
    # The harness holds the FIFO open for reading and writing, so this open never blocks.
    fd = os.open(fifo, os.O_WRONLY)
    try:
        os.write(fd, (line + "\n").encode("ascii"))
    finally:
        os.close(fd)


def _pace(rate: float, stop: threading.Event) -> Callable[[], None]:
    """Return a function that keeps the loop at ``rate`` iterations per second (0: no pacing).

    The wait is ``stop.wait``: it paces the load, and ends at once when the loop must stop.
    """
    if rate <= 0:
        return lambda: None
    interval = 1.0 / rate
    next_at = time.monotonic()

    def wait() -> None:
        nonlocal next_at
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        elif delay < -1.0:
            next_at = time.monotonic()  # far behind (CPU starved): do not try to catch up

    return wait


def _write_loop(
    acks: AckLog,
    rate: float,
    stop: threading.Event,
    *,
    event: Callable[[int], str],
    heartbeat: Callable[[], None],
    checkpoint: Callable[[int], str],
    expected: tuple[type[BaseException], ...],
) -> None:
    """Write until ``stop`` is set; acknowledged writes go to ``acks``, ``expected`` errors too."""
    pace = _pace(rate, stop)
    i = 0
    while not stop.is_set():
        i += 1
        try:
            acks.line("E", event(i))
            if i % _HEARTBEAT_EVERY == 0:
                before = time.time()
                heartbeat()
                acks.line("H", repr(before))
            if i % _CHECKPOINT_EVERY == 0:
                acks.line("C", checkpoint(i))
        except expected as err:
            acks.line("X", type(err).__name__, err)
            print(f"write failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        pace()


def _shutdown_began(spec: WorkerSpec, acks: AckLog) -> None:
    """Note when shutdown began; arm a stack dump for the case it never ends.

    If the process is still alive just before the harness's deadline, faulthandler writes
    every thread's stack to stderr (from its own C thread, whatever the interpreter is doing),
    so a hung orchestrator's report says where it hung.
    """
    acks.line("T", repr(time.time()))
    faulthandler.dump_traceback_later(spec.hang_dump_s, exit=False)


def _run_sessionstore(spec: WorkerSpec, acks: AckLog) -> None:
    from .. import SessionStore, StoreConfig
    from ..process import ProcessLayer

    store = SessionStore.open(spec.db_path, config=StoreConfig())
    sid = store.create_session(
        f"stress-{spec.index}", metadata={"stress_run": spec.run_id, "index": spec.index}
    ).id
    acks.line("S", sid)
    layer = ProcessLayer(store, sid, grace_s=spec.grace_s, kill_verify_s=spec.kill_verify_s)
    stop = threading.Event()

    def stop_accepting_work() -> None:
        _shutdown_began(spec, acks)
        if not spec.write_during_shutdown:
            stop.set()

    def log_from_shutdown(phase: str) -> Callable[[], None]:
        return lambda: acks.line("E", store.log_event(sid, phase).op_id)

    layer.on_shutdown(stop_accepting_work, phase="before_children")
    # Writes from the shutdown sequence itself: the store is open until after before_close.
    for phase in ("after_children", "before_close"):
        layer.on_shutdown(log_from_shutdown(phase), phase=phase)
    layer.install()
    for n in range(spec.children):
        argv = child_argv(
            n,
            stubborn=spec.stubborn,
            worker=spec.index,
            fifo=spec.fifo_path,
            lifetime_s=spec.child_lifetime_s,
        )
        proc = layer.spawn(argv, stdin=subprocess.DEVNULL)
        acks.line("K", proc.pid)
    _announce(spec.fifo_path, f"R {spec.index} {os.getpid()}")

    def event(i: int) -> str:
        return store.log_event(sid, "tick", data={"i": i}).op_id

    def checkpoint(i: int) -> str:
        return store.save_checkpoint(sid, "progress", {"i": i}).id

    # Any exception from a write is a finding: the contract says writes never raise.
    _write_loop(
        acks,
        spec.rate,
        stop,
        event=event,
        heartbeat=lambda: store.heartbeat(sid),
        checkpoint=checkpoint,
        expected=(Exception,),
    )
    # The last word of the main thread races the shutdown sequence: applied, queued or
    # journaled, it must not be lost.
    acks.line("E", store.log_event(sid, "main loop stopped").op_id)
    layer.wait()  # the layer ends this process by the signal; returning is a bad exit


def _run_naive(spec: WorkerSpec, acks: AckLog) -> None:
    from ._naive import NaiveStore

    store = NaiveStore(spec.db_path, batch=spec.naive_batch)
    sid = store.create_session(
        f"naive-{spec.index}", {"stress_run": spec.run_id, "index": spec.index}
    )
    acks.line("S", sid)
    children: list[subprocess.Popen[bytes]] = []
    for n in range(spec.children):
        argv = child_argv(
            n,
            stubborn=spec.stubborn,
            worker=spec.index,
            fifo=spec.fifo_path,
            lifetime_s=spec.child_lifetime_s,
        )
        # Same process group as the orchestrator, tracked by PID only.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        children.append(proc)
        store.add_child(sid, proc.pid, argv)
        acks.line("K", proc.pid)

    def on_term(signum: int, frame: FrameType | None) -> None:
        # The usual handler: all the work inside it, in the wrong order.
        _shutdown_began(spec, acks)
        store.set_status(sid, "paused")  # may spin forever on a stale snapshot
        store.close()  # the database goes first ...
        for child in children:
            child.terminate()  # ... the direct child only, never its tree ...
            store.remove_child(sid, child.pid)  # ... and this raises: the connection is closed
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    _announce(spec.fifo_path, f"R {spec.index} {os.getpid()}")

    def event(i: int) -> str:
        return store.log_event(sid, "tick", {"i": i})

    def checkpoint(i: int) -> str:
        return store.save_checkpoint(sid, "progress", {"i": i})

    # Only BUSY is handled, as such code usually does; anything else propagates.
    _write_loop(
        acks,
        spec.rate,
        threading.Event(),  # never set: the naive handler ends the process from inside it
        event=event,
        heartbeat=lambda: store.heartbeat(sid),
        checkpoint=checkpoint,
        expected=(apsw.BusyError,),
    )


def main(argv: list[str] | None = None) -> int:
    """Run one orchestrator from the JSON spec in ``argv[0]``.

    Normally this never returns: the exit storm's signal ends the process.

    Returns:
        2 for a bad command line; 1 when an exception escaped (its traceback is on stderr:
        a failed setup, or the naive handler crashing); 0 when the run ended without the
        signal ending the process (a wrong exit status, reported by the harness).
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m sessionstore.stress._worker SPEC_JSON", file=sys.stderr)
        return 2
    spec = WorkerSpec.model_validate_json(args[0])
    # Library warnings (writes journaled, lost grace) must reach the harness's stderr scan.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    acks = AckLog(spec.ack_path)
    runner: dict[str, Callable[[WorkerSpec, AckLog], Any]] = {
        "sessionstore": _run_sessionstore,
        "naive": _run_naive,
    }
    try:
        runner[spec.baseline](spec, acks)
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
