"""The roots shutdown ends: our pinned children, plus rows of the session we did not pin.

Rows come from earlier runs of the session, or from ``store.add_child`` calls made around the
layer. Each row's identity is checked before anything is done to it: a PID that names another
process now (or no process, or one from another boot) is marked gone and never signalled; a
zombie is recorded as exited; one whose identity cannot be read is left alone (fail closed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._identity import IdentityStatus, boot_id
from .._models import ChildProcess, ChildState
from ..errors import SessionStoreError, UnsafeSignalError
from ._children import ChildRegistry
from ._pin import Pin
from ._reports import ChildOutcome, Outcome

if TYPE_CHECKING:
    from .._store import SessionStore

__all__ = ["OPEN_STATES", "gather_roots"]

OPEN_STATES = (ChildState.RUNNING, ChildState.UNKILLABLE)  # unkillable: worth another try


def gather_roots(
    store: SessionStore, session_id: str, registry: ChildRegistry, errors: list[str]
) -> tuple[list[Pin], list[ChildOutcome]]:
    """Return the pins to end (ours, then adopted rows) and outcomes of rows already settled.

    Rows adopted here are pinned (identity re-read after the pidfd is open) and handed to the
    registry's exit watcher, so their ends are recorded like our own children's.
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
        status = IdentityStatus.OTHER_BOOT if row.boot_id != boot_id() else row.identity.check()
        pin, outcome = _settle(row, status)
        if pin is not None:
            registry.adopt_recorded(pin)
            roots.append(pin)
            continue
        if outcome is not None:
            _outcome, state = outcome
            if state is not None:
                try:
                    store.remove_child(
                        session_id, row.pid, None, state=state, start_ticks=row.start_ticks
                    )
                except SessionStoreError as err:
                    errors.append(f"recording child {row.pid} {state.value}: {err!r}")
            outcomes.append(
                ChildOutcome(
                    pid=row.pid,
                    start_ticks=row.start_ticks,
                    pgid=row.pgid,
                    argv=row.argv,
                    source="recorded",
                    outcome=_outcome,
                )
            )
    return roots, outcomes


def _settle(
    row: ChildProcess, status: IdentityStatus
) -> tuple[Pin | None, tuple[Outcome, ChildState | None] | None]:
    if status in (IdentityStatus.GONE, IdentityStatus.REUSED, IdentityStatus.OTHER_BOOT):
        return None, ("gone", ChildState.GONE)
    if status is IdentityStatus.ZOMBIE:
        return None, ("exited", ChildState.EXITED)
    if status is not IdentityStatus.ALIVE:
        return None, ("left", None)
    try:
        pin = Pin.pin(
            row.pid, source="recorded", expected_start_ticks=row.start_ticks, argv=row.argv
        )
    except ProcessLookupError:
        return None, ("gone", ChildState.GONE)
    except UnsafeSignalError:
        return None, ("left", None)
    return pin, None
