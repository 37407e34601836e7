"""StoreConfig: every tunable of the store, with its default and the reason for it, in one place."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import _exports

__all__ = ["StoreConfig"]

MiB = 1024 * 1024


def group_commit_problem(synchronous: str, group_commit: bool) -> str | None:
    """Why ``group_commit`` cannot go with ``synchronous``, or None when it can.

    The one wording of the rule: the config's validator raises it, and the writer refuses a
    config that skipped validation (``model_construct``, ``model_copy(update=...)``) with it.
    """
    if group_commit and synchronous != "FULL":
        return (
            f"group_commit=True needs synchronous='FULL' (got {synchronous!r}): under NORMAL a "
            "commit does not wait for the disk, so grouping commits gains nothing"
        )
    return None


class StoreConfig(BaseModel):
    """How a :class:`~sessionstore.SessionStore` talks to its database.

    Every field is validated at construction; a bad value raises ``pydantic.ValidationError``
    (a ``ValueError``) before any file is touched. The model is frozen: one config may be shared.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    busy_timeout_ms: int = Field(default=5000, ge=0, le=600_000)
    """How long one statement waits for another process's lock before SQLite gives up."""

    busy_handler: Literal["fair", "sqlite"] = "fair"
    """``fair``: a short, jittered sleep per retry (sub-ms lock hand-off, fair between processes).
    ``sqlite``: SQLite's built-in backoff (1, 2, 5 ... 100 ms sleeps: one process can starve another
    for seconds under contention). Both stop at ``busy_timeout_ms``."""

    write_deadline_s: float = Field(default=10.0, gt=0, le=3600, allow_inf_nan=False)
    """Wall-clock bound on one whole write call: its first attempt, its wait for this process's
    writer lock (outside the main thread) and every busy wait included; the busy handler waits
    only for what is left of it. Past it the write is journaled instead of applied."""

    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """NORMAL: an application crash loses nothing; a power loss may roll back the last commits.
    FULL: every acknowledged write survives power loss, at one fsync per commit."""

    group_commit: bool = False
    """Only with ``synchronous="FULL"``: writes that threads of this process make while another
    thread's commit is waiting on its fsync are applied together in the next transaction, one
    savepoint each, and share its fsync. Each call still returns only once its own op is
    durable, or raises its own error (a rejected op fails only its caller). Its
    ``write_deadline_s`` bounds the call, the time queued behind another thread's commit
    included; an op already in a transaction waits for that transaction's outcome, which the
    earliest deadline of its ops bounds. Measured at 4 and 16 writer threads: 2.0x and 3.4x
    the writes per second of one transaction per op (``benchmarks/README.md``). With
    ``synchronous="NORMAL"`` a commit does not wait on the disk, so there is nothing to
    share (measured: no gain): the combination is refused. Off by default."""

    journal_size_limit: int = Field(default=4 * MiB, ge=-1)
    """Bytes the WAL file is truncated to after a checkpoint resets it (-1: never truncated)."""

    checkpoint_interval_s: float = Field(default=30.0, gt=0, le=86_400, allow_inf_nan=False)
    """A ``wal_checkpoint(TRUNCATE)`` runs at least this often while the store is open."""

    checkpoint_wal_bytes: int = Field(default=4 * MiB, gt=0)
    """... and a ``wal_checkpoint(RESTART)`` as soon as a commit leaves the WAL larger than this."""

    checkpoint_busy_timeout_ms: int = Field(default=50, ge=0, le=10_000)
    """How long a TRUNCATE checkpoint may wait for readers. It holds the writer lock while it
    waits, stalling every other process's writes, so it is short; busy means "try later"."""

    checkpointing: bool = True
    """Run the background checkpointer (disable only when another process owns checkpoints)."""

    close_timeout_s: float = Field(default=5.0, ge=0, le=3600, allow_inf_nan=False)
    """How long ``close()`` waits for in-flight leases before it abandons them. The whole
    ``close()`` returns within this plus 0.25 s (the queue and journal replay get at least that),
    plus ``checkpoint_busy_timeout_ms`` and two 0.1 s waits for the writer to let go (5.5 s with
    the defaults), plus the work of one last batch and of the checkpoint; the README states
    1 s for all of it. What the journal replay cannot apply in time stays for the next open."""

    read_connections: int = Field(default=2, ge=1, le=64)
    """Size of the per-process read connection pool."""

    max_pending_ops: int = Field(default=10_000, ge=1)
    """Ops queued while closing; past this a write goes straight to the durable journal.

    What the close could not apply by its deadline is journaled then, inside its bound, so the
    bound holds only while this queue can be journaled quickly: 10,000 ops take a few tens of
    milliseconds (100,000, the first default, took up to 2.4 s beside a thread writing flat
    out, and the close overran its bound by that much)."""

    max_journal_bytes: int = Field(default=256 * MiB, gt=0)
    """Journal size past which a write raises :class:`~sessionstore.errors.JournalFullError`."""

    replay_on_open: bool = True
    """Apply the journal left by closed stores (of any process) when the store opens."""

    close_at_exit: bool = True
    """Close a store left open at interpreter exit (with a warning), so queued ops are kept."""

    @model_validator(mode="after")
    def _group_commit_needs_full(self) -> StoreConfig:
        """``group_commit`` shares a commit's fsync; under NORMAL a commit has none to share.

        Rejected: accepting the combination as a no-op (a setting that silently does nothing
        hides the misconfiguration it is).

        Raises:
            ValueError: ``group_commit=True`` with ``synchronous="NORMAL"``.
        """
        problem = group_commit_problem(self.synchronous, self.group_commit)
        if problem is not None:
            raise ValueError(problem)
        return self

    @model_validator(mode="before")
    @classmethod
    def _no_reap_on_open(cls, data: Any) -> Any:
        """``reap_on_open`` is gone: the store (the lower layer) never calls the process layer.

        Call :func:`~sessionstore.reap_orphans` on the opened store instead (or run
        ``python -m sessionstore reap``). ``reap_on_open=False``, its old default, is still
        accepted (and ignored), so saved configs load.
        Rejected: keeping it by importing the process layer from the store (the package's only
        import cycle), or by a reaper the process layer registers at import (a store opened
        without that import would silently not reap).

        Raises:
            ValueError: ``reap_on_open=True``.
        """
        if isinstance(data, dict) and "reap_on_open" in data:
            data = dict(data)
            if data.pop("reap_on_open"):
                raise ValueError(
                    "reap_on_open was removed: call sessionstore.reap_orphans(store) after "
                    "SessionStore.open(...), or run `python -m sessionstore reap`"
                )
        return data


_exports.publish_written_here(__name__)  # last: see _exports
