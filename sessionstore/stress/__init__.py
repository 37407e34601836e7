"""The exit-storm harness: many orchestrators on one database, all told to stop at once.

``run()`` starts ``procs`` orchestrator processes (``python -m sessionstore.stress._worker``),
each with a session and ``children`` child processes (``stubborn`` of which ignore SIGTERM; some
have a grandchild). They write events, heartbeats and checkpoints for ``seconds``, recording
every acknowledged write. Then the harness sends SIGTERM to all of them at once and checks the
invariants sessionstore promises:

* every orchestrator exited by SIGTERM (``-15``) within its budget; one still running at the
  deadline is SIGKILLed and reported hung;
* no child or grandchild is alive (survivors are killed by the harness, identity re-checked,
  and reported as orphans);
* SQLite's integrity check is ok and every acknowledged write is in the database;
* no session of the run is left ACTIVE and no child row is left ``running``;
* no BUSY error, traceback or failed write surfaced in any orchestrator.

``baseline="naive"`` runs the same storm through :mod:`sessionstore.stress._naive`, to show what
those invariants look like without the library. The CLI front end is :func:`add_cli_arguments` plus
:func:`cli_main` (``python -m sessionstore --db PATH stress ...``).

Synchronisation is by events only: readiness arrives on a FIFO, exits on pidfds (Linux).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from .._exports import publish as _publish
from .._files import wal_size
from ..errors import SessionStoreError
from ._models import (
    Baseline,
    StressOptions,
    StressReport,
    WorkerResult,
    WorkerSpec,
    check_db_path,
)
from ._verify import (
    RUN_ENV,
    AckCounter,
    Tracked,
    end_survivors,
    read_acks,
    run_processes,
    scan_stderr,
    track,
    verify_database,
)

__all__ = [
    "ProgressFn",
    "StressOptions",
    "StressReport",
    "StressSetupError",
    "WorkerResult",
    "add_cli_arguments",
    "cli_main",
    "run",
]

ProgressFn = Callable[[str, float, float, str], None]
"""``progress(phase, done, total, detail)``; phases: start, load, storm, verify."""

_TICK_S = 0.1  # how often WAL size and progress are sampled while waiting on events


class StressSetupError(SessionStoreError):
    """The storm could not start: an orchestrator died or was not ready in time.

    Everything the harness started has been ended when this is raised.
    """


def run(
    db_path: str,
    *,
    procs: int,
    children: int,
    seconds: float,
    stubborn: int = 0,
    baseline: Baseline = "sessionstore",
    progress: ProgressFn | None = None,
    **options: Any,
) -> StressReport:
    """Run one exit storm against ``db_path`` and check every invariant.

    Args:
        db_path: the database (created if missing; sessions are added to an existing one).
        procs: orchestrator processes.
        children: children per orchestrator.
        seconds: how long they write before the storm.
        stubborn: children per orchestrator that ignore SIGTERM (need SIGKILL after grace).
        baseline: ``"sessionstore"``, or ``"naive"`` for the hand-written baseline.
        progress: called as the run advances (phase, done, total, detail).
        **options: the other :class:`StressOptions` fields (``rate``, ``grace_s``,
            ``deadline_s``, ``settle_s``, ``keep_files`` ...).

    Returns:
        The report; ``report.ok`` is False when any invariant failed.

    Raises:
        ValueError: bad options (``pydantic.ValidationError``), checked before anything starts.
        StressSetupError: the orchestrators could not all start; everything was cleaned up.
        SessionStoreError: the database could not be opened or prepared.
    """
    opts = StressOptions(
        db_path=db_path,
        procs=procs,
        children=children,
        seconds=seconds,
        stubborn=stubborn,
        baseline=baseline,
        **options,
    )
    from .._store import SessionStore

    # Schema first, in this process: the naive baseline writes into the same tables.
    SessionStore.open(opts.db_path).close()
    storm = _Storm(opts, progress or (lambda *a: None))
    try:
        storm.start()
        storm.wait_ready()
        storm.load()
        storm.storm()
        return storm.verify()
    finally:
        storm.cleanup()


class _Storm:
    """The state of one run, phase by phase."""

    def __init__(self, opts: StressOptions, progress: ProgressFn) -> None:
        self.opts = opts
        self.progress = progress
        self.run_id = uuid.uuid4().hex
        self.work_dir = tempfile.mkdtemp(prefix="sessionstore-stress-")
        self.fifo_path = os.path.join(self.work_dir, "ready.fifo")
        self.fifo_fd = -1
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pidfds: dict[int, int] = {}  # worker index -> pidfd
        self.selector = selectors.DefaultSelector()
        self.buffer = b""
        self.ready: set[int] = set()
        self.children_ready = 0
        self.tracked: dict[tuple[int, int], Tracked] = {}
        self.exited_at: dict[int, float] = {}  # worker index -> monotonic time its exit was seen
        self.hung: set[int] = set()
        self.wal_peak = 0
        self.startup_s = self.load_s = self.storm_s = 0.0
        self.acks_during_load = 0
        self.storm_wall = 0.0
        self.storm_t0 = 0.0
        self.cleaned = False

    def ack_path(self, i: int) -> str:
        return os.path.join(self.work_dir, f"worker-{i}.acks")

    def err_path(self, i: int) -> str:
        return os.path.join(self.work_dir, f"worker-{i}.stderr")

    # ------------------------------------------------------------------------------ phases

    def start(self) -> None:
        os.mkfifo(self.fifo_path, 0o600)
        # Read-write so the FIFO never reports EOF between writers and no open() ever blocks.
        self.fifo_fd = os.open(self.fifo_path, os.O_RDWR | os.O_NONBLOCK)
        self.selector.register(self.fifo_fd, selectors.EVENT_READ, None)
        env = dict(os.environ, **{RUN_ENV: self.run_id})
        lifetime = int(self.opts.startup_timeout_s + self.opts.seconds + self.opts.deadline + 60)
        for i in range(self.opts.procs):
            spec = WorkerSpec(
                index=i,
                run_id=self.run_id,
                db_path=self.opts.db_path,
                baseline=self.opts.baseline,
                children=self.opts.children,
                stubborn=self.opts.stubborn,
                rate=self.opts.rate,
                grace_s=self.opts.grace_s,
                kill_verify_s=self.opts.kill_verify_s,
                ack_path=self.ack_path(i),
                fifo_path=self.fifo_path,
                child_lifetime_s=lifetime,
                naive_batch=self.opts.naive_batch,
                write_during_shutdown=self.opts.write_during_shutdown,
                # Just before the deadline, so a hung orchestrator says where it is stuck.
                hang_dump_s=max(self.opts.deadline - 0.3, self.opts.deadline * 0.9),
            )
            with open(self.err_path(i), "wb") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "sessionstore.stress._worker", spec.model_dump_json()],
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    env=env,
                    # Its own session: a Ctrl-C at the terminal reaches only the harness,
                    # which then ends the run in order.
                    start_new_session=True,
                )
            self.procs.append(proc)
            if hasattr(os, "pidfd_open"):
                with contextlib.suppress(OSError):
                    fd = os.pidfd_open(proc.pid)
                    self.pidfds[i] = fd
                    self.selector.register(fd, selectors.EVENT_READ, i)

    def wait_ready(self) -> None:
        t0 = time.monotonic()
        want = self.opts.procs * (1 + self.opts.children)
        deadline = t0 + self.opts.startup_timeout_s
        while len(self.ready) + self.children_ready < want:
            now = time.monotonic()
            if now >= deadline:
                raise StressSetupError(
                    f"only {len(self.ready)} of {self.opts.procs} orchestrators and "
                    f"{self.children_ready} of {self.opts.procs * self.opts.children} children "
                    f"were ready after {self.opts.startup_timeout_s:.0f} s"
                )
            for i in self._wait(min(_TICK_S, deadline - now)):
                tail = " | ".join(scan_stderr(self.err_path(i)).tail) or "no output"
                raise StressSetupError(
                    f"orchestrator {i} exited with {self.procs[i].returncode} before it was "
                    f"ready: {tail}"
                )
            self.progress("start", len(self.ready) + self.children_ready, want, "")
        self.startup_s = time.monotonic() - t0

    def load(self) -> None:
        counter = AckCounter(self.ack_path(i) for i in range(self.opts.procs))
        base = counter.update()
        t0 = time.monotonic()
        end = t0 + self.opts.seconds
        last_report = 0.0
        while (now := time.monotonic()) < end:
            self._wait(min(_TICK_S, end - now))  # a worker dying early shows in the report
            if now - last_report >= 0.5:
                last_report = now
                rate = (counter.update() - base) / max(now - t0, 1e-9)
                detail = f"{rate:,.0f} acked writes/s, WAL peak {self.wal_peak / 2**20:.1f} MiB"
                self.progress("load", now - t0, self.opts.seconds, detail)
        self.load_s = time.monotonic() - t0
        self.acks_during_load = counter.update() - base

    def storm(self) -> None:
        self.storm_wall = time.time()
        t0 = self.storm_t0 = time.monotonic()
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)  # safe: not reaped, so the pid is still ours
        deadline = t0 + self.opts.deadline
        while len(self.exited_at) < len(self.procs):
            now = time.monotonic()
            if now >= deadline:
                break
            self._wait(min(_TICK_S, deadline - now))
            self.progress("storm", len(self.exited_at), len(self.procs), "")
        for i, proc in enumerate(self.procs):
            if i not in self.exited_at:
                proc.kill()
                proc.wait()
                self.hung.add(i)
                self.exited_at[i] = time.monotonic()
        self.storm_s = max(self.exited_at.values(), default=t0) - t0
        self._sample_wal()

    def verify(self) -> StressReport:
        from ._report import build_report

        self.progress("verify", 0, 1, "")
        wal_after = self._wal_bytes()
        records = [read_acks(self.ack_path(i)) for i in range(self.opts.procs)]
        stderr = [scan_stderr(self.err_path(i)) for i in range(self.opts.procs)]
        worker_pids = [p.pid for p in self.procs]
        candidates = dict(self.tracked)
        for t in run_processes(self.run_id, exclude=worker_pids):
            candidates.setdefault((t.pid, t.start_ticks), t)
        orphans, left = end_survivors(list(candidates.values()), settle_s=self.opts.settle_s)
        db = verify_database(self.opts.db_path, records)
        self.progress("verify", 1, 1, "")
        return build_report(
            self.opts,
            procs=self.procs,
            exit_s={i: at - self.storm_t0 for i, at in self.exited_at.items()},
            hung=self.hung,
            records=records,
            stderr=stderr,
            db=db,
            descendants=list(candidates.values()),
            orphans=orphans,
            left=left,
            timings={"startup": self.startup_s, "load": self.load_s, "storm": self.storm_s},
            acks_during_load=self.acks_during_load,
            storm_wall=self.storm_wall,
            wal=(self.wal_peak, wal_after),
            work_dir=self.work_dir if self.opts.keep_files else None,
        )

    def cleanup(self) -> None:
        """End everything this run started, whatever happened; idempotent."""
        if self.cleaned:
            return
        self.cleaned = True
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait()
        strays = [t for t in self.tracked.values() if t.alive()]
        strays += run_processes(self.run_id, exclude=[p.pid for p in self.procs])
        if strays:
            end_survivors(strays, settle_s=0.0)
        self.selector.close()
        for fd in [self.fifo_fd, *self.pidfds.values()]:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if not self.opts.keep_files:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # ------------------------------------------------------------------------------ events

    def _wait(self, timeout: float) -> list[int]:
        """Wait up to ``timeout`` for readiness lines or worker exits; return who exited.

        Exits are recorded in ``exited_at`` with the time they were seen.
        """
        exited: list[int] = []
        if self.pidfds:
            events = self.selector.select(max(timeout, 0.0))
        else:
            # No pidfds (not Linux): exits are found by polling, so do not sleep long.
            events = self.selector.select(max(min(timeout, 0.01), 0.0))
        for key, _ in events:
            if key.data is None:
                self._read_fifo()
            else:
                index = int(key.data)
                self.selector.unregister(key.fd)
                self.procs[index].wait()  # readable pidfd: it has exited; reap it
                exited.append(index)
        if not self.pidfds:
            exited += [
                i
                for i, p in enumerate(self.procs)
                if i not in self.exited_at and p.poll() is not None
            ]
        now = time.monotonic()
        for i in exited:
            self.exited_at[i] = now
        self._sample_wal()
        return exited

    def _read_fifo(self) -> None:
        try:
            self.buffer += os.read(self.fifo_fd, 65536)
        except BlockingIOError:
            return
        *lines, self.buffer = self.buffer.split(b"\n")
        for raw in lines:
            parts = raw.decode("ascii", "replace").split()
            if len(parts) == 3 and parts[0] == "R":
                self.ready.add(int(parts[1]))
            elif len(parts) == 4 and parts[0] == "G":
                worker = int(parts[1])
                self.children_ready += 1
                for pid in parts[2:]:
                    if pid.isdigit():
                        t = track(int(pid), worker)
                        if t is not None:
                            self.tracked[(t.pid, t.start_ticks)] = t

    def _wal_bytes(self) -> int:
        return wal_size(self.opts.db_path)

    def _sample_wal(self) -> None:
        self.wal_peak = max(self.wal_peak, self._wal_bytes())


# ------------------------------------------------------------------------------------ CLI


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``stress`` command's options to ``parser`` (the CLI's subcommand parser)."""
    parser.add_argument("--procs", type=int, required=True, help="orchestrator processes")
    parser.add_argument(
        "--children", type=int, default=2, help="children per orchestrator (%(default)s)"
    )
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="write phase before SIGTERM (%(default)s)"
    )
    parser.add_argument(
        "--stubborn", type=int, default=0, help="children per orchestrator ignoring SIGTERM"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="write-loop iterations/s per orchestrator: an event each, a heartbeat every 10th, "
        "a checkpoint every 25th (%(default)s; 0: flat out)",
    )
    parser.add_argument(
        "--grace", type=float, default=1.0, help="SIGTERM-to-SIGKILL grace, s (%(default)s)"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds after SIGTERM at which a hung orchestrator is killed and reported "
        "(default: exit budget + 5; the budget is grace + 5)",
    )
    parser.add_argument(
        "--baseline",
        choices=["sessionstore", "naive"],
        default="sessionstore",
        help="naive: the same storm through a hand-written store, to see what fails",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="run sessionstore, then naive (on a sibling *.naive.db), side by side; "
        "the exit status follows the sessionstore run",
    )
    parser.add_argument(
        "--write-during-shutdown",
        action="store_true",
        help="keep each write loop running through shutdown (default: it stops when shutdown "
        "begins, as an orchestrator stops accepting work)",
    )
    parser.add_argument("--keep-files", action="store_true", help="keep ack files and stderr")
    # SUPPRESS: a --json on the top-level parser must not be overwritten by this default.
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the report as JSON"
    )


def cli_main(args: argparse.Namespace, db_path: str) -> int:
    """Run the ``stress`` command from parsed arguments.

    Returns:
        0 when every invariant held, 1 when one failed (in ``--compare``: one of the
        sessionstore run), 2 for bad input or a storm that could not start.
    """
    from ._render import RichProgress, print_compare, print_report

    as_json = bool(getattr(args, "json", False))
    options: dict[str, Any] = {
        "procs": args.procs,
        "children": args.children,
        "seconds": args.seconds,
        "stubborn": args.stubborn,
        "rate": args.rate,
        "grace_s": args.grace,
        "deadline_s": args.deadline,
        "keep_files": args.keep_files,
        "write_during_shutdown": args.write_during_shutdown,
    }
    runs: list[tuple[Baseline, str]] = [(args.baseline, db_path)]
    try:
        if args.compare:
            runs = [("sessionstore", db_path), ("naive", naive_sibling(check_db_path(db_path)))]
        for baseline, path in runs:  # validate every run before the first one starts
            StressOptions(db_path=path, baseline=baseline, **options)
    except ValueError as err:
        print(f"sessionstore stress: error: {_one_line(err)}", file=sys.stderr)
        return 2
    reports: list[StressReport] = []
    for baseline, path in runs:
        try:
            with RichProgress(f"{baseline}: {args.procs} orchestrators", enabled=not as_json) as p:
                reports.append(run(path, baseline=baseline, progress=p, **options))
        except (StressSetupError, SessionStoreError, OSError) as err:
            print(f"sessionstore stress: error: {_one_line(err)}", file=sys.stderr)
            return 2
    if as_json:
        if len(reports) == 1:
            print(reports[0].model_dump_json(indent=2))
        else:
            print(json.dumps({r.baseline: r.model_dump(mode="json") for r in reports}, indent=2))
    elif len(reports) == 1:
        print_report(reports[0])
    else:
        print_compare(reports[0], reports[1])
    return 0 if reports[0].ok else 1


def naive_sibling(db_path: str) -> str:
    """Where ``--compare`` runs the naive baseline: ``x.db`` -> ``x.naive.db``, same folder."""
    root, ext = os.path.splitext(db_path)
    return f"{root}.naive{ext or '.db'}"


def _one_line(err: Exception) -> str:
    """A one-line description of ``err``; for pydantic errors, the first problem by field."""
    errors = getattr(err, "errors", None)
    if callable(errors):
        with contextlib.suppress(Exception):
            first = errors()[0]
            loc = ".".join(str(x) for x in first.get("loc", ()))
            msg = str(first.get("msg", err)).removeprefix("Value error, ")
            flag = _FLAGS.get(loc, loc)
            got = first.get("input")
            shown = f" (got {got!r})" if flag and not isinstance(got, dict) else ""
            return f"{flag}: {msg}{shown}" if flag else msg
    return " ".join(str(err).split())


_FLAGS = {
    "procs": "--procs",
    "children": "--children",
    "seconds": "--seconds",
    "stubborn": "--stubborn",
    "rate": "--rate",
    "grace_s": "--grace",
    "deadline_s": "--deadline",
    "db_path": "--db",
}


# The option and report models say where users import them from (see sessionstore._exports).
_publish(__name__, [StressOptions, StressReport, WorkerResult])
del _publish
