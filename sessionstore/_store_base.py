"""What the method groups of :class:`sessionstore.SessionStore` use of the store's core.

``SessionStore`` (``_store``) is the core: construction and ``open``, the write router, the
read runners, leases, state, stats and ``close``. Its public methods are grouped by topic in
mixin modules (``_store_sessions``, ``_store_checkpoints``, ``_store_children``,
``_store_maintenance``), each a subclass of :class:`StoreCore`, which declares once, typed,
what those groups call. ``SessionStore`` inherits every group and overrides each stub here.

Rejected alternative: a ``Protocol`` as the groups' self-type. A mixin's methods would then
be checked against the protocol only where ``self`` is annotated, and a stub left
unimplemented would surface at call time; a base class makes mypy check each override's
signature against the one declared here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import apsw

from ._config import StoreConfig
from ._journal import Journal
from ._leases import Gate
from ._models import ReplayReport, Session
from ._ops import Op
from ._routing import WriteRouter
from ._writer import Writer

__all__ = ["StoreCore"]

T = TypeVar("T")


class StoreCore:
    """The core of a store, as its method groups see it; ``SessionStore`` implements it.

    Every method here raises ``NotImplementedError``: each is overridden by ``SessionStore``
    (or by a sibling group, for :meth:`get_session`), never called on this class.
    """

    path: str
    config: StoreConfig
    read_only: bool
    _gate: Gate[Op]
    _writer: Writer
    _router: WriteRouter
    _journal: Journal

    def _write(self, op: Op) -> Any:
        """Route ``op``: what ``apply`` returned, or ``DEFERRED`` (see ``SessionStore``)."""
        raise NotImplementedError

    def _run_read(self, fn: Callable[[apsw.Connection], T], borrower: str) -> T:
        """Run ``fn`` on a leased read connection (see ``SessionStore``)."""
        raise NotImplementedError

    def lease(self, borrower: str = "user") -> contextlib.AbstractContextManager[object]:
        """Hold a read lease (see ``SessionStore.lease``)."""
        raise NotImplementedError

    @property
    def journal_path(self) -> str:
        """The durable journal file beside the database (see ``SessionStore``)."""
        raise NotImplementedError

    def get_session(self, session_id: str) -> Session:
        """Return one session (see ``SessionStore.get_session``)."""
        raise NotImplementedError

    def replay(self) -> ReplayReport:
        """Apply the journal beside the database now (see ``SessionStore.replay``)."""
        raise NotImplementedError
