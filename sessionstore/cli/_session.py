"""How a command line names a session: a full id, a unique id prefix, or a session name.

Operators type what they remember, as with git commits and docker containers: ``0193a`` for a
long id, or ``web`` for the session ``sessionstore run --name web`` started. Everything here goes
through the store's public reads (``get_session``, ``list_sessions``); nothing writes.
"""

from __future__ import annotations

from .._models import Session, SessionStatus
from .._store import SessionStore
from ..errors import SessionNotFoundError
from ._common import EXIT_USAGE, CliError

__all__ = ["resolve_session"]

_LIVE = (SessionStatus.ACTIVE, SessionStatus.PAUSED)


def resolve_session(store: SessionStore, text: str) -> Session:
    """The one session ``text`` names: exact id, else unique id prefix, else name.

    A name may be reused across runs: the one active or paused session of that name wins; when
    none is live, the newest of that name.

    Args:
        store: an open store.
        text: what the operator typed.

    Returns:
        The session.

    Raises:
        SessionNotFoundError: nothing matches (exit 5).
        CliError: ``text`` matches several sessions (exit 2); the candidates are listed.
    """
    if not text:
        raise SessionNotFoundError(text)
    try:
        return store.get_session(text)
    except SessionNotFoundError:
        pass
    # Rejected: a LIKE query of our own. The CLI reads through the store's public methods only,
    # and an unknown-id lookup is the rare path, so reading the list once is affordable.
    sessions = store.list_sessions()
    by_prefix = [s for s in sessions if s.id.startswith(text)]
    if len(by_prefix) == 1:
        return by_prefix[0]
    if len(by_prefix) > 1:
        raise _ambiguous(text, "id prefix", by_prefix)
    named = [s for s in sessions if s.name == text]
    live = [s for s in named if s.status in _LIVE]
    if len(live) == 1:
        return live[0]
    if len(live) > 1:
        raise _ambiguous(text, "name of live sessions", live)
    if named:
        return named[-1]  # list_sessions is oldest first; ids sort by creation
    raise SessionNotFoundError(text)


def _ambiguous(text: str, what: str, found: list[Session]) -> CliError:
    shown = ", ".join(f"{s.id} ({s.status.value})" for s in found[:5])
    more = f" and {len(found) - 5} more" if len(found) > 5 else ""
    return CliError(f"{text!r} is the {what} of {len(found)} sessions: {shown}{more}", EXIT_USAGE)
