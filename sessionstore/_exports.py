"""Public names carry the module users import them from (trio's ``fixup_module_metadata``).

A class written in a private module (``sessionstore._models.Session``) is published by a public
namespace (``sessionstore``); setting its ``__module__`` to that namespace makes tracebacks,
``repr`` of classes, documentation tools and pickle name the path a user can import, and keeps
the private layout free to move. Pickle finds a class by ``__module__`` + ``__qualname__``, so
this also holds pickles stable across a reshuffle of the private modules.

Rejected alternative: defining every public class in its public module, which would put the
whole library in three ``__init__`` files.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["publish"]


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
