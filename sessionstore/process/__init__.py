"""The process layer: child process trees tracked in the store, and one ordered shutdown.

Public names only; the implementation lives in private modules. Linux first (pidfds, ``/proc``,
``prctl`` subreaper); macOS and the BSDs use psutil fallbacks. Windows is not supported.
"""

import sys

if sys.platform == "win32":  # pragma: no cover - exercised only on Windows
    raise ImportError(
        "sessionstore.process is not supported on Windows: it relies on POSIX signals, process "
        "groups and pidfds (Linux) or psutil on macOS/BSD; the store itself works without it"
    )

from .._exports import publish as _publish
from ._coordinator import ProcessLayer
from ._errors import LayerAlreadyInstalledError, ShutdownInProgressError
from ._reaper import reap_orphans
from ._reports import (
    CallbackError,
    ChildOutcome,
    ReapedChild,
    ReapedSession,
    ReapReport,
    ShutdownPhase,
    ShutdownReport,
)

__all__ = [
    "CallbackError",
    "ChildOutcome",
    "LayerAlreadyInstalledError",
    "ProcessLayer",
    "ReapReport",
    "ReapedChild",
    "ReapedSession",
    "ShutdownInProgressError",
    "ShutdownPhase",
    "ShutdownReport",
    "reap_orphans",
]

_publish(__name__, [obj for name, obj in list(globals().items()) if name in __all__])
del _publish
