"""Processes for the group-commit tests: a full disk, and SIGINT storms on the main thread.

``python tests/_group_worker.py full_disk DB``: six threads queue one transaction (the writer's
lock is held until all six are queued) whose ops cannot fit under RLIMIT_FSIZE; prints, as
JSON, each thread's outcome and whether a small op alone still commits afterwards.

``python tests/_group_worker.py sigint DB ROUNDS``: per round, three threads write while the
main thread writes too and a fourth thread sends this process real SIGINTs every ~0.2 ms; the
handler raises ``KeyboardInterrupt`` into the main thread only while it is inside a write
(``armed``), so the exception lands at any bytecode of a write it may be leading. After each
round it checks that no thread hung and that no lock, queue entry or transaction was left
behind, and prints one JSON line per round (acknowledged op ids included); then ``done``.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from sessionstore import SessionStore, StoreConfig
from sessionstore._group import GroupWriter
from sessionstore._ops import LogEvent

FULL_GROUP = {"synchronous": "FULL", "group_commit": True}


def _spin_until(predicate: Any) -> None:
    # Waits on the state itself (no sleep); pytest-timeout in the parent bounds a bug.
    while not predicate():
        pass


def full_disk(db: str) -> None:
    """Six ops in one transaction on a disk that cannot take them: every one fails alike."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    store = SessionStore.open(db, config=StoreConfig(checkpointing=False, **FULL_GROUP))  # type: ignore[arg-type]
    sid = store.create_session("full").id
    store.checkpoint("TRUNCATE")  # the WAL is empty: the transaction needs it to grow
    writer = store._writer
    assert isinstance(writer, GroupWriter)
    limit = max(os.path.getsize(db), 64 * 1024)
    ops = [
        LogEvent(
            session_id=sid,
            message=f"batched {i}",
            data={"blob": "x" * (4 * limit)} if i % 2 == 0 else {"small": i},
        )
        for i in range(6)
    ]
    outcomes: list[str] = [""] * len(ops)

    def write(i: int) -> None:
        try:
            writer.apply(ops[i])
            outcomes[i] = "acknowledged"
        except Exception as err:
            outcomes[i] = type(err).__name__

    writer._lead.acquire()  # as if a commit were in flight: all six queue
    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(ops))]
    for thread in threads:
        thread.start()
    _spin_until(lambda: len(writer._queue) == len(ops))
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    writer._lead.release()  # one of them takes the lead within POLL_S and all six with it
    for thread in threads:
        thread.join(60)
    control = LogEvent(session_id=sid, message="alone after")
    writer.apply(control)  # a small op alone still fits: the limit failed the batch only
    print(
        json.dumps(
            {
                "outcomes": outcomes,
                "op_ids": [op.op_id for op in ops],
                "control": control.op_id,
                "sid": sid,
                "commits_with_several": writer.group_commits,
            }
        ),
        flush=True,
    )
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    store.close()


armed = False


def _raise(_signum: int, _frame: FrameType | None) -> None:
    global armed
    if armed:
        armed = False
        raise KeyboardInterrupt


def _storm_round(
    store: SessionStore, writer: GroupWriter, sid: str, round_no: int
) -> dict[str, Any]:
    """One round: three writer threads, the main thread writing under a SIGINT storm."""
    global armed
    pid = os.getpid()
    acked: list[str] = []
    errors: list[str] = []
    journaled_before = store.stats().journaled
    stop = threading.Event()

    def follow(tag: int) -> None:
        for i in range(40):
            try:
                acked.append(store.log_event(sid, f"r{round_no} t{tag} {i}").op_id)
            except Exception as err:
                errors.append(f"{type(err).__name__}: {err}")

    def pester() -> None:
        # Pacing of the storm, not a synchronisation: one SIGINT per ~0.2 ms.
        while not stop.wait(0.0002):
            os.kill(pid, signal.SIGINT)

    followers = [threading.Thread(target=follow, args=(t,)) for t in range(3)]
    storm = threading.Thread(target=pester)
    for thread in followers:
        thread.start()
    storm.start()
    interrupted = 0
    while any(thread.is_alive() for thread in followers):
        armed = True
        try:
            event = store.log_event(sid, f"r{round_no} main")
            armed = False
            acked.append(event.op_id)
        except KeyboardInterrupt:
            interrupted += 1
        except Exception as err:
            armed = False
            errors.append(f"main {type(err).__name__}: {err}")
    armed = False
    stop.set()
    storm.join()
    for thread in followers:
        thread.join(30)
    left = {
        "lead": writer._lead.locked(),
        "writer_lock": writer._lock.locked(),
        "queued": len(writer._queue),
        "in_transaction": bool(writer._conn is not None and writer._conn.txn_state()),
    }
    after = store.log_event(sid, f"r{round_no} after")  # applied, not journaled
    return {
        "round": round_no,
        "hung": sum(thread.is_alive() for thread in followers),
        "left": left,
        "after_applied": after.id is not None,
        "errors": errors[:5],
        "interrupted": interrupted,
        "journaled": store.stats().journaled - journaled_before,
        "acked": [*acked, after.op_id],
    }


def sigint(db: str, rounds: str) -> None:
    """SIGINT storms at the main thread while it writes among threads; a line per round."""
    faulthandler.dump_traceback_later(240, exit=True)  # a hang: a traceback, exit status 1
    config = StoreConfig(write_deadline_s=5.0, close_timeout_s=1.0, **FULL_GROUP)  # type: ignore[arg-type]
    store = SessionStore.open(db, config=config)
    writer = store._writer
    assert isinstance(writer, GroupWriter)
    sid = store.create_session("sigint").id
    signal.signal(signal.SIGINT, _raise)
    for round_no in range(int(rounds)):
        print(json.dumps(_storm_round(store, writer, sid, round_no)), flush=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    store.close()
    print(json.dumps({"done": True, "sid": sid}), flush=True)


if __name__ == "__main__":
    {"full_disk": full_disk, "sigint": sigint}[sys.argv[1]](*sys.argv[2:])
