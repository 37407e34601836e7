"""OpenAI Agents SDK session over a SessionStore: ``session=SessionStoreSession(id, store)``.

A conversation is a keyed session of the store (``openai-agents:<session_id>``); each item is a
keyed checkpoint of it (namespace ``items``) whose id the store makes (uuid7-style), so items
sort in the order they were added, across processes too. ``add_items`` is one store
transaction (all or nothing; its ids are fixed when the op is made, so a retried write never
duplicates an item); ``pop_item`` is one op that deletes and returns the newest item (two
concurrent pops never get the same item); ``clear_session`` deletes the store session.

What close means here: the SDK's own SQLite session refuses every call once closed. This one
does not own the store and never closes it; after ``store.close()``, ``add_items`` and
``clear_session`` are journaled (fsynced) and applied by the next open of the file, so a run
that is finishing while the process shuts down loses none of its history; ``pop_item`` is
journaled too and returns None (it cannot know the item yet); ``get_items`` raises
``StoreClosedError``.

A corrupt record does not hide valid history: ``get_items`` skips an item whose stored JSON
cannot be read (or is not an object), logs a warning naming it, records it in ``skipped``, and
returns the other items, still the latest ``limit`` readable ones.

Requires the ``openai-agents`` extra.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .._models import Checkpoint
from .._ops import new_id, session_id_for_key
from .._store import SessionStore

if TYPE_CHECKING:
    from agents.memory import SessionSettings

__all__ = ["SessionStoreSession"]

log = logging.getLogger("sessionstore")

KEY_PREFIX = "openai-agents:"
_MAX_CORRUPT_POPS = 1000  # one pop never spins for ever over a damaged history
NAMESPACE = "items"


def _not_an_item(cp: Checkpoint) -> str | None:
    # The SDK's items are JSON objects; anything else in the history is a damaged record.
    if isinstance(cp.data, dict):
        return None
    return f"not an item: a JSON {type(cp.data).__name__}"


class SessionStoreSession:
    """The Agents SDK ``Session`` protocol over one :class:`SessionStore`.

    Args:
        session_id: the conversation's id.
        store: an open store, shared, never closed by the session.
        session_settings: the SDK's settings (``limit``: the default ``get_items`` limit).
    """

    def __init__(
        self,
        session_id: str,
        store: SessionStore,
        *,
        session_settings: SessionSettings | None = None,
    ) -> None:
        self.session_id = session_id
        self.session_settings = session_settings
        self.store = store
        self._key = f"{KEY_PREFIX}{session_id}"
        # Items skipped by reads because their record is corrupt: (item id, reason).
        self.skipped: list[tuple[str, str]] = []
        self._sid = session_id_for_key(self._key)

    def _limit(self, limit: int | None) -> int | None:
        if limit is not None:
            return limit
        if self.session_settings is not None:
            return getattr(self.session_settings, "limit", None)
        return None

    def _get(self, limit: int | None) -> list[Any]:
        limit = self._limit(limit)
        if limit is not None and limit <= 0:
            return []
        # A corrupt record (unreadable JSON, or JSON that is no item) is skipped and reported,
        # never allowed to hide the valid history around it (the SDK's contract for backends).
        found, corrupt = self.store.find_checkpoints_lenient(
            self._sid, namespace=NAMESPACE, limit=limit, check=_not_an_item
        )
        self.skipped.extend(corrupt)
        return [cp.data for cp in reversed(found)]

    def _add(self, items: list[Any]) -> None:
        if not items:
            return
        with self.store.transaction() as tx:
            tx.get_or_create_session_by_key(self._key)
            for item in items:
                tx.put_checkpoint(self._sid, new_id(), item, namespace=NAMESPACE, name="item")

    def _pop(self) -> Any:
        # A corrupt newest record is removed (it cannot be returned) and reported, and the pop
        # goes on to the newest readable item, rather than answer None ("no history") over it.
        for _ in range(_MAX_CORRUPT_POPS):
            try:
                popped = self.store.pop_checkpoint(self._sid, namespace=NAMESPACE)
            except ValueError as err:  # the row was deleted; its JSON could not be read
                self.skipped.append(("?", f"popped unreadable: {type(err).__name__}: {err}"))
                log.warning("conversation %s: popped an unreadable item", self.session_id)
                continue
            if popped is None:
                return None
            why = _not_an_item(popped)
            if why is None:
                return popped.data
            self.skipped.append((popped.id, f"popped {why}"))
            log.warning("conversation %s: popped a record that is %s", self.session_id, why)
        return None

    async def get_items(self, limit: int | None = None) -> list[Any]:
        """The latest ``limit`` items (all if None), oldest first.

        Raises:
            StoreClosedError: the store is closing or closed.
        """
        return await asyncio.to_thread(self._get, limit)

    async def add_items(self, items: list[Any]) -> None:
        """Append items, all or nothing, in their order.

        Raises:
            ValueError: an item that is not JSON; nothing of the batch is added.
        """
        await asyncio.to_thread(self._add, list(items))

    async def pop_item(self) -> Any:
        """Remove and return the newest item; None if there is none (or the store is closed)."""
        return await asyncio.to_thread(self._pop)

    async def clear_session(self) -> None:
        """Delete every item of this conversation (items added later start a new history)."""
        await asyncio.to_thread(self.store.delete_session, self._sid)
