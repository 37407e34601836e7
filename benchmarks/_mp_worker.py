"""One benchmark worker process: ``python benchmarks/_mp_worker.py KIND SPEC_JSON``.

Kinds: ``sessionstore`` / ``raw`` (log an event per op, through the store or raw apsw with the
same SQL in ``BEGIN IMMEDIATE``), ``diskcache`` (``Cache.set``), ``reader`` (poll new events, as a
dashboard tailing the log would), ``orchestrator`` (store + process layer, for its RSS),
``pager`` (read one session's events page by page, sampling RSS).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def _barrier() -> None:
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit(3)


def _timed(op: Any, seconds: float, errors: tuple[type[BaseException], ...]) -> dict[str, Any]:
    lat: list[float] = []
    n_err = 0
    c0 = time.process_time()  # every thread of this process: the store's own threads too
    t0 = time.perf_counter()
    end = t0 + seconds
    i = 0
    while True:
        start = time.perf_counter()
        if start >= end:
            break
        i += 1
        try:
            op(i)
        except errors:
            n_err += 1
        lat.append(time.perf_counter() - start)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return {"ops": len(lat), "errors": n_err, "lat": lat, "elapsed": elapsed, "cpu": cpu}


def sessionstore(spec: dict[str, Any]) -> dict[str, Any]:
    from sessionstore import SessionStore, StoreConfig

    store = SessionStore.open(spec["db"], config=StoreConfig(**spec.get("config", {})))
    sid = spec["sid"]
    _barrier()
    out = _timed(
        lambda i: store.log_event(sid, "step finished", data={"step": i}),
        spec["seconds"],
        (Exception,),
    )
    # A write that hit the retry deadline is journaled, not raised: count it as an error too.
    out["errors"] += store.stats().journaled
    store.close()
    return out


def raw(spec: dict[str, Any]) -> dict[str, Any]:
    import _raw
    import apsw

    config = spec.get("config", {})
    conn = _raw.connect(
        spec["db"],
        busy=config.get("busy_handler", "sqlite"),
        synchronous=config.get("synchronous", "NORMAL"),
    )
    sid = spec["sid"]
    _barrier()
    out = _timed(lambda i: _raw.log_event(conn, sid, i), spec["seconds"], (apsw.BusyError,))
    conn.close()
    return out


def diskcache(spec: dict[str, Any]) -> dict[str, Any]:
    import diskcache as dc  # type: ignore[import-untyped]

    cache = dc.Cache(spec["dir"])
    me = spec["index"]
    _barrier()
    out = _timed(
        lambda i: cache.set(f"{me}-{i}", {"step": i, "msg": "step finished"}),
        spec["seconds"],
        (Exception,),
    )
    cache.close()
    return out


def reader(spec: dict[str, Any]) -> dict[str, Any]:
    from sessionstore import SessionStore

    store = SessionStore.open(spec["db"])
    after: dict[str, int | None] = dict.fromkeys(spec["sids"])
    _barrier()

    def poll(_i: int) -> None:
        for sid, last in after.items():
            page = store.events(sid, after_id=last, limit=1000)
            if page:
                after[sid] = page[-1].id
        time.sleep(spec.get("interval", 0.01))  # a polling reader's own pace

    out = _timed(poll, spec["seconds"], ())
    store.close()
    return out


def orchestrator(spec: dict[str, Any]) -> dict[str, Any]:
    import resource

    import psutil

    from sessionstore import SessionStore
    from sessionstore.process import ProcessLayer

    store = SessionStore.open(spec["db"])
    sid = store.create_session("rss").id
    layer = ProcessLayer(store, sid, grace_s=1.0)
    layer.install()
    for _ in range(spec["children"]):
        layer.spawn(["sleep", "60"])
    for i in range(spec["events"]):
        store.log_event(sid, "step finished", data={"step": i})
        if i % 100 == 0:
            store.heartbeat(sid)
            store.save_checkpoint(sid, "progress", {"step": i})
    rss = psutil.Process().memory_info().rss
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _barrier()
    report = layer.shutdown("benchmark done")
    return {
        "rss_mib": round(rss / 2**20, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "shutdown_s": round(report.duration_s, 3),
        "ops": 0,
        "errors": 0,
        "lat": [],
        "elapsed": 0.0,
    }


def pager(spec: dict[str, Any]) -> dict[str, Any]:
    import gc

    import psutil

    from sessionstore import SessionStore

    me = psutil.Process()
    store = SessionStore.open(spec["db"])
    sid = spec["sid"]
    page = store.events(sid, limit=spec["page"])
    _barrier()
    rss = [me.memory_info().rss]
    seen = len(page)
    t0 = time.perf_counter()
    pages = 1
    while page:
        page = store.events(sid, after_id=page[-1].id, limit=spec["page"])
        seen += len(page)
        pages += 1
        if pages % spec["sample_every"] == 0:
            rss.append(me.memory_info().rss)
    elapsed = time.perf_counter() - t0
    gc.collect()
    rss.append(me.memory_info().rss)
    store.close()
    return {
        "events": seen,
        "pages": pages,
        "rss_mib": [round(r / 2**20, 1) for r in rss],
        "elapsed": elapsed,
        "ops": 0,
        "errors": 0,
        "lat": [],
    }


def main() -> int:
    kind, spec = sys.argv[1], json.loads(sys.argv[2])
    result = {
        "sessionstore": sessionstore,
        "raw": raw,
        "diskcache": diskcache,
        "reader": reader,
        "orchestrator": orchestrator,
        "pager": pager,
    }[kind](spec)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
