"""A process that writes in a loop while its own signal handler raises into it every ~0.2 ms.

``python tests/_pester.py DB SESSION_ID SECONDS RESULT_PATH``: a thread sends this process
SIGUSR1 every ~0.2 ms; the handler raises ``KeyboardInterrupt`` into whatever the main thread is
running, at any bytecode of a write (a heartbeat, then an event, in turns). The loop catches it
and goes on. When the time is up it writes what it saw to RESULT_PATH as JSON (acknowledged op
ids, interruptions, other errors, and whether the WAL bound still acts: its checkpoints while
200 KB more are written), prints ``done`` and, with the store still open, waits for a line on
stdin before closing.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import threading
import time
from types import FrameType

from sessionstore import SessionStore, StoreConfig

# The handler raises only while a write call is under way (``armed``) and disarms itself before
# raising: the exception can land anywhere inside the store's write, never in this loop's own
# bookkeeping, so the loop itself is not what the test measures.
armed = False


def _raise(_signum: int, _frame: FrameType | None) -> None:
    global armed
    if armed:
        armed = False
        raise KeyboardInterrupt


def main(db: str, session_id: str, seconds: str, result_path: str) -> None:
    global armed
    # A hang anywhere becomes a traceback on stderr and exit status 1, not a silent timeout.
    faulthandler.dump_traceback_later(float(seconds) + 30, exit=True)
    # A small WAL bound: RESTART checkpoints run (and are interrupted) during the storm too.
    config = StoreConfig(close_timeout_s=1.0, checkpoint_wal_bytes=64 * 1024)
    store = SessionStore.open(db, config=config)
    signal.signal(signal.SIGUSR1, _raise)
    stop = threading.Event()

    def pester() -> None:
        pid = os.getpid()
        # Pacing of the pestering, not a synchronisation: one signal per ~0.2 ms.
        while not stop.wait(0.0002):
            os.kill(pid, signal.SIGUSR1)

    thread = threading.Thread(target=pester, daemon=True)
    thread.start()
    acked: list[str] = []
    errors: list[str] = []
    interrupted = 0
    end = time.monotonic() + float(seconds)
    while time.monotonic() < end:
        armed = True
        try:
            store.heartbeat(session_id)
            armed = True
            event = store.log_event(session_id, "pestered")
            armed = False
            acked.append(event.op_id)
        except KeyboardInterrupt:
            interrupted += 1
        except Exception as err:
            armed = False
            errors.append(f"{type(err).__name__}: {err}")
    stop.set()
    thread.join()
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:  # a write after the storm must still be applied, not raise
        acked.append(store.log_event(session_id, "after the storm").op_id)
        # ... and the WAL bound must still act, wherever a signal landed: 200 KB, three
        # times the bound.
        before = store.stats().checkpoints
        for i in range(100):
            acked.append(store.log_event(session_id, f"after {i}", data={"pad": "x" * 2000}).op_id)
        bound_checkpoints = store.stats().checkpoints - before
    except Exception as err:
        errors.append(f"after: {type(err).__name__}: {err}")
        bound_checkpoints = -1
    with open(result_path, "w", encoding="utf-8") as out:
        json.dump(
            {
                "acked": acked,
                "interrupted": interrupted,
                "errors": errors[:20],
                "n_errors": len(errors),
                "bound_checkpoints": bound_checkpoints,
            },
            out,
        )
    print("done", flush=True)
    sys.stdin.readline()
    store.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
