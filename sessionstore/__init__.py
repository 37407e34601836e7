"""sessionstore: sessions in one SQLite file shared by many processes, and an ordered shutdown.

Public names only; the implementation lives in private modules.
"""

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
