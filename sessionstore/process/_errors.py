"""Errors of the process layer, rooted in :class:`~sessionstore.errors.SessionStoreError`."""

from __future__ import annotations

from ..errors import SessionStoreError

__all__ = ["ShutdownInProgressError"]


class ShutdownInProgressError(SessionStoreError, RuntimeError):
    """``spawn``/``track`` after shutdown stopped accepting children; nothing was started."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(
            f"session {session_id!r} is shutting down: no new child processes are accepted"
        )
