"""The stress harness's data: validated options, the spec handed to each worker, the report."""

from __future__ import annotations

import os
import tempfile
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

__all__ = [
    "Baseline",
    "Check",
    "StressOptions",
    "StressReport",
    "WorkerResult",
    "WorkerSpec",
]

Baseline = Literal["sessionstore", "naive"]


def check_db_path(path: str) -> str:
    """Return ``path`` made absolute, or raise a ``ValueError`` saying why it cannot be used.

    Run before anything starts, so an unusable path costs one clear line, not a half-run storm.

    Raises:
        ValueError: empty, a directory, in a missing or unwritable directory, or not writable.
    """
    if not path:
        raise ValueError("the database path is empty")
    full = os.path.abspath(path)
    folder = os.path.dirname(full)
    if os.path.isdir(full):
        raise ValueError(f"{full} is a directory, not a database file")
    if not os.path.isdir(folder):
        raise ValueError(f"directory {folder} does not exist")
    # The -wal, -shm and journal files are created beside the database, so the folder must
    # take new files even when the database exists. A real probe, because os.access() says
    # yes to root everywhere (/proc included).
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".sessionstore-probe-"):
            pass
    except OSError as err:
        raise ValueError(f"cannot create files in {folder}: {err.strerror or err}") from None
    if os.path.exists(full) and not os.access(full, os.R_OK | os.W_OK):
        raise ValueError(f"{full} is not readable and writable")
    return full


class StressOptions(BaseModel):
    """Everything one stress run needs, validated before any process starts.

    A bad value raises ``pydantic.ValidationError`` (a ``ValueError``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    procs: int = Field(ge=1, le=256)
    children: int = Field(ge=0, le=64)
    seconds: float = Field(ge=0, le=24 * 3600)
    stubborn: int = Field(default=0, ge=0)
    baseline: Baseline = "sessionstore"
    rate: float = Field(default=200.0, ge=0, le=100_000)
    """Write loop iterations per second per orchestrator (0: as fast as it can)."""
    grace_s: float = Field(default=1.0, ge=0, le=600)
    """SIGTERM-to-SIGKILL grace each orchestrator gives its children."""
    kill_verify_s: float = Field(default=2.0, gt=0, le=600)
    exit_budget_s: float | None = Field(default=None, gt=0, le=3600)
    """An orchestrator must exit this soon after the storm; default grace + verify + 3 s."""
    deadline_s: float | None = Field(default=None, gt=0, le=3600)
    """Past this the harness SIGKILLs an orchestrator and reports it hung; default budget + 5 s."""
    startup_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    settle_s: float = Field(default=1.0, ge=0, le=60)
    """How long a descendant signalled during shutdown may take to die before it is an orphan."""
    naive_batch: int = Field(default=20, ge=1, le=10_000)
    write_during_shutdown: bool = False
    """Keep the write loop running through shutdown (by default it stops when shutdown begins,
    as an orchestrator stops accepting work; writes from the shutdown callbacks go on)."""
    keep_files: bool = False
    # Last, so a nonsensical number is reported before a path problem (errors come in order).
    db_path: str

    @field_validator("db_path")
    @classmethod
    def _usable_path(cls, value: str) -> str:
        return check_db_path(value)

    @model_validator(mode="after")
    def _consistent(self) -> StressOptions:
        if self.stubborn > self.children:
            raise ValueError(f"stubborn ({self.stubborn}) cannot exceed children ({self.children})")
        if (
            self.exit_budget_s is not None
            and self.deadline_s is not None
            and self.deadline_s < self.exit_budget_s
        ):
            raise ValueError("deadline_s must be >= exit_budget_s")
        return self

    @property
    def budget(self) -> float:
        """The exit budget in seconds, with its default filled in (never past the deadline)."""
        if self.exit_budget_s is not None:
            return self.exit_budget_s
        default = self.grace_s + self.kill_verify_s + 3.0
        return default if self.deadline_s is None else min(default, self.deadline_s)

    @property
    def deadline(self) -> float:
        """The hard deadline in seconds, with its default filled in."""
        return self.deadline_s if self.deadline_s is not None else self.budget + 5.0


class WorkerSpec(BaseModel):
    """What one orchestrator process is told to do (passed as JSON on its command line)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0)
    run_id: str
    db_path: str
    baseline: Baseline
    children: int = Field(ge=0)
    stubborn: int = Field(ge=0)
    rate: float = Field(ge=0)
    grace_s: float = Field(ge=0)
    kill_verify_s: float = Field(gt=0)
    ack_path: str
    fifo_path: str
    child_lifetime_s: int = Field(gt=0)
    naive_batch: int = Field(default=20, ge=1)
    write_during_shutdown: bool = False
    hang_dump_s: float = Field(gt=0)
    """After shutdown began, dump every thread's stack to stderr if still alive by then."""


class Check(BaseModel):
    """One invariant of the storm and whether it held."""

    model_config = ConfigDict(frozen=True)

    name: str
    ok: bool
    detail: str = ""


class WorkerResult(BaseModel):
    """What happened to one orchestrator process."""

    model_config = ConfigDict(frozen=True)

    index: int
    pid: int
    session_id: str | None = None
    exit_code: int | None = None  # Popen form: -15 is death by SIGTERM
    exit_s: float | None = None  # from the storm's SIGTERM to its exit (< 0: died before it)
    hung: bool = False  # the harness SIGKILLed it at the deadline
    acked: int = 0  # writes it was told succeeded
    missing: int = 0  # of those, not in the database after the storm
    write_errors: int = 0  # write calls that raised
    busy_errors: int = 0  # BUSY/locked reports in its stderr or write errors
    tracebacks: int = 0
    children: int = 0
    descendants: int = 0  # children and grandchildren recorded before the storm
    orphans: int = 0  # of those, alive after it exited (killed by the harness)
    child_rows_running: int = 0  # child rows still marked running after the storm
    session_status: str | None = None
    shutdown_started_s: float | None = None  # storm to its shutdown callback
    stderr_tail: list[str] = Field(default_factory=list)
    hang_dump: list[str] = Field(default_factory=list)  # its threads' stacks, when it hung


class StressReport(BaseModel):
    """The outcome of one exit storm; ``ok`` is True when every invariant held."""

    model_config = ConfigDict(frozen=True)

    baseline: Baseline
    db_path: str
    procs: int
    children: int
    stubborn: int
    seconds: float
    rate: float
    exit_budget_s: float
    deadline_s: float
    startup_s: float  # until every orchestrator and child reported ready
    load_s: float  # the write phase actually run
    storm_s: float  # SIGTERM to the last orchestrator's exit (or kill)
    acked: int  # writes acknowledged to the orchestrators
    present: int  # of those, found in the database
    missing: int
    replayed_at_verify: int  # journaled ops the verifying open applied
    write_errors: int
    busy_errors: int
    tracebacks: int
    hung: int
    bad_exits: int  # wrong exit status
    late_exits: int  # exited, but after the budget
    descendants: int
    orphans: int
    orphans_left: int  # still alive after the harness tried to kill them (should be 0)
    child_rows_running: int
    active_sessions: int
    integrity: str
    wal_bytes_peak: int
    wal_bytes_after: int
    throughput_ops_s: float  # acknowledged writes per second of load, all orchestrators
    work_dir: str | None = None  # kept only with keep_files
    checks: list[Check] = Field(default_factory=list)
    workers: list[WorkerResult] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        """True when every invariant held."""
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[str]:
        """Names of the invariants that did not hold."""
        return [c.name for c in self.checks if not c.ok]
