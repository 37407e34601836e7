"""The checkpoint and thread methods of :class:`sessionstore.SessionStore`.

Named snapshots (save/latest/list), caller-keyed checkpoints with their task writes (put, get,
find, pop, prune, delete runs), and ``transaction``. Grouped out of ``_store`` by topic; what
they use of the store is declared in ``_store_base``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from . import _queries as q
from ._models import Checkpoint, CheckpointWrite
from ._ops import DeleteRuns, PopCheckpoint, PruneCheckpoints, SaveCheckpoint, checkpoint_from_op
from ._queries import MAX_PAGE, metadata_filter
from ._store_base import StoreCore
from ._transaction import (
    Transaction,
    checkpoint_from_pop,
    checkpoint_from_put,
    make_put_checkpoint,
    make_put_writes,
)


class CheckpointMethods(StoreCore):
    """Checkpoints, their writes, and transactions (``SessionStore`` has them)."""

    def save_checkpoint(self, session_id: str, name: str, data: Any) -> Checkpoint:
        """Save a named JSON snapshot of the session.

        Raises:
            ValueError: empty/too long name, or data not JSON-serialisable (NaN included).
            SessionNotFoundError: no such session (checked while the store is open).
        """
        op = SaveCheckpoint(session_id=session_id, name=name, data=data)
        self._write(op)
        return checkpoint_from_op(op)

    def latest_checkpoint(self, session_id: str, name: str | None = None) -> Checkpoint | None:
        """Return the newest checkpoint of the session (with that name, if given), or None.

        Raises:
            SessionNotFoundError: no such session.
            StoreClosedError: the store is closing or closed.
        """
        found = self.list_checkpoints(session_id, name=name, limit=1, newest_first=True)
        return found[0] if found else None

    def list_checkpoints(
        self,
        session_id: str,
        *,
        name: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[Checkpoint]:
        """Return the session's checkpoints (oldest first unless ``newest_first``).

        Raises:
            SessionNotFoundError: no such session.
            ValueError: ``limit`` < 1.
            StoreClosedError: the store is closing or closed.
        """
        if limit is not None and limit < 1:
            raise ValueError("limit must be >= 1")
        found = self._run_read(
            lambda conn: q.list_checkpoints(
                conn, session_id, name=name, limit=limit, newest_first=newest_first
            ),
            "list_checkpoints",
        )
        if not found:
            self.get_session(session_id)  # SessionNotFoundError for an unknown id
        return found

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Collect writes and apply them all or nothing: ``with store.transaction() as tx:``.

        On leaving the block normally, every op of ``tx`` is written as one unit: one
        ``BEGIN IMMEDIATE`` transaction while the store is open, one queued entry while it
        closes, one journal line after it closed (replayed as one transaction). If the block
        raises, nothing is written and the exception propagates. A ``tx`` method given bad
        input raises ``ValueError`` at once and adds nothing.

        Raises:
            SessionNotFoundError, InvalidTransitionError: an op was refused when applied (store
                open); nothing of the transaction was applied.
        """
        tx = Transaction()
        try:
            yield tx
        except BaseException:
            tx._finish()  # discarded: nothing applied, queued or journaled
            raise
        batch = tx._finish()
        if batch is not None:
            self._write(batch)

    def put_checkpoint(
        self,
        session_id: str,
        checkpoint_id: str,
        data: Any = None,
        *,
        namespace: str = "",
        parent_id: str | None = None,
        name: str = "checkpoint",
        metadata: dict[str, Any] | None = None,
        blob: bytes | None = None,
        run_id: str | None = None,
    ) -> Checkpoint:
        """Insert or update the checkpoint ``(session_id, namespace, checkpoint_id)``.

        Args:
            session_id: the session (thread).
            checkpoint_id: the caller's id; ids should sort in creation order (uuid6/uuid7),
                since reads list newest first by id.
            data: a JSON payload.
            namespace: separates checkpoint histories within one session (subgraphs).
            parent_id: the checkpoint this one follows.
            name: a label.
            metadata: a JSON object, filterable by :meth:`find_checkpoints`.
            blob: a binary payload.
            run_id: the run that made it (see :meth:`delete_runs`).

        Upsert, last writer wins on the op's time: an older put applied late changes nothing.

        Raises:
            ValueError: a field the op rules refuse.
            SessionNotFoundError: no such session (checked while the store is open).
        """
        op = make_put_checkpoint(
            session_id,
            checkpoint_id,
            data,
            namespace=namespace,
            parent_id=parent_id,
            name=name,
            metadata=metadata,
            blob=blob,
            run_id=run_id,
        )
        self._write(op)
        return checkpoint_from_put(op)

    def get_checkpoint(
        self, session_id: str, checkpoint_id: str, *, namespace: str = ""
    ) -> Checkpoint | None:
        """Return one checkpoint by the caller's id, or None (also for an unknown session).

        Raises:
            StoreClosedError: the store is closing or closed.
        """
        found = self.find_checkpoints(
            session_id, namespace=namespace, checkpoint_id=checkpoint_id, limit=1
        )
        return found[0] if found else None

    def find_checkpoints(
        self,
        session_id: str | None = None,
        *,
        namespace: str | None = None,
        name: str | None = None,
        checkpoint_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        run_id: str | None = None,
        before: str | None = None,
        limit: int | None = None,
    ) -> list[Checkpoint]:
        """Return checkpoints newest first (by checkpoint id), filtered by every given argument.

        Args:
            session_id: one session, or None for every session.
            namespace: one namespace, or None for all.
            name: only checkpoints with this name (label).
            checkpoint_id: one checkpoint id.
            metadata: each key's value must equal (as JSON) the checkpoint's metadata value.
            run_id: made by this run.
            before: only checkpoints whose id sorts before this one.
            limit: at most this many (1..100000), or None for all.

        Returns:
            The matches; empty (never an error) for an unknown session.

        Raises:
            ValueError: ``limit`` out of range, or a bad metadata filter.
            StoreClosedError: the store is closing or closed.
        """
        if limit is not None and not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be within 1..{MAX_PAGE}")
        if metadata:
            metadata_filter(metadata)  # ValueError before anything is read
        return self._run_read(
            lambda conn: q.find_checkpoints(
                conn,
                session_id=session_id,
                namespace=namespace,
                name=name,
                checkpoint_id=checkpoint_id,
                metadata=metadata,
                run_id=run_id,
                before=before,
                limit=limit,
            ),
            "find_checkpoints",
        )

    def put_writes(
        self,
        session_id: str,
        checkpoint_id: str,
        task_id: str,
        writes: Iterable[tuple[int, str, str | None, bytes | None]],
        *,
        namespace: str = "",
        task_path: str = "",
        replace: bool = False,
    ) -> None:
        """Record writes ``(idx, channel, type, blob)`` of a task, attached to a checkpoint.

        Idempotent on ``(task_id, idx)``: a write already there is kept, unless ``replace``
        (last writer wins on the op's time).

        Raises:
            ValueError: a write the op rules refuse.
            SessionNotFoundError: no such session (checked while the store is open).
        """
        self._write(
            make_put_writes(
                session_id,
                checkpoint_id,
                task_id,
                writes,
                namespace=namespace,
                task_path=task_path,
                replace=replace,
            )
        )

    def checkpoint_writes(
        self, session_id: str, checkpoint_id: str, *, namespace: str = ""
    ) -> list[CheckpointWrite]:
        """Return a checkpoint's writes, by task id then idx (empty if none).

        Raises:
            StoreClosedError: the store is closing or closed.
        """
        return self._run_read(
            lambda conn: q.checkpoint_writes(conn, session_id, namespace, checkpoint_id),
            "checkpoint_writes",
        )

    def prune_checkpoints(
        self, session_id: str, keep: int, *, namespace: str | None = None
    ) -> None:
        """Keep only the ``keep`` newest checkpoints per namespace (0: delete them all).

        Their writes go with them. Ordered by op time as :meth:`delete_session`.

        Raises:
            ValueError: ``keep`` < 0.
        """
        self._write(PruneCheckpoints(session_id=session_id, keep=keep, namespace=namespace))

    def delete_runs(self, run_ids: Sequence[str]) -> None:
        """Delete every checkpoint made by these runs, with its writes, in every session.

        Ordered by op time as :meth:`delete_session`.

        Raises:
            ValueError: no run id, or a bad one.
        """
        self._write(DeleteRuns(run_ids=list(run_ids)))

    def pop_checkpoint(self, session_id: str, *, namespace: str = "") -> Checkpoint | None:
        """Delete and return the newest checkpoint of a namespace (by checkpoint id).

        Race-free: concurrent pops (any process) each get a different checkpoint.

        Returns:
            The popped checkpoint (its id, session, namespace and data), or None when there
            was none, and also when the store is closing or closed: the pop is then queued or
            journaled and takes effect, ordered by its time, when applied.
        """
        op = PopCheckpoint(session_id=session_id, namespace=namespace)
        return checkpoint_from_pop(op, self._write(op))

    def find_checkpoints_lenient(
        self,
        session_id: str,
        *,
        namespace: str | None = None,
        limit: int | None = None,
        check: Callable[[Checkpoint], str | None] | None = None,
    ) -> tuple[list[Checkpoint], list[tuple[str, str]]]:
        """:meth:`find_checkpoints`, skipping corrupt rows; see ``_maintenance.find_readable``."""
        from ._maintenance import find_readable

        return find_readable(self, session_id, namespace=namespace, limit=limit, check=check)
