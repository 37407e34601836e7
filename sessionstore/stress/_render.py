"""Human output of the stress command: live progress on stderr, tables on stdout (rich)."""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._models import StressReport

__all__ = ["RichProgress", "print_compare", "print_report"]

_PHASES = {
    "start": "starting",
    "load": "writing",
    "storm": "SIGTERM sent, exited",
    "verify": "verifying",
}


class RichProgress:
    """A progress callback for :func:`sessionstore.stress.run`, usable as a context manager.

    On a terminal it draws a live bar on stderr; otherwise it prints one line per phase (CI
    logs stay readable); disabled, it does nothing.
    """

    def __init__(self, title: str, *, enabled: bool = True) -> None:
        self.title = title
        self.enabled = enabled
        self.console = Console(stderr=True)
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._phase = ""

    def __enter__(self) -> RichProgress:
        if self.enabled and self.console.is_terminal:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed:.0f}/{task.total:.0f}"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[detail]}"),
                console=self.console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.title, total=1, detail="")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, phase: str, done: float, total: float, detail: str) -> None:
        """Show where the run is."""
        if not self.enabled:
            return
        label = f"{self.title}: {_PHASES.get(phase, phase)}"
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task, description=label, completed=done, total=total, detail=detail
            )
        elif phase != self._phase:
            print(label, file=sys.stderr, flush=True)
        self._phase = phase


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def _summary_rows(r: StressReport) -> list[tuple[str, str]]:
    return [
        ("orchestrators x children", f"{r.procs} x {r.children} ({r.stubborn} stubborn)"),
        ("startup / load / storm", f"{r.startup_s:.2f} s / {r.load_s:.2f} s / {r.storm_s:.2f} s"),
        ("acknowledged writes", f"{r.acked:,} ({r.throughput_ops_s:,.0f}/s during load)"),
        ("missing after storm", f"{r.missing:,}"),
        ("BUSY reports / tracebacks", f"{r.busy_errors} / {r.tracebacks}"),
        ("hung (killed at deadline)", str(r.hung)),
        ("orphans (killed by harness)", f"{r.orphans} of {r.descendants}"),
        ("sessions left active", str(r.active_sessions)),
        ("integrity_check", r.integrity),
        ("WAL peak / after", f"{_mib(r.wal_bytes_peak)} / {_mib(r.wal_bytes_after)}"),
    ]


def print_report(r: StressReport, console: Console | None = None) -> None:
    """Print one run: a summary, the invariant checks, and the workers that misbehaved."""
    out = console or Console()
    verdict = (
        "[green]all invariants held[/]" if r.ok else f"[red]FAILED: {', '.join(r.failures)}[/]"
    )
    summary = Table(title=f"exit storm ({r.baseline}) on {r.db_path}", show_header=False)
    summary.add_column("what")
    summary.add_column("value")
    for what, value in _summary_rows(r):
        summary.add_row(what, value)
    out.print(summary)
    checks = Table(title="invariants")
    checks.add_column("check")
    checks.add_column("ok")
    checks.add_column("detail")
    for c in r.checks:
        checks.add_row(c.name, "[green]yes[/]" if c.ok else "[red]NO[/]", c.detail)
    out.print(checks)
    bad = [
        w
        for w in r.workers
        if w.hung or w.exit_code != -15 or w.missing or w.orphans or w.tracebacks or w.busy_errors
    ]
    if bad:
        table = Table(title=f"orchestrators with problems ({len(bad)} of {r.procs})")
        for col in ("#", "exit", "exit s", "missing", "busy", "tb", "orphans", "where / stderr"):
            table.add_column(col)
        for w in bad[:20]:
            # A hung one: the innermost frame of its first thread; otherwise its last words.
            frames = [ln.strip() for ln in w.hang_dump if ln.strip().startswith("File ")]
            last = frames[0] if frames else (w.stderr_tail[-1] if w.stderr_tail else "")
            table.add_row(
                str(w.index),
                "hung" if w.hung else str(w.exit_code),
                "-" if w.exit_s is None else f"{w.exit_s:.2f}",
                str(w.missing),
                str(w.busy_errors),
                str(w.tracebacks),
                str(w.orphans),
                last[:80],
            )
        out.print(table)
    out.print(verdict)


def print_compare(a: StressReport, b: StressReport, console: Console | None = None) -> None:
    """Print two runs of the same storm side by side."""
    out = console or Console()
    table = Table(title=f"exit storm: {a.procs} orchestrators x {a.children} children")
    table.add_column("")
    table.add_column(a.baseline)
    table.add_column(b.baseline)
    for (what, va), (_, vb) in zip(_summary_rows(a), _summary_rows(b), strict=True):
        table.add_row(what, va, vb)
    for ca, cb in zip(a.checks, b.checks, strict=True):
        table.add_row(
            ca.name,
            "[green]ok[/]" if ca.ok else "[red]FAIL[/]",
            "[green]ok[/]" if cb.ok else "[red]FAIL[/]",
        )
    out.print(table)
    for r in (a, b):
        verdict = "[green]all invariants held[/]" if r.ok else f"[red]{len(r.failures)} failed[/]"
        out.print(f"{r.baseline}: {verdict}")
