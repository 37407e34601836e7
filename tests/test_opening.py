"""What an open checks: read-only refusals, the integrity probe's bound, a replay that defers."""

from __future__ import annotations

import pytest

from sessionstore import SchemaVersionError, StoreBusyError, StoreOpenError
from sessionstore._migrate import FileKind, latest_version
from sessionstore._models import ReplayReport
from sessionstore._opening import (
    check_read_only_kind,
    check_read_only_version,
    replay_at_open,
)


@pytest.mark.parametrize("kind", [FileKind.NEW, FileKind.FIRST_RELEASE])
def test_read_only_open_refuses_a_file_it_would_have_to_create_or_migrate(kind: FileKind) -> None:
    """Only a sessionstore database passes; the message says to open it read-write first."""
    check_read_only_kind("/d/s.db", FileKind.OURS)
    with pytest.raises(StoreOpenError, match="read-write first"):
        check_read_only_kind("/d/s.db", kind)


def test_read_only_open_needs_the_latest_schema() -> None:
    """Newer: SchemaVersionError; older: StoreOpenError (nothing is migrated); latest: fine."""
    check_read_only_version("/d/s.db", latest_version())
    with pytest.raises(SchemaVersionError):
        check_read_only_version("/d/s.db", latest_version() + 1)
    with pytest.raises(StoreOpenError, match="older"):
        check_read_only_version("/d/s.db", latest_version() - 1)


def test_a_replay_that_fails_defers_and_never_fails_the_open() -> None:
    """Busy (or any error) leaves the journal for later; an unsafe journal file still raises."""

    def busy() -> ReplayReport:
        raise StoreBusyError("/d/s.db", "replay", 1.0)

    def unsafe() -> ReplayReport:
        raise StoreOpenError("/d/s.db", "the journal is a symlink")

    report = replay_at_open("/d/s.db", busy)
    assert report.deferred is not None and report.deferred.startswith("StoreBusyError")
    with pytest.raises(StoreOpenError):
        replay_at_open("/d/s.db", unsafe)
    assert replay_at_open("/d/s.db", lambda: ReplayReport(applied=3)).applied == 3
