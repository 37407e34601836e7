"""The store's enumerations and literal types: plain Python, no pydantic.

Kept apart from the models (``_models``) so that what only needs a status's values, such as the
command line's argument parser, does not import pydantic (about 100 ms of a cold start) for
them. ``_models`` re-exports each name.
"""

from __future__ import annotations

import enum
from typing import Literal

from . import _exports

__all__ = ["ChildState", "EventLevel", "SessionStatus", "StoreState"]

EventLevel = Literal["debug", "info", "warning", "error", "critical"]


class SessionStatus(str, enum.Enum):
    """Lifecycle of a session."""

    ACTIVE = "active"
    PAUSED = "paused"
    STOPPED = "stopped"
    COMPLETED = "completed"
    CRASHED = "crashed"


class ChildState(str, enum.Enum):
    """How a recorded child process stands, or how it ended."""

    RUNNING = "running"
    EXITED = "exited"  # ended on its own, or on our SIGTERM (exit code recorded)
    KILLED = "killed"  # needed SIGKILL
    UNKILLABLE = "unkillable"  # still there after SIGKILL and the verify deadline
    GONE = "gone"  # vanished, or its PID was reused by a stranger: never signalled


class StoreState(str, enum.Enum):
    """Where a store is in its life; it only moves forward."""

    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


_exports.publish_written_here(__name__)  # last: see _exports
