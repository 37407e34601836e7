"""The event-reading and child-process methods of :class:`sessionstore.SessionStore`.

``log_event`` stays in ``_store`` with the write fast path. Grouped out of ``_store`` by topic;
what they use of the store is declared in ``_store_base``.
"""

from __future__ import annotations

from . import _queries as q
from ._identity import ProcessIdentity
from ._models import ChildProcess, ChildState, Event
from ._ops import RemoveChild, child_from_op
from ._store_base import StoreCore
from ._transaction import make_add_child

_MAX_EVENTS_PAGE = 10_000


class EventChildMethods(StoreCore):
    """Event pages and child-process records (``SessionStore`` has them)."""

    def events(self, session_id: str, after_id: int | None = None, limit: int = 100) -> list[Event]:
        """Return up to ``limit`` events with id > ``after_id``, oldest first (for paging).

        Raises:
            ValueError: ``limit`` outside 1..10000.
            SessionNotFoundError: no such session.
            StoreClosedError: the store is closing or closed.
        """
        if not 1 <= limit <= _MAX_EVENTS_PAGE:
            raise ValueError(f"limit must be within 1..{_MAX_EVENTS_PAGE}")
        found = self._run_read(lambda conn: q.events(conn, session_id, after_id, limit), "events")
        if not found and after_id is None:
            self.get_session(session_id)
        return found

    def add_child(
        self,
        session_id: str,
        pid: int,
        *,
        identity: ProcessIdentity | None = None,
        pgid: int | None = None,
        argv: list[str] | None = None,
    ) -> ChildProcess:
        """Record a child process of the session; its identity is captured now.

        Args:
            session_id: the session.
            pid: the child's pid.
            identity: an identity captured earlier (e.g. right after spawn); must match ``pid``.
            pgid: the child's process group; read from the process when omitted.
            argv: the child's command line; read from the process when omitted.

        Raises:
            ValueError: pid not an int in 2..pid_max, our own pid, or ``identity.pid`` differs.
            ProcessNotFoundError: no process has that pid (nothing to identify); also a
                ``ProcessLookupError``.
            SessionNotFoundError: no such session (checked while the store is open).
        """
        op = make_add_child(session_id, pid, identity=identity, pgid=pgid, argv=argv)
        self._write(op)
        return child_from_op(op)

    def remove_child(
        self,
        session_id: str,
        pid: int,
        exit_code: int | None = None,
        *,
        state: ChildState | str = ChildState.EXITED,
        start_ticks: int | None = None,
    ) -> None:
        """Record that a child ended (``state`` says how). Idempotent; the row is kept.

        Raises:
            ValueError: bad pid or state.
            SessionNotFoundError: no such session (checked while the store is open).
        """
        self._write(
            RemoveChild(
                session_id=session_id,
                pid=pid,
                exit_code=exit_code,
                state=ChildState(state),
                start_ticks=start_ticks,
            )
        )

    def children(self, session_id: str, include_exited: bool = False) -> list[ChildProcess]:
        """Return the session's recorded children, oldest first.

        Args:
            session_id: the session.
            include_exited: also the ones that ended (by default only running/unkillable).

        Raises:
            SessionNotFoundError: no such session.
            StoreClosedError: the store is closing or closed.
        """
        found = self._run_read(
            lambda conn: q.children(conn, session_id, include_exited=include_exited), "children"
        )
        if not found:
            self.get_session(session_id)
        return found

    def all_children(self, include_exited: bool = False) -> list[ChildProcess]:
        """Return every session's recorded children, oldest first.

        Raises:
            StoreClosedError: the store is closing or closed.
        """
        return self._run_read(
            lambda conn: q.all_children(conn, include_exited=include_exited), "all_children"
        )
