"""Public names: where each is written, and the module users import it from.

A class written in a private module (``sessionstore._models.Session``) is published by a public
namespace (``sessionstore``); setting its ``__module__`` to that namespace makes tracebacks,
``repr`` of classes, documentation tools and pickle name the path a user can import, and keeps
the private layout free to move (trio's ``fixup_module_metadata``). Pickle finds a class by
``__module__`` + ``__qualname__``, so this also holds pickles stable across a reshuffle of the
private modules.

``import sessionstore`` imports none of the modules in :data:`PUBLIC` (pydantic, apsw and the
rest come with the first name used: ``sessionstore/__init__.py``), so each module that writes
public names publishes them itself, at the end of its own import
(:func:`publish_written_here`): a public class names ``sessionstore`` however its module got
imported, through ``sessionstore.X`` or by another module of the package. Rejected: publishing
from ``sessionstore/__init__.py`` when a name is first looked up there, which would leave
``sessionstore._models.Session`` on sessions made by code that imported the private module
directly and never asked ``sessionstore`` for the name (the CLI does that).

Rejected alternative: defining every public class in its public module, which would put the
whole library in three ``__init__`` files.

This module imports nothing from the package: every private module may import it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["PUBLIC", "TOP", "publish", "publish_written_here"]

TOP = "sessionstore"
"""The namespace every name of :data:`PUBLIC` is imported from."""

_ERRORS = (
    "ChildTerminationError",
    "ForeignDatabaseError",
    "InvalidTransitionError",
    "JournalBusyError",
    "JournalFullError",
    "ProcessNotFoundError",
    "SchemaVersionError",
    "SessionNotFoundError",
    "SessionStoreError",
    "StoreBusyError",
    "StoreClosedError",
    "StoreCorruptError",
    "StoreIOError",
    "StoreOpenError",
    "StoreReadOnlyError",
    "UnsafeForkError",
    "UnsafeSignalError",
)
_MODELS = (
    "Checkpoint",
    "CheckpointResult",
    "ChildProcess",
    "CloseReport",
    "Event",
    "OpFailure",
    "ReplayReport",
    "Session",
    "StoreStats",
)
_ENUMS = ("ChildState", "SessionStatus", "StoreState")
# The process layer publishes its own names (home ``sessionstore.process``); ``sessionstore``
# re-exports them.
_PROCESS = (
    "ChildOutcome",
    "LayerAlreadyInstalledError",
    "ProcessLayer",
    "ReapReport",
    "ShutdownInProgressError",
    "ShutdownPhase",
    "ShutdownReport",
    "reap_orphans",
)

PUBLIC: dict[str, str] = {
    "StoreConfig": "sessionstore._config",
    "ProcessIdentity": "sessionstore._identity",
    "ReadLease": "sessionstore._store",
    "SessionStore": "sessionstore._store",
    **dict.fromkeys(_MODELS, "sessionstore._models"),
    **dict.fromkeys(_ENUMS, "sessionstore._enums"),
    **dict.fromkeys(_ERRORS, "sessionstore.errors"),
    **dict.fromkeys(_PROCESS, "sessionstore.process"),
}
"""Every public name of ``sessionstore`` (but ``__version__``), by the module it comes from."""


def publish_written_here(module_name: str) -> None:
    """Publish, as ``sessionstore.<name>``, the public names the module ``module_name`` writes.

    Called by such a module as the last line of its import. Afterwards each of its names in
    :data:`PUBLIC` has ``__module__ == "sessionstore"``.

    Raises:
        KeyError: the module is not imported yet.
    """
    namespace = vars(sys.modules[module_name])
    publish(TOP, [namespace[n] for n, home in PUBLIC.items() if home == module_name])


def publish(module_name: str, objects: Iterable[Any]) -> None:
    """Set ``__module__`` of each class and function in ``objects`` to ``module_name``.

    A pydantic model whose schema is not built yet (``defer_build``, or a forward reference
    left unresolved when the class was written) keeps resolving its annotations in the module
    it was written in: pydantic looks names up in ``sys.modules[cls.__module__]`` when it
    builds, and the public namespace does not hold the private names an annotation may use.
    Its ``__pydantic_parent_namespace__`` (consulted before the module's globals) is pointed
    at the defining module's namespace first.

    Afterwards each object's ``__module__`` is ``module_name``; other objects are untouched.
    """
    for obj in objects:
        if not isinstance(obj, type) and not callable(obj):
            continue
        defining = getattr(obj, "__module__", None)
        if defining is None or defining == module_name:
            continue
        if (
            isinstance(obj, type)
            and hasattr(obj, "__pydantic_complete__")
            and not obj.__pydantic_complete__
            and getattr(obj, "__pydantic_parent_namespace__", None) is None
            and defining in sys.modules
        ):
            model: Any = obj  # a pydantic model class; the attribute is pydantic's
            model.__pydantic_parent_namespace__ = vars(sys.modules[defining])
        obj.__module__ = module_name
