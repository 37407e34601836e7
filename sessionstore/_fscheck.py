"""Warn when the database sits on a filesystem where WAL is not safe.

WAL keeps its index in a shared-memory file (``-shm``) mapped by every connection and locks it
with POSIX byte-range locks; both need one kernel and one coherent page cache. Network
filesystems and VM-boundary mounts (NFS, SMB, 9p, virtiofs, FUSE, WSL's drvfs) break that,
and users of such setups report "database disk image is malformed". The store warns rather
than refuses: some FUSE filesystems are local and fine, and the operator knows which.
"""

from __future__ import annotations

import logging
import os

__all__ = ["RISKY_FILESYSTEMS", "filesystem_of", "warn_if_risky"]

log = logging.getLogger("sessionstore")

RISKY_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "virtiofs", "drvfs", "ncpfs", "afs"}
)


def _unescape(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def filesystem_of(path: str, mounts: str) -> str | None:
    """The filesystem type of the mount holding ``path``, from ``/proc/mounts`` text.

    Returns:
        The type (``ext4``, ``nfs4``, ``fuse.sshfs`` ...), or None when no mount matches.
    """
    target = os.path.abspath(path)
    best, best_type = "", None
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = _unescape(parts[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, parts[2]
    return best_type


def warn_if_risky(path: str) -> str | None:
    """Log a warning when ``path`` is on a network or VM-boundary filesystem (Linux only).

    Returns:
        The risky filesystem type, or None (also when it cannot be told).
    """
    try:
        with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
            mounts = f.read()
    except OSError:
        return None
    fstype = filesystem_of(os.path.dirname(os.path.abspath(path)), mounts)
    if fstype is None or not (fstype in RISKY_FILESYSTEMS or fstype.startswith("fuse.")):
        return None
    log.warning(
        "%s is on a %s filesystem: SQLite's WAL needs shared memory and locks that one kernel "
        "sees; several processes writing it there can corrupt it. Use a local filesystem.",
        path,
        fstype,
    )
    return fstype
