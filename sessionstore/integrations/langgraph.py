"""LangGraph checkpointer over a SessionStore: ``checkpointer=SessionStoreSaver(store)``.

Each LangGraph thread is a session of the store, found by its key (``langgraph:<thread_id>``);
each checkpoint is a keyed checkpoint of that session (the namespace is LangGraph's
``checkpoint_ns``, the id its ``checkpoint_id``, the whole serialised checkpoint the binary
payload, the metadata filterable JSON); pending writes are checkpoint writes. Every write is
one store transaction, so it inherits the store's promises: ``BEGIN IMMEDIATE`` with retries
under contention from other processes, queued while the store closes, journaled (fsynced)
after it closed and applied by the next open.

What close means here: the saver does not own the store and never closes it. After
``store.close()``, ``put``/``put_writes``/deletions are journaled and return normally (the
graph does not crash); reads (``get_tuple``, ``list``) raise ``StoreClosedError``, so a graph
started after close fails at its first read rather than resuming from stale state.

Requires the ``langgraph`` extra.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from .._models import Checkpoint as StoredCheckpoint
from .._ops import session_id_for_key
from .._store import SessionStore

__all__ = ["SessionStoreSaver"]

KEY_PREFIX = "langgraph:"
NAME = "langgraph"  # the label of every checkpoint this saver writes


def _key(thread_id: Any) -> str:
    return f"{KEY_PREFIX}{thread_id}"


class SessionStoreSaver(BaseCheckpointSaver[str]):
    """A LangGraph ``BaseCheckpointSaver`` (sync and async) over one :class:`SessionStore`.

    Args:
        store: an open store; shared with anything else using it, never closed by the saver.
        serde: LangGraph's serializer (default: its JsonPlus serializer).

    Supports ``delete_thread``, ``delete_for_runs``, ``copy_thread`` and ``prune``; each is
    one store op, ordered by its time against every other write (see
    :meth:`SessionStore.delete_session`).
    """

    def __init__(self, store: SessionStore, *, serde: SerializerProtocol | None = None) -> None:
        super().__init__(serde=serde)
        self.store = store

    # ----------------------------------------------------------------------------- reads

    def _thread_of(self, session_id: str, cache: dict[str, str | None]) -> str | None:
        if session_id not in cache:
            key = self.store.get_session(session_id).key
            cache[session_id] = (
                key[len(KEY_PREFIX) :] if key and key.startswith(KEY_PREFIX) else None
            )
        return cache[session_id]

    def _tuple(self, cp: StoredCheckpoint, thread_id: str) -> CheckpointTuple:
        assert cp.blob is not None
        checkpoint: Checkpoint = self.serde.loads_typed((cp.data["type"], cp.blob))
        writes = self.store.checkpoint_writes(cp.session_id, cp.id, namespace=cp.namespace)
        pending = [
            (w.task_id, w.channel, self.serde.loads_typed((w.type or "empty", w.blob or b"")))
            for w in writes
        ]
        config: RunnableConfig = {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": cp.namespace,
                "checkpoint_id": cp.id,
            }
        }
        parent: RunnableConfig | None = None
        if cp.parent_id is not None:
            parent = {
                "configurable": {
                    "thread_id": thread_id,
                    "checkpoint_ns": cp.namespace,
                    "checkpoint_id": cp.parent_id,
                }
            }
        metadata: CheckpointMetadata = cp.metadata  # type: ignore[assignment]
        return CheckpointTuple(config, checkpoint, metadata, parent, pending)

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint named by ``config`` (its latest if no ``checkpoint_id``), or None.

        Raises:
            StoreClosedError: the store is closing or closed.
        """
        conf = config["configurable"]
        thread_id = conf["thread_id"]
        found = self.store.find_checkpoints(
            session_id_for_key(_key(thread_id)),
            namespace=conf.get("checkpoint_ns", ""),
            name=NAME,
            checkpoint_id=get_checkpoint_id(config),
            limit=1,
        )
        return self._tuple(found[0], str(thread_id)) if found else None

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,  # LangGraph's parameter name
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first, by thread/namespace/id, metadata filter, before, limit.

        Raises:
            StoreClosedError: the store is closing or closed.
        """
        conf = (config or {}).get("configurable", {})
        thread_id = conf.get("thread_id")
        found = self.store.find_checkpoints(
            None if thread_id is None else session_id_for_key(_key(thread_id)),
            namespace=conf.get("checkpoint_ns"),
            name=NAME,
            checkpoint_id=conf.get("checkpoint_id"),
            metadata=filter or None,
            before=None if before is None else get_checkpoint_id(before),
            limit=limit,
        )
        cache: dict[str, str | None] = {}
        for cp in found:
            thread = (
                str(thread_id) if thread_id is not None else self._thread_of(cp.session_id, cache)
            )
            if thread is not None:
                yield self._tuple(cp, thread)

    # ----------------------------------------------------------------------------- writes

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint (one store transaction); returns its config.

        Never raises because the store is closing or closed: the write is queued or journaled.

        Raises:
            ValueError: metadata that is not JSON.
        """
        conf = config["configurable"]
        thread_id = conf["thread_id"]
        namespace = conf.get("checkpoint_ns", "")
        type_, blob = self.serde.dumps_typed(checkpoint)
        md = dict(get_serializable_checkpoint_metadata(config, metadata))
        run_id = md.get("run_id")
        with self.store.transaction() as tx:
            session_id = tx.get_or_create_session_by_key(_key(thread_id))
            tx.put_checkpoint(
                session_id,
                checkpoint["id"],
                {"type": type_},
                namespace=namespace,
                parent_id=conf.get("checkpoint_id"),
                name=NAME,
                metadata=md,
                blob=blob,
                run_id=str(run_id) if run_id is not None else None,
            )
        return {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": namespace,
                "checkpoint_id": checkpoint["id"],
            }
        }

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's intermediate writes, idempotent on ``(task_id, idx)``.

        The special channels (error, interrupt, scheduled, resume) take their fixed negative
        index and replace an earlier value; other writes keep the first value stored.
        """
        conf = config["configurable"]
        entries = []
        for idx, (channel, value) in enumerate(writes):
            type_, blob = self.serde.dumps_typed(value)
            entries.append((WRITES_IDX_MAP.get(channel, idx), channel, type_, blob))
        with self.store.transaction() as tx:
            session_id = tx.get_or_create_session_by_key(_key(conf["thread_id"]))
            tx.put_writes(
                session_id,
                conf["checkpoint_id"],
                task_id,
                entries,
                namespace=conf.get("checkpoint_ns", ""),
                task_path=task_path,
                replace=all(channel in WRITES_IDX_MAP for channel, _ in writes),
            )

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint and write of the thread (the thread's session)."""
        self.store.delete_session(session_id_for_key(_key(thread_id)))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete every checkpoint (and its writes) whose metadata ``run_id`` is one of these."""
        if run_ids:
            self.store.delete_runs([str(r) for r in run_ids])

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint and write of one thread into another (kept rows stay)."""
        with self.store.transaction() as tx:
            target = tx.get_or_create_session_by_key(_key(target_thread_id))
            tx.copy_session(session_id_for_key(_key(source_thread_id)), target)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``keep_latest``: keep each namespace's newest checkpoint; ``delete``: keep none.

        Raises:
            ValueError: another strategy.
        """
        keep = {"keep_latest": 1, "delete": 0}.get(strategy)
        if keep is None:
            raise ValueError(f"unknown prune strategy {strategy!r}")
        if not thread_ids:
            return
        with self.store.transaction() as tx:
            for thread_id in thread_ids:
                tx.prune_checkpoints(session_id_for_key(_key(thread_id)), keep)

    def get_next_version(self, current: str | None, channel: None) -> str:
        """A version string that sorts after ``current`` (as LangGraph's own savers make)."""
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(current.split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"  # a tie-breaker, not a secret

    # ----------------------------------------------------------------------------- async

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """As :meth:`get_tuple`, in a worker thread."""
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """As :meth:`list`, in a worker thread."""
        items = await asyncio.to_thread(
            lambda: list(self.list(config, filter=filter, before=before, limit=limit))
        )
        for item in items:
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """As :meth:`put`, in a worker thread."""
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """As :meth:`put_writes`, in a worker thread."""
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        """As :meth:`delete_thread`, in a worker thread."""
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """As :meth:`delete_for_runs`, in a worker thread."""
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """As :meth:`copy_thread`, in a worker thread."""
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """As :meth:`prune`, in a worker thread."""
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)
