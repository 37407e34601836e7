"""The filesystem check: the mount holding a path, and which types WAL is unsafe on."""

from __future__ import annotations

import logging

import pytest

from sessionstore import SessionStore
from sessionstore._fscheck import filesystem_of, warn_if_risky

MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
server:/export /mnt/share nfs4 rw 0 0
//host/c /mnt/with\\040space cifs rw 0 0
sshfs#me@host: /mnt/share/deeper fuse.sshfs rw 0 0
tmpfs /mnt/sharex tmpfs rw 0 0
"""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/home/me/project/.sessionstore", "ext4"),
        ("/mnt/share/proj", "nfs4"),
        ("/mnt/share", "nfs4"),
        ("/mnt/sharex/db", "tmpfs"),  # a prefix of the name is not the same mount
        ("/mnt/with space/db", "cifs"),
        ("/mnt/share/deeper/x", "fuse.sshfs"),  # the longest mount point wins
    ],
)
def test_filesystem_of_picks_the_longest_mount(path: str, expected: str) -> None:
    """The mount holding a path is the longest mount point that contains it."""
    assert filesystem_of(path, MOUNTS) == expected


def test_local_database_opens_without_warning(
    db_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A database on this machine's local filesystem gets no warning."""
    with caplog.at_level(logging.WARNING, logger="sessionstore"):
        assert warn_if_risky(db_path) is None
        SessionStore.open(db_path).close()
    assert "filesystem" not in caplog.text
