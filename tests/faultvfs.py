"""A fault-injecting SQLite VFS for tests: fail the N-th I/O call, as SQLite's own tests do.

It is registered as the process's default VFS, so the store's connections use it without any
change to the library: the fault is injected below sessionstore, where a real disk would fail.
It wraps the ``unix`` VFS and counts calls to ``xWrite``, ``xSync``, ``xTruncate`` and
``xFileSize`` on every file SQLite opens (database, WAL, rollback journal). apsw forwards the
shared-memory methods (``xShmMap`` and friends) of an inheriting file straight to the base VFS
and does not let Python override them, so faults there are not injected.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import apsw

KINDS = ("xWrite", "xSync", "xTruncate", "xFileSize")
ERRORS = {"ioerr": apsw.IOError, "full": apsw.FullError}


@dataclass
class Plan:
    """Which call fails, and how. ``fail_at`` counts from 1 over the calls of ``kinds``."""

    fail_at: int = 0  # 0: never fail, only count
    kinds: tuple[str, ...] = KINDS
    error: str = "ioerr"  # or "full"
    persistent: bool = False  # every later call fails too (a disk that stays full)
    torn: bool = False  # an xWrite that fails first writes half of its bytes
    calls: int = 0
    fired: int = 0
    log: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hit(self, kind: str, name: str) -> bool:
        """Count one call; True when it must fail."""
        if kind not in self.kinds:
            return False
        with self.lock:
            self.calls += 1
            fail = self.fail_at > 0 and (
                self.calls == self.fail_at or (self.persistent and self.calls > self.fail_at)
            )
            if fail:
                self.fired += 1
                self.log.append(f"{self.calls}:{kind}:{name.rsplit('/', 1)[-1]}")
            return fail

    def raise_error(self) -> None:
        raise ERRORS[self.error]("injected fault")


class _File(apsw.VFSFile):
    def __init__(self, plan: Plan, name: apsw.URIFilename | str | None, flags: list[int]) -> None:
        super().__init__("unix", name, flags)
        self._plan = plan
        self._name = name.filename() if isinstance(name, apsw.URIFilename) else str(name)

    def xWrite(self, data: bytes, offset: int) -> None:  # noqa: N802 - SQLite's name
        if self._plan.hit("xWrite", self._name):
            if self._plan.torn and len(data) > 1:
                super().xWrite(data[: len(data) // 2], offset)
            self._plan.raise_error()
        super().xWrite(data, offset)

    def xSync(self, flags: int) -> None:  # noqa: N802
        if self._plan.hit("xSync", self._name):
            self._plan.raise_error()
        super().xSync(flags)

    def xTruncate(self, newsize: int) -> None:  # noqa: N802
        if self._plan.hit("xTruncate", self._name):
            self._plan.raise_error()
        super().xTruncate(newsize)

    def xFileSize(self) -> int:  # noqa: N802
        if self._plan.hit("xFileSize", self._name):
            self._plan.raise_error()
        return int(super().xFileSize())


class FaultVFS(apsw.VFS):
    """The ``unix`` VFS with a :class:`Plan` deciding which call fails."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        super().__init__("faulty", base="unix", makedefault=True)

    def xOpen(  # noqa: N802
        self, name: apsw.URIFilename | str | None, flags: list[int]
    ) -> apsw.VFSFile:
        return _File(self.plan, name, flags)


@contextmanager
def faulty(plan: Plan) -> Iterator[FaultVFS]:
    """Make every new connection of this process go through a :class:`FaultVFS`."""
    vfs = FaultVFS(plan)
    try:
        yield vfs
    finally:
        vfs.unregister()
        # "unix" is the default again: unregistering the default makes the next one default.
        apsw.Connection(":memory:").close()
