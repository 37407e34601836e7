"""Where one write's CPU time goes: the store's layers measured one by one, beside raw apsw.

Script (the per-op CPU breakdown in README.md)::

    python benchmarks/bench_breakdown.py [--n 20000] [--repeat 5]

Each line is one layer, timed on its own with ``time.process_time`` (CPU, not wall: the
figures survive a loaded machine), best of ``--repeat`` runs of ``--n`` calls, on a live store
in this process: the whole ``log_event`` / ``heartbeat`` call; raw apsw doing the same SQL
(``_raw.py``); raw apsw with a do-nothing Python WAL hook (what the store's commit hook costs
before it does anything); building the op; building the returned ``Event``; the gate's admit
and release; and the writer's transaction for a ready op (lock, retry policy, ``BEGIN`` ...
``COMMIT``, the commit hook), and for a heartbeat the same transaction with no op built (what
an open store runs). It reaches into private modules: a measuring tool, not an API.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import _raw
import apsw

from sessionstore import SessionStore
from sessionstore import _ops as ops_module
from sessionstore._leases import Gate


def best_us(fn: Callable[[int], Any], n: int, repeat: int) -> float:
    """Best CPU microseconds per call of ``fn(i)`` over ``repeat`` runs of ``n`` calls."""
    for i in range(200):
        fn(i)
    best = float("inf")
    for _ in range(repeat):
        c0 = time.process_time()
        for i in range(n):
            fn(i)
        best = min(best, time.process_time() - c0)
    return round(best / n * 1e6, 2)


def _writer_apply(store: SessionStore) -> Callable[[Any], Any]:
    writer = getattr(store, "_writer", None)
    if writer is None:  # the write path moved: find the object that owns apply()
        writer = store._router._writer  # type: ignore[attr-defined]
    return writer.apply  # type: ignore[no-any-return]


def breakdown(folder: str, n: int, repeat: int) -> dict[str, dict[str, float]]:
    """CPU microseconds per call of each layer, for log_event and heartbeat."""
    store = SessionStore.open(os.path.join(folder, "store.db"))
    other = SessionStore.open(os.path.join(folder, "raw.db"))
    raw_sid = other.create_session("raw").id
    other.close()
    raw = _raw.connect(os.path.join(folder, "raw.db"))
    hooked_db = os.path.join(folder, "hooked.db")
    with SessionStore.open(hooked_db) as s:
        hooked_sid = s.create_session("hooked").id
    hooked = _raw.connect(hooked_db)
    hooked.set_wal_hook(lambda _conn, _name, _pages: apsw.SQLITE_OK)
    sid = store.create_session("bench").id
    apply = _writer_apply(store)
    log_event, heartbeat = _raw.store_op(store, "log_event"), _raw.store_op(store, "heartbeat")
    gate: Gate[Any] = Gate(10)
    make_event = getattr(ops_module.LogEvent, "make", None)
    make_heartbeat = getattr(ops_module.Heartbeat, "make", None)
    data = {"step": 1}
    sample = ops_module.LogEvent(session_id=sid, message="step finished", data=data)
    out: dict[str, dict[str, float]] = {}
    try:
        out["log_event"] = {
            "store call": best_us(lambda i: log_event(sid, i), n, repeat),
            "raw apsw, same SQL": best_us(lambda i: _raw.log_event(raw, raw_sid, i), n, repeat),
            "raw + empty WAL hook": best_us(
                lambda i: _raw.log_event(hooked, hooked_sid, i), n, repeat
            ),
            "op, validated": best_us(
                lambda i: ops_module.LogEvent(
                    session_id=sid, message="step finished", level="info", data={"step": i}
                ),
                n,
                repeat,
            ),
            "result Event": best_us(lambda i: ops_module.event_from_op(sample, i), n, repeat),
            "gate admit + release": best_us(
                lambda i: gate.release(gate.admit_write(sample, "w")),  # type: ignore[arg-type]
                n,
                repeat,
            ),
            "writer transaction": best_us(
                lambda i: apply(
                    ops_module.LogEvent(session_id=sid, message="step finished", data=data)
                ),
                n,
                repeat,
            ),
        }
        if make_event is not None:
            out["log_event"]["op, fast constructor"] = best_us(
                lambda i: make_event(sid, "step finished", "info", {"step": i}), n, repeat
            )
        out["heartbeat"] = {
            "store call": best_us(lambda i: heartbeat(sid, i), n, repeat),
            "raw apsw, same SQL": best_us(lambda i: _raw.heartbeat(raw, raw_sid, i), n, repeat),
            "raw + empty WAL hook": best_us(
                lambda i: _raw.heartbeat(hooked, hooked_sid, i), n, repeat
            ),
            "op, validated": best_us(lambda i: ops_module.Heartbeat(session_id=sid), n, repeat),
            "writer transaction": best_us(
                lambda i: apply(ops_module.Heartbeat(session_id=sid)), n, repeat
            ),
        }
        if make_heartbeat is not None:
            out["heartbeat"]["op, fast constructor"] = best_us(
                lambda i: make_heartbeat(sid), n, repeat
            )
        call = getattr(getattr(apply, "__self__", None), "call", None)
        apply_heartbeat = getattr(ops_module, "apply_heartbeat", None)
        if call is not None and apply_heartbeat is not None:
            # What store.heartbeat runs while the store is open: the writer's transaction with
            # no op built (WriteRouter.write_call).
            out["heartbeat"]["writer call, no op"] = best_us(
                lambda i: call("heartbeat", apply_heartbeat, (sid, time.time())), n, repeat
            )
    finally:
        raw.close()
        hooked.close()
        store.close()
    return out


def test_breakdown_runs(tmp_path: Any) -> None:
    """The breakdown runs end to end (a tiny run: the script measures)."""
    result = breakdown(str(tmp_path), 20, 1)
    assert result["heartbeat"]["store call"] > 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps({"load": os.getloadavg()}), flush=True)
    with tempfile.TemporaryDirectory(prefix="ss-bench-") as folder:
        for op, layers in breakdown(folder, args.n, args.repeat).items():
            print(json.dumps({"op": op, "cpu_us": layers}), flush=True)
    print(json.dumps({"load_after": os.getloadavg()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
