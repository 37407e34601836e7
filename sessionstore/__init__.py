"""sessionstore: sessions in one SQLite file shared by many processes, and an ordered shutdown.

Public names only; the implementation lives in private modules.

Threads
-------
Every store method may be called from any thread. The package's own threads are daemons
named ``sessionstore-*``:

- ``checkpointer``, one per open store: started by ``SessionStore.open`` (again on the first
  write after a fork), ended by ``close()``. It takes a lease, then the writer's lock, and
  checkpoints on the writer's connection.
- With a ``ProcessLayer`` installed: ``signals`` (install → uninstall: reads the wakeup pipe),
  ``shutdown`` (the once-only sequence, started by the first request), ``exit-watcher``
  (first spawn/track → shutdown: reaps exits through pidfds, records them in the store),
  ``callback`` (runs exit callbacks, each within its budget), ``exit`` and ``flush`` (a hard
  exit: journal the queue, flush stdio). The CLI's ``run`` adds ``run-wait``.

What they share, and the lock guarding it: the gate (state, leases, closing queue: one lock,
so "apply / queue / journal" is atomic with close), the writer (connection, commit hook,
checkpoint counters: the writer's lock, which no caller takes directly), the read pool (idle
connections), the router (counters, failure ring), the journal (an ``flock`` per append).
Every call into SQLite runs inside ``FORK_GATE.section()``, which a fork waits for; the fork
and exit hooks are listed in ``_lifecycle``. Order: the store takes no lock of its own
while holding the gate's, and never holds the gate's while SQLite runs; the process layer's
child registry calls the store under its own lock, never the reverse.
"""

import importlib
from typing import TYPE_CHECKING, Any

from ._exports import PUBLIC as _PUBLIC

if TYPE_CHECKING:
    from ._config import StoreConfig
    from ._enums import ChildState, SessionStatus, StoreState
    from ._identity import ProcessIdentity
    from ._models import (
        Checkpoint,
        CheckpointResult,
        ChildProcess,
        CloseReport,
        Event,
        OpFailure,
        ReplayReport,
        Session,
        StoreStats,
    )
    from ._store import ReadLease, SessionStore
    from .errors import (
        ChildTerminationError,
        ForeignDatabaseError,
        InvalidTransitionError,
        JournalBusyError,
        JournalFullError,
        ProcessNotFoundError,
        SchemaVersionError,
        SessionNotFoundError,
        SessionStoreError,
        StoreBusyError,
        StoreClosedError,
        StoreCorruptError,
        StoreIOError,
        StoreOpenError,
        StoreReadOnlyError,
        UnsafeForkError,
        UnsafeSignalError,
    )
    from .process import (
        ChildOutcome,
        LayerAlreadyInstalledError,
        ProcessLayer,
        ReapReport,
        ShutdownInProgressError,
        ShutdownPhase,
        ShutdownReport,
        reap_orphans,
    )

__version__ = "0.1.0"

# Every public name is imported on its first use (PEP 562), not by ``import sessionstore``:
# pydantic, apsw and the store's modules cost a shell hook, ``--help`` or a program that only
# catches our errors 100-200 ms it may never use. The first name used pays for its module
# (``sessionstore.SessionStore``: the store and pydantic; ``sessionstore.StoreBusyError``:
# only the errors). Each module publishes its own names as ``sessionstore.<name>`` when it is
# imported (``_exports.publish_written_here``), so pickles, tracebacks and reprs name this
# namespace whichever way a module was reached. Rejected: eager imports (pydantic alone cost
# more than the 100 ms budget), and a lighter subset of eager names (which one a program
# needs first is the program's business; any eager model drags all of pydantic in).


def __getattr__(name: str) -> Any:
    """Import the module that writes the public ``name`` on its first use, and return it.

    Afterwards ``name`` is a plain attribute of this module.

    Raises:
        AttributeError: no such public name.
        ImportError: its module failed to import (a missing dependency).
    """
    home = _PUBLIC.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


__all__ = [
    "Checkpoint",
    "CheckpointResult",
    "ChildOutcome",
    "ChildProcess",
    "ChildState",
    "ChildTerminationError",
    "CloseReport",
    "Event",
    "ForeignDatabaseError",
    "InvalidTransitionError",
    "JournalBusyError",
    "JournalFullError",
    "LayerAlreadyInstalledError",
    "OpFailure",
    "ProcessIdentity",
    "ProcessLayer",
    "ProcessNotFoundError",
    "ReadLease",
    "ReapReport",
    "ReplayReport",
    "SchemaVersionError",
    "Session",
    "SessionNotFoundError",
    "SessionStatus",
    "SessionStore",
    "SessionStoreError",
    "ShutdownInProgressError",
    "ShutdownPhase",
    "ShutdownReport",
    "StoreBusyError",
    "StoreClosedError",
    "StoreConfig",
    "StoreCorruptError",
    "StoreIOError",
    "StoreOpenError",
    "StoreReadOnlyError",
    "StoreState",
    "StoreStats",
    "UnsafeForkError",
    "UnsafeSignalError",
    "__version__",
    "reap_orphans",
]
