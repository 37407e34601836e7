"""A small orchestrator for the process-layer tests: ``python orchestrator.py DB [options]``.

It opens the store, creates a session, installs a ProcessLayer, starts the children asked for,
prints ``READY {json}`` (session id and child pids) and then blocks its main thread the way it
was told to, so the test can signal it. Options are documented in ``--help``.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from sessionstore import ProcessIdentity, SessionStore, StoreConfig
from sessionstore._identity import boot_id
from sessionstore.process import ProcessLayer, ShutdownPhase

HERE = Path(__file__).parent
IGNORE_TERM = "trap '' TERM; echo ready; exec sleep 600"
SHELL_TREE = "sleep 600 & sleep 600 & echo ready; wait"
# The inner shell leaves the group and session first, then reports its pid; the outer shell
# exits at once, so the escapee loses its parent (and is re-parented to us, the subreaper).
ESCAPEE = "setsid sh -c 'echo $$; exec sleep 600' & exit 0"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("db")
    p.add_argument("--grace", type=float, default=5.0)
    p.add_argument("--callback-timeout", type=float, default=5.0)
    p.add_argument("--coop", type=int, default=0, help="children that exit on SIGTERM")
    p.add_argument("--ignore-term", type=int, default=0, help="children that ignore SIGTERM")
    p.add_argument("--shell-tree", action="store_true", help="a shell with two grandchildren")
    p.add_argument("--escapee", action="store_true", help="a grandchild that setsids away")
    p.add_argument("--stubborn", action="store_true", help="child reporting SIGTERM on notify-fd")
    p.add_argument("--notify-fd", type=int, default=-1)
    p.add_argument("--callbacks", help="file each phase's callback appends its name to")
    p.add_argument("--raising-callback", action="store_true")
    p.add_argument("--blocking-callback", action="store_true", help="after_children blocks")
    p.add_argument(
        "--blocking-phase",
        choices=[ph.value for ph in ShutdownPhase],
        default=ShutdownPhase.AFTER_CHILDREN.value,
        help="the phase whose callback --blocking-callback blocks",
    )
    p.add_argument("--mismatch-pid", type=int, default=0, help="record this pid, wrong identity")
    p.add_argument(
        "--block",
        choices=["stdin", "sqlite", "select", "return", "pause", "pause-loop"],
        default="stdin",
        help="how the main thread waits: return = exit right after READY, pause = one "
        "signal.pause() then return, pause-loop = signal.pause() forever",
    )
    p.add_argument(
        "--user-handler",
        choices=["raise", "exit", "seed"],
        help="an app SIGINT/SIGTERM handler: raise KeyboardInterrupt, sys.exit(0), or (seed) "
        "log an event, close the store and sys.exit(0)",
    )
    p.add_argument("--user-handler-when", choices=["before", "after"], default="after")
    p.add_argument(
        "--atexit-hook",
        action="store_true",
        help="an atexit hook that runs before the layer's: writes 'atexit' to notify-fd, then "
        "waits for a line on stdin",
    )
    p.add_argument("--on-stdin", choices=["return", "shutdown"], default="return")
    p.add_argument(
        "--asyncio",
        choices=["", "run", "closed", "app-handler", "cancel"],
        default="",
        help="run: install in asyncio.run() and wait there; closed: install in asyncio.run(), "
        "which returns, then block on stdin; app-handler: the app then calls "
        "loop.add_signal_handler(SIGTERM) itself; cancel: the README recipe that cancels the "
        "app task in before_children",
    )
    p.add_argument("--sigterm-keeps-grace", action="store_true")
    p.add_argument("--write-deadline", type=float, help="StoreConfig.write_deadline_s")
    p.add_argument("--close-timeout", type=float, help="ProcessLayer close_timeout_s")
    p.add_argument("--no-install", action="store_true", help="no handlers (for kill -9 tests)")
    return p.parse_args()


def start_children(layer: ProcessLayer, args: argparse.Namespace) -> dict[str, list[int]]:
    pids: dict[str, list[int]] = {"coop": [], "ignore_term": [], "tree": [], "escapee": []}
    for _ in range(args.coop):
        pids["coop"].append(layer.spawn(["sleep", "600"]).pid)
    for _ in range(args.ignore_term):
        proc = layer.spawn(["sh", "-c", IGNORE_TERM], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        pids["ignore_term"].append(proc.pid)
    if args.shell_tree:
        proc = layer.spawn(["sh", "-c", SHELL_TREE], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        grandchildren = [c.pid for c in _children_of(proc.pid)]
        pids["tree"] = [proc.pid, *grandchildren]
    if args.escapee:
        proc = layer.spawn(["sh", "-c", ESCAPEE], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        escapee = int(proc.stdout.readline())
        proc.wait(10)  # its parent is gone: the escapee is an orphan now
        pids["escapee"] = [escapee]
    if args.stubborn:
        proc = layer.spawn(
            [sys.executable, str(HERE / "stubborn.py"), str(args.notify_fd)],
            stdout=subprocess.PIPE,
            text=True,
            pass_fds=[args.notify_fd],
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        pids["stubborn"] = [proc.pid]
    return pids


def _children_of(pid: int) -> list[ProcessIdentity]:
    import psutil

    return [ProcessIdentity.capture(c.pid) for c in psutil.Process(pid).children()]


def register_callbacks(
    layer: ProcessLayer, store: SessionStore, sid: str, args: argparse.Namespace
) -> None:
    if args.raising_callback:

        def boom() -> None:
            raise RuntimeError("callback failure on purpose")

        layer.on_shutdown(boom, ShutdownPhase.BEFORE_CHILDREN)
    if args.callbacks:
        log = Path(args.callbacks)

        def note(name: str) -> None:
            with log.open("a", encoding="utf-8") as f:
                f.write(name + "\n")

        def after_children() -> None:
            note("after_children")
            store.log_event(sid, "written by after_children", data={"ok": True})

        layer.on_shutdown(lambda: note("before_children"), "before_children")
        layer.on_shutdown(after_children, ShutdownPhase.AFTER_CHILDREN)
        layer.on_shutdown(lambda: note("before_close"), "before_close")
    if args.blocking_callback:

        def block() -> None:
            os.write(args.notify_fd, b"in-callback\n")
            threading.Event().wait(60)

        layer.on_shutdown(block, ShutdownPhase(args.blocking_phase))


def block_main(args: argparse.Namespace, layer: ProcessLayer) -> None:
    if args.block == "sqlite":
        # A query that never ends, in C, with the GIL released: Python handlers cannot run.
        conn = sqlite3.connect(":memory:")
        conn.execute(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
            "SELECT count(*) FROM c WHERE x < 0"
        ).fetchall()
    elif args.block == "select":
        r, _ = os.pipe()
        select.select([r], [], [])
    elif args.block == "return":
        return
    elif args.block == "pause":
        signal.pause()
    elif args.block == "pause-loop":
        while True:
            signal.pause()
    else:
        sys.stdin.readline()
        if args.on_stdin == "shutdown":
            report = layer.shutdown(reason="asked on stdin")
            print("REPORT " + report.model_dump_json(), flush=True)


def user_handler(
    kind: str, store: SessionStore, sid: str
) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        if kind == "raise":
            raise KeyboardInterrupt
        if kind == "seed":
            # The seed incident: the app's own handler writes, closes the DB and exits.
            store.log_event(sid, "user handler ran", data={"signal": signum})
            print("HANDLER-ACK", file=sys.stderr, flush=True)  # the write returned
            store.close()
        sys.exit(0)

    return handler


def install_user_handler(args: argparse.Namespace, store: SessionStore, sid: str) -> None:
    handler = user_handler(args.user_handler, store, sid)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    args = parse()
    config = (
        StoreConfig()
        if args.write_deadline is None
        else StoreConfig(write_deadline_s=args.write_deadline)
    )
    store = SessionStore.open(args.db, config=config)
    sid = store.create_session("orchestrator").id
    options: dict[str, Any] = {}
    if args.sigterm_keeps_grace:
        options["repeated_sigterm_skips_grace"] = False
    if args.close_timeout is not None:
        options["close_timeout_s"] = args.close_timeout
    layer = ProcessLayer(
        store, sid, grace_s=args.grace, callback_timeout_s=args.callback_timeout, **options
    )
    if args.user_handler and args.user_handler_when == "before":
        install_user_handler(args, store, sid)
    if not args.no_install and not args.asyncio:
        layer.install()
    if args.user_handler and args.user_handler_when == "after":
        install_user_handler(args, store, sid)
    register_callbacks(layer, store, sid, args)
    pids = start_children(layer, args)
    if args.mismatch_pid:
        real = ProcessIdentity.capture(args.mismatch_pid)
        wrong = ProcessIdentity(
            pid=real.pid, start_ticks=real.start_ticks + 12345, boot_id=boot_id()
        )
        store.add_child(sid, args.mismatch_pid, identity=wrong)
    if args.atexit_hook:

        def hook() -> None:
            os.write(args.notify_fd, b"atexit\n")
            sys.stdin.readline()

        atexit.register(hook)  # registered after install(): runs before the layer's hook
    info = {"session_id": sid, "pids": pids, "deadline": layer.shutdown_deadline_s}
    ready = "READY " + json.dumps(info)
    if args.asyncio:
        asyncio.run(run_async(layer, args, ready))
        if args.asyncio == "closed":
            print(ready, flush=True)
            sys.stdin.readline()
        return
    print(ready, flush=True)
    block_main(args, layer)


async def run_async(layer: ProcessLayer, args: argparse.Namespace, ready: str) -> None:
    layer.install()  # inside the loop: plain signal handlers, which outlive the loop
    if args.asyncio == "closed":
        return
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if args.asyncio == "app-handler":
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    app = asyncio.create_task(app_task(args, stop))
    if args.asyncio == "cancel":
        # The README recipe: cancel the app's task, and wait for it, before children are ended.
        async def cancel_app() -> None:
            app.cancel()
            await asyncio.gather(app, return_exceptions=True)

        def before_children() -> None:
            asyncio.run_coroutine_threadsafe(cancel_app(), loop).result(timeout=3)

        layer.on_shutdown(before_children, "before_children")
    print(ready, flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        await app


async def app_task(args: argparse.Namespace, stop: asyncio.Event) -> None:
    try:
        await stop.wait()
    finally:
        if args.callbacks:
            with Path(args.callbacks).open("a", encoding="utf-8") as f:
                f.write("app task ended\n")


if __name__ == "__main__":
    main()
