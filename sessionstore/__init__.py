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

from typing import TYPE_CHECKING, Any

from ._config import StoreConfig
from ._exports import publish as _publish
from ._identity import ProcessIdentity
from ._models import (
    Checkpoint,
    CheckpointResult,
    ChildProcess,
    ChildState,
    CloseReport,
    Event,
    OpFailure,
    ReplayReport,
    Session,
    SessionStatus,
    StoreState,
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

if TYPE_CHECKING:
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

# The process layer (signal handling, child tracking: ctypes, asyncio's kin) is imported on first
# use of one of its names, not by ``import sessionstore``: a shell hook or a tool that only reads
# the store should not pay for it. Rejected: importing it eagerly (about a third of the import
# time) or asking callers to import ``sessionstore.process`` themselves (it breaks the public
# names promised here).
_LAZY = frozenset(
    {
        "ChildOutcome",
        "LayerAlreadyInstalledError",
        "ProcessLayer",
        "ReapReport",
        "ShutdownInProgressError",
        "ShutdownPhase",
        "ShutdownReport",
        "reap_orphans",
    }
)


def __getattr__(name: str) -> Any:
    """Import a process-layer name on first use (``sessionstore.ProcessLayer`` and the rest).

    Raises:
        AttributeError: no such public name.
    """
    if name in _LAZY:
        from . import process

        value = getattr(process, name)
        globals()[name] = value  # later look-ups are plain module attributes
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)


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

# Each name says where users import it from (tracebacks, pickle, docs); the process layer's
# names keep ``sessionstore.process``, set there.
_publish(
    __name__,
    [
        obj
        for name, obj in list(globals().items())
        if name in __all__
        and str(getattr(obj, "__module__", "")).startswith(
            ("sessionstore._", "sessionstore.errors")
        )
    ],
)
del _publish
