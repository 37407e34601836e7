"""sessionstore: sessions in one SQLite file shared by many processes, and an ordered shutdown.

Public names only; the implementation lives in private modules.
"""

from typing import TYPE_CHECKING, Any

from ._config import StoreConfig
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
    "UnsafeSignalError",
    "__version__",
    "reap_orphans",
]
