"""_summaries: the status screen's statements, plain values read from a real store."""

from __future__ import annotations

import pytest

from sessionstore import SessionStore, _queries
from sessionstore._identity import ProcessIdentity
from sessionstore._summaries import owner_fields, stale_sessions


@pytest.mark.parametrize(
    "columns",
    [(None, 5, "boot"), (7, None, "boot"), (7, 5, ""), (7, 5, None)],
    ids=["no-pid", "no-ticks", "empty-boot", "no-boot"],
)
def test_an_owner_missing_a_column_is_no_owner(columns: tuple[object, object, object]) -> None:
    """Without all three columns the owner could never be verified: none is reported."""
    assert owner_fields(*columns) is None


def test_stale_rows_carry_the_owner_the_session_model_has(store: SessionStore) -> None:
    """The status screen's owner (from rows) equals the Session model's owner, field by field."""
    session = store.create_session("owned")
    with store.lease() as lease:
        (row,) = stale_sessions(lease, 1e12)
        model = _queries.get_session(lease, session.id)
    sid, name, heartbeat_at, created_at, pid, ticks, boot_id, host = row
    assert (sid, name, heartbeat_at, created_at, host) == (
        session.id,
        "owned",
        None,
        session.created_at,
        session.owner_host,
    )
    assert model is not None and model.owner == ProcessIdentity.current()
    assert owner_fields(pid, ticks, boot_id) == model.owner.model_dump()
