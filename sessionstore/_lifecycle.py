"""Process-wide lifecycle: the stores alive in this process, and every fork and exit hook.

A store's state is per object, but three things belong to the process: which stores are
open (for the exit hook and for tests that catch a leak), what a forked child must do before
it may touch SQLite again, and what the interpreter does at exit. This module is the one place
that registers those hooks; :data:`HOOKS` lists them at run time, in registration order.

Every process-wide hook of the package:

==========================  ==========================  ==================================
registered by (at import)   when                        what
==========================  ==========================  ==================================
``_forkgate``               before / after fork         wait until no thread is inside
                                                        SQLite, fork, let go (child: reset)
``_ops``                    after fork, in the child    a new op-id lock
``_journal``                before / after fork         child: close the parent's journal
                                                        descriptors (their flock is shared)
``_store`` (this module's   after fork, in the child    each live store forgets the
``install_store_hooks``)                                parent's connections and locks
``_store`` (idem)           interpreter exit            close stores left open
``process.ProcessLayer``    ``install()``, ``atexit``   run the shutdown sequence (removed
                                                        by ``uninstall()``)
==========================  ==========================  ==================================

``os.register_at_fork`` runs ``before`` hooks in reverse registration order and the ``after``
hooks in registration order; the import order above (the fork gate first) makes the gate's
``before`` run last, right before the fork, and its child reset first.

The threads of the package (all daemons, all named ``sessionstore-*``) are listed in the
package docstring's "Threads" section.

Rejected: each module calling ``os.register_at_fork``/``atexit.register`` on its own (six
modules, and no one place said what happens at a fork); one import-time function registering
everyone's hooks (a module imported on its own, without the store, would fork unprotected).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:  # the fork gate imports this module: nothing heavier at run time
    from ._models import StoreState

__all__ = [
    "HOOKS",
    "Hook",
    "LiveStore",
    "at_fork",
    "forget",
    "install_store_hooks",
    "keep_inherited",
    "live",
    "open_read_write",
    "track",
]

log = logging.getLogger("sessionstore")


class Hook(NamedTuple):
    """One registered process-wide hook."""

    owner: str  # the module that registered it
    when: str  # "fork" or "exit"
    what: str  # one line: what it does


HOOKS: list[Hook] = []

_GATE = "sessionstore._forkgate"  # registers the first fork hooks of the process


def at_fork(
    owner: str,
    what: str,
    *,
    before: Callable[[], object] | None = None,
    after_in_parent: Callable[[], object] | None = None,
    after_in_child: Callable[[], object] | None = None,
) -> None:
    """Register fork hooks (``os.register_at_fork``) and list them in :data:`HOOKS`.

    Raises:
        RuntimeError: the fork gate's hooks are not registered yet (``owner`` must import
            ``_forkgate`` before it registers: the gate's ``before`` must run last). Nothing
            is registered then.
    """
    # ``import sessionstore`` imports nothing (its names load on first use), so a program may
    # import any module first; each module with a fork hook imports the gate itself, and this
    # check makes a module that forgets it fail at its first import, in every test.
    if owner != _GATE and not any(hook.owner == _GATE for hook in HOOKS):
        raise RuntimeError(f"{owner} registers a fork hook before the fork gate ({_GATE})")
    kwargs: dict[str, Callable[[], object]] = {}
    if before is not None:
        kwargs["before"] = before
    if after_in_parent is not None:
        kwargs["after_in_parent"] = after_in_parent
    if after_in_child is not None:
        kwargs["after_in_child"] = after_in_child
    os.register_at_fork(**kwargs)
    HOOKS.append(Hook(owner, "fork", what))


def _at_exit(owner: str, what: str, fn: Callable[[], object]) -> None:
    atexit.register(fn)
    HOOKS.append(Hook(owner, "exit", what))


class _Config(Protocol):
    @property
    def close_at_exit(self) -> bool: ...


class LiveStore(Protocol):
    """What the process-wide hooks need of a store (``SessionStore`` is one)."""

    @property
    def path(self) -> str: ...

    @property
    def read_only(self) -> bool: ...

    @property
    def state(self) -> StoreState: ...

    @property
    def config(self) -> _Config: ...

    @property
    def _pid(self) -> int: ...

    def close(self) -> object: ...

    def _after_fork_in_child(self) -> None: ...


# Stores of this process from open until close (weak: a store dropped without close is not
# kept alive by the registry; it is simply no longer closed at exit).
_live: weakref.WeakSet[LiveStore] = weakref.WeakSet()
# Connections inherited across fork: never closed or freed in the child (SQLite's close could
# delete state out from under the parent), so kept referenced here for the child's lifetime.
_inherited_at_fork: list[object] = []


def track(store: LiveStore) -> None:
    """A store is opening: from now on it is live (closed at exit, reset after fork)."""
    _live.add(store)


def forget(store: LiveStore) -> None:
    """A store closed (or its open failed): no longer live."""
    _live.discard(store)


def live() -> list[LiveStore]:
    """Every tracked store of this process that is not CLOSED (CLOSING ones are live)."""
    return [s for s in list(_live) if s.state != "closed"]  # StoreState.CLOSED


def open_read_write(path: str) -> bool:
    """Whether a live store of this process has ``path`` (a real path) open read-write.

    A read-only open must then never probe the file's locks with a descriptor of its own:
    closing that descriptor would drop every POSIX lock the process holds on the file,
    SQLite's included (see ``_connection.read_only_mode``).
    """
    return any(s.path == path and not s.read_only for s in live())


def keep_inherited(connections: list[object]) -> None:
    """Keep connections inherited across fork referenced (never closed) in the child."""
    _inherited_at_fork.extend(connections)


def _after_fork_in_child() -> None:
    for store in list(_live):
        store._after_fork_in_child()


def _close_at_exit() -> None:
    for store in live():
        if not store.config.close_at_exit or store._pid != os.getpid():
            continue
        log.warning("closing %r left open at interpreter exit", store)
        with contextlib.suppress(Exception):
            store.close()


def install_store_hooks() -> None:
    """Register the store hooks (the fork reset and the close at exit); once per process.

    Called at the end of ``_store``'s import, after the modules it imports registered theirs:
    ``os.register_at_fork`` runs ``after_in_child`` hooks in registration order, so a live
    store is reset after the fork gate, the op ids and the journal's descriptors are.
    """
    if any(hook.owner == __name__ for hook in HOOKS):
        return
    at_fork(
        __name__,
        "each live store forgets the parent's connections and locks",
        after_in_child=_after_fork_in_child,
    )
    _at_exit(__name__, "close stores left open (StoreConfig.close_at_exit)", _close_at_exit)
