"""One triage of "a recorded child row versus what the OS says now", for shutdown and reaper.

Rows come from earlier runs of the session, from ``store.add_child`` calls made around the
layer, or from a dead orchestrator. Whoever asks, each row's identity is checked before anything
is done to it, and the answer decides alone:

* it names the recorded process, alive → pinned (pidfd, identity re-read after opening): its
  tree is to be ended;
* a zombie → it exited (the row says so; nothing to signal);
* the PID is free, names another process, or the row dates from another boot → the row is
  marked gone and nothing is signalled;
* it cannot be read (another user, another PID namespace, our own pid recycled) → left alone,
  row untouched: fail closed. "Cannot read" never means "gone".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._identity import IdentityStatus, boot_id
from .._models import ChildProcess, ChildState
from .._proc import ProcessUnreadableError
from ..errors import SessionStoreError, UnsafeSignalError
from ._pin import Pin
from ._reports import ChildOutcome, Outcome

if TYPE_CHECKING:
    from .._store import SessionStore
    from ._children import ChildRegistry

__all__ = ["OPEN_STATES", "Triage", "gather_roots", "triage"]

OPEN_STATES = (ChildState.RUNNING, ChildState.UNKILLABLE)  # unkillable: worth another try


@dataclass(frozen=True)
class Triage:
    """The verdict on one recorded row.

    Attributes:
        row: the row.
        status: what its recorded identity refers to now.
        pin: the pinned process when it is alive and ours to end; else None.
        outcome: how it ended when not pinned (``gone``, ``exited``, or ``left``: unknown).
        state: the row state to record when not pinned; None leaves the row as it is.
    """

    row: ChildProcess
    status: IdentityStatus
    pin: Pin | None
    outcome: Outcome | None = None
    state: ChildState | None = None


def triage(row: ChildProcess) -> Triage:
    """Decide what a recorded row is now; pins it when it names a live process.

    Never signals. The caller owns the pin (close it when not used).
    """
    status = IdentityStatus.OTHER_BOOT if row.boot_id != boot_id() else row.identity.check()
    if status in (IdentityStatus.GONE, IdentityStatus.REUSED, IdentityStatus.OTHER_BOOT):
        return Triage(row, status, None, "gone", ChildState.GONE)
    if status is IdentityStatus.ZOMBIE:
        return Triage(row, status, None, "exited", ChildState.EXITED)
    if status is not IdentityStatus.ALIVE:
        return Triage(row, status, None, "left", None)
    try:
        pin = Pin.pin(
            row.pid, source="recorded", expected_start_ticks=row.start_ticks, argv=row.argv
        )
    except ProcessLookupError:
        return Triage(row, IdentityStatus.GONE, None, "gone", ChildState.GONE)
    except (UnsafeSignalError, ProcessUnreadableError):
        return Triage(row, IdentityStatus.UNKNOWN, None, "left", None)
    return Triage(row, status, pin)


def gather_roots(
    store: SessionStore, session_id: str, registry: ChildRegistry, errors: list[str]
) -> tuple[list[Pin], list[ChildOutcome]]:
    """Return the pins to end (ours, then adopted rows) and outcomes of rows already settled.

    Rows adopted here are pinned and handed to the registry's exit watcher, so their ends are
    recorded like our own children's; settled rows are recorded as :func:`triage` says.
    """
    roots = registry.pins()
    pinned = {(p.pid, p.start_ticks) for p in roots}
    outcomes: list[ChildOutcome] = []
    try:
        rows = store.children(session_id)
    except SessionStoreError as err:
        errors.append(f"reading recorded children: {err!r}")
        rows = []
    for row in rows:
        if row.state not in OPEN_STATES or (row.pid, row.start_ticks) in pinned:
            continue
        verdict = triage(row)
        if verdict.pin is not None:
            registry.adopt_recorded(verdict.pin)
            roots.append(verdict.pin)
            continue
        if verdict.state is not None:
            try:
                store.remove_child(
                    session_id, row.pid, None, state=verdict.state, start_ticks=row.start_ticks
                )
            except SessionStoreError as err:
                errors.append(f"recording child {row.pid} {verdict.state.value}: {err!r}")
        assert verdict.outcome is not None
        outcomes.append(
            ChildOutcome(
                pid=row.pid,
                start_ticks=row.start_ticks,
                pgid=row.pgid,
                argv=row.argv,
                source="recorded",
                outcome=verdict.outcome,
            )
        )
    return roots, outcomes
