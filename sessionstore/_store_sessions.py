"""The session methods of :class:`sessionstore.SessionStore`: read, find by key, move, copy, delete.

Grouped out of ``_store`` by topic; what they use of the store is declared in ``_store_base``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from . import _queries as q
from ._models import Session, SessionStatus, StoreState
from ._ops import CopySession, DeleteSession, SetStatus, session_from_create, session_id_for_key
from ._store_base import StoreCore
from ._transaction import make_keyed_create
from .errors import SessionNotFoundError, StoreClosedError


class SessionMethods(StoreCore):
    """Sessions: reads, status changes, keyed sessions, copy, delete (``SessionStore`` has them)."""

    def get_session(self, session_id: str) -> Session:
        """Return one session.

        Raises:
            SessionNotFoundError: no such session.
            StoreClosedError: the store is closing or closed.
        """
        found = self._run_read(lambda conn: q.get_session(conn, session_id), "get_session")
        if found is None:
            raise SessionNotFoundError(session_id)
        return found

    def list_sessions(self, status: SessionStatus | str | None = None) -> list[Session]:
        """Return sessions, oldest first, optionally only those with ``status``.

        Raises:
            ValueError: unknown status.
            StoreClosedError: the store is closing or closed.
        """
        wanted = None if status is None else SessionStatus(status)
        return self._run_read(lambda conn: q.list_sessions(conn, wanted), "list_sessions")

    def set_status(self, session_id: str, status: SessionStatus | str) -> None:
        """Move a session to ``status`` (see pause/resume/stop for the usual ones).

        Raises:
            SessionNotFoundError: no such session (checked while the store is open).
            InvalidTransitionError: e.g. pausing a stopped session; nothing changed.
            ValueError: unknown status.
        """
        self._write(SetStatus(session_id=session_id, status=SessionStatus(status)))

    def pause_session(self, session_id: str) -> None:
        """Mark a session PAUSED (it may be resumed). Raises as :meth:`set_status`."""
        self.set_status(session_id, SessionStatus.PAUSED)

    def resume_session(self, session_id: str) -> None:
        """Mark a paused, stopped or crashed session ACTIVE again. Raises as :meth:`set_status`."""
        self.set_status(session_id, SessionStatus.ACTIVE)

    def stop_session(self, session_id: str) -> None:
        """Mark a session STOPPED. Raises as :meth:`set_status`."""
        self.set_status(session_id, SessionStatus.STOPPED)

    def get_or_create_session_by_key(
        self,
        key: str,
        *,
        name: str | None = None,
        objective: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Session:
        """Return the session of a caller's key (a thread or conversation id), creating it.

        Race-free across processes: the session id is derived from the key, and creating it
        is ``INSERT ... ON CONFLICT DO NOTHING`` in ``BEGIN IMMEDIATE``, so any number of
        processes asking for one new key at once get one session. ``name`` (default: the key),
        ``objective`` and ``metadata`` are used only when it is created. A deleted session's
        key makes a new session (deletion is ordered by op time, see :meth:`delete_session`).

        Returns:
            The session as stored (the first creator's); while the store is closing or closed,
            the session as this call's op would create it (queued or journaled).

        Raises:
            ValueError: a key, name or metadata the rules refuse.
        """
        op = make_keyed_create(key, name, objective, metadata)
        self._write(op)
        if self._gate.state is StoreState.OPEN:
            with contextlib.suppress(StoreClosedError, SessionNotFoundError):
                return self.get_session(op.session_id)
        return session_from_create(op)

    def find_session_by_key(self, key: str) -> Session | None:
        """Return the session of a caller's key, or None.

        Raises:
            ValueError: not a valid key.
            StoreClosedError: the store is closing or closed.
        """
        try:
            return self.get_session(session_id_for_key(key))
        except SessionNotFoundError:
            return None

    def delete_session(self, session_id: str) -> None:
        """Delete a session (thread): its checkpoints, writes, events and children records.

        Ordered by op time: only rows written before this call go, and any op made before
        it and applied later (a journal replayed late) is skipped, so nothing deleted comes
        back and nothing newer is destroyed. Deleting an unknown session changes nothing.
        """
        self._write(DeleteSession(session_id=session_id))

    def copy_session(self, source_id: str, target_id: str) -> None:
        """Copy every checkpoint (and its writes) of one session into another, existing one.

        The target keeps the rows it already has. Ordered by op time as
        :meth:`delete_session`: rows written after this call are not copied by a late replay.

        Raises:
            SessionNotFoundError: no target session (checked while the store is open).
        """
        self._write(CopySession(source_id=source_id, target_id=target_id))

    def resume_session_with_owner(self, session_id: str, *, claim: bool) -> None:
        """Resume and record the new owner (this process, or none); see ``_maintenance``."""
        from ._maintenance import resume_with_owner

        resume_with_owner(self, session_id, claim=claim)
