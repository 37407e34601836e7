"""OpenAI Agents SDK sessions side by side: the official SQLiteSession and SessionStoreSession.

``python benchmarks/bench_agents.py [--procs 1 4 16] [--seconds 3] [--rounds 1] [--read-every 5]``

For each session class and process count, that many processes (each its own interpreter,
released together through a stdin barrier) run one conversation each on one shared file for
``--seconds``: ``add_items`` with one turn as the SDK's ``Runner`` writes it (the user's
message, then the assistant's output message), and every ``--read-every``-th op
``get_items(limit=20)``, as a new turn reads its history. Per configuration it prints one JSON
line: ops, errors and their kinds (an exception from the session, by type and message), p50/p99
and worst single op, fairness (the slowest process's ops over the fastest's), and whether every
acknowledged item is there afterwards: each conversation is read back through the same class,
in a fresh process state, after every worker has closed; ``acked_items`` are the items of the
batches whose ``add_items`` returned, ``missing`` those of them not read back.

Both sides get the same payloads, the same duration, a fresh file per run, and run in turn
(official, then ours) at each process count and round, so a drift of the machine's speed hits
both. The load average is printed before the runs and with each run.

Needs ``openai-agents`` (the ``openai-agents`` extra). The official session opens its file with
the stdlib ``sqlite3``, never in a process that uses apsw on it (each side has its own file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _mp import contention, kill_all, machine, release_and_collect, start_commands

KINDS = ("official-sqlite", "sessionstore")
USER_TEXT = "Summarise the open incidents of the payments service and propose the next step. " * 2
ANSWER_TEXT = (
    "Two incidents are open: INC-1042 (elevated 502s from the card gateway since 09:12 UTC, "
    "mitigated by a retry budget) and INC-1047 (a slow settlement batch, 40 min behind). "
    "Next step: page the gateway owner and hold the batch until the backlog drains. "
) * 2


def turn(proc: int, n: int) -> list[dict[str, Any]]:
    """One turn as the SDK's Runner stores it: the user's input item and the model's message.

    The tag ``<proc>-<n>`` in each item lets the check afterwards find every acknowledged one.
    """
    return [
        {"role": "user", "content": f"[{proc}-{n}] {USER_TEXT}"},
        {
            "id": f"msg_{proc}-{n}",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": ANSWER_TEXT, "annotations": []}],
        },
    ]


def _tags(items: list[Any]) -> set[tuple[str, str]]:
    """The (role, tag) of every item this benchmark wrote, as read back."""
    found = set()
    for item in items:
        if item.get("role") == "user":
            found.add(("user", item["content"][1 : item["content"].index("]")]))
        elif item.get("role") == "assistant":
            found.add(("assistant", item["id"].removeprefix("msg_")))
    return found


def _session(kind: str, db: str, conversation: str) -> tuple[Any, Any]:
    """The session and the function that closes what it holds."""
    if kind == "official-sqlite":
        from agents import SQLiteSession

        official = SQLiteSession(conversation, db)
        return official, official.close
    from sessionstore import SessionStore
    from sessionstore.integrations.openai_agents import SessionStoreSession

    store = SessionStore.open(db)
    return SessionStoreSession(conversation, store), store.close


async def _loop(session: Any, proc: int, seconds: float, read_every: int) -> dict[str, Any]:
    latencies: list[float] = []
    kinds: Counter[str] = Counter()
    acked: list[int] = []
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
        items = turn(proc, n)  # built outside the timed part, as the Runner has them ready
        t0 = time.perf_counter()
        try:
            if n % read_every == 0:
                await session.get_items(limit=20)
            else:
                await session.add_items(items)
                acked.append(n)
        except Exception as err:
            kinds[f"{type(err).__name__}: {err}"] += 1
        latencies.append(time.perf_counter() - t0)
    errors = sum(kinds.values())
    return {"ops": n - errors, "errors": errors, "kinds": kinds, "acked": acked, "lat": latencies}


def worker(spec: dict[str, Any]) -> None:
    """One process: open, say ready, wait for go, run its conversation, close, print figures."""
    session, close = _session(spec["kind"], spec["db"], f"conversation-{spec['proc']}")
    print("ready", flush=True)
    sys.stdin.readline()
    result = asyncio.run(_loop(session, spec["proc"], spec["seconds"], spec["read_every"]))
    close()
    print(json.dumps(result))


def _read_back(kind: str, db: str, procs: int) -> list[set[tuple[str, str]]]:
    """Every conversation's items, read through the same class after all workers closed."""

    async def read(session: Any) -> set[tuple[str, str]]:
        return _tags(await session.get_items())

    found = []
    for proc in range(procs):
        session, close = _session(kind, db, f"conversation-{proc}")
        found.append(asyncio.run(read(session)))
        close()
    return found


def run(kind: str, procs: int, seconds: float, read_every: int, db: str) -> dict[str, Any]:
    """One configuration: ``procs`` processes on the new file ``db``."""
    load = os.getloadavg()[0]
    _session(kind, db, "setup")[1]()  # schema / migration once, outside the timed part
    specs = [
        {"kind": kind, "db": db, "proc": i, "seconds": seconds, "read_every": read_every}
        for i in range(procs)
    ]
    commands = [[sys.executable, __file__, "worker", json.dumps(spec)] for spec in specs]
    workers = start_commands(kind, commands)
    try:
        results = release_and_collect(workers, timeout=seconds + 120)
    finally:
        kill_all(workers)
    found = _read_back(kind, db, procs)
    acked = [
        {(role, f"{i}-{n}") for n in r["acked"] for role in ("user", "assistant")}
        for i, r in enumerate(results)
    ]
    kinds: Counter[str] = Counter()
    for r in results:
        kinds.update(r["kinds"])
    return {
        "session": kind,
        "procs": procs,
        "seconds": seconds,
        "ops": sum(r["ops"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "error_kinds": dict(kinds),
        **contention([r["ops"] for r in results], [x for r in results for x in r["lat"]]),
        "acked_items": sum(len(a) for a in acked),
        "present_items": sum(len(f) for f in found),
        "missing": sum(len(a - f) for a, f in zip(acked, found, strict=True)),
        "load_before_after": [round(load, 2), round(os.getloadavg()[0], 2)],
    }


@pytest.mark.parametrize("kind", KINDS)
def test_side_by_side_runs(tmp_path: Path, kind: str) -> None:
    """A short run of each side: two processes write, every acknowledged item is read back."""
    pytest.importorskip("agents")
    row = run(kind, 2, 0.3, 5, str(tmp_path / "s.db"))
    assert row["ops"] > 0
    assert row["acked_items"] > 0
    assert row["missing"] == 0
    assert row["present_items"] >= row["acked_items"]


def main() -> None:
    """Run both sessions at every process count, in turn, and print one JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--read-every", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps({"machine": machine(), "load": os.getloadavg()}), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for rnd in range(args.rounds):
            for procs in args.procs:
                for kind in KINDS:
                    db = os.path.join(folder, f"{kind}-{procs}-{rnd}.db")
                    row = run(kind, procs, args.seconds, args.read_every, db)
                    print(json.dumps({"round": rnd, **row}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(json.loads(sys.argv[2]))
    else:
        main()
