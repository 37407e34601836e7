"""Errors of the process layer, rooted in :class:`~sessionstore.errors.SessionStoreError`."""

from __future__ import annotations

from ..errors import SessionStoreError

__all__ = ["LayerAlreadyInstalledError", "ShutdownInProgressError"]


class ShutdownInProgressError(SessionStoreError, RuntimeError):
    """``spawn``/``track`` after shutdown stopped accepting children; nothing was started."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(
            f"session {session_id!r} is shutting down: no new child processes are accepted"
        )


class LayerAlreadyInstalledError(SessionStoreError, RuntimeError):
    """``install()`` while another ProcessLayer of this process holds the signal handlers.

    Only one layer per process hears signals: with two, the second would silently take the
    handlers and the first layer's children would be orphaned. Nothing was changed.
    """

    def __init__(self, session_id: str, installed_session_id: str) -> None:
        self.session_id = session_id
        self.installed_session_id = installed_session_id
        super().__init__(
            f"cannot install the ProcessLayer of session {session_id!r}: the layer of session "
            f"{installed_session_id!r} already handles this process's signals (one installed "
            "layer per process; shut the other layers down from its before_children callback, "
            "or uninstall() it first)"
        )
