"""The cgroup tier on a real cgroup v2 hierarchy: children start inside, we never stay inside."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

from sessionstore.process._cgroup import SessionCgroup, cgroup_unavailable

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        cgroup_unavailable() is not None, reason=f"cgroup tier: {cgroup_unavailable()}"
    ),
]


@pytest.fixture
def cgroup() -> Iterator[SessionCgroup]:
    """A session cgroup, emptied and removed after the test."""
    cg = SessionCgroup.create(f"sessionstore-test-{os.getpid()}-0")
    yield cg
    if cg.populated():
        cg.kill()
        cg.wait_empty(float("inf"))
    assert cg.remove()


def _own_cgroup() -> str:
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        return next(line for line in f if line.startswith("0::")).strip()


def test_children_fork_inside_and_we_move_back(cgroup: SessionCgroup) -> None:
    """A child forking at once has its child inside too, 20 of 20; we are back home each time."""
    home = _own_cgroup()
    bad = []
    for n in range(20):
        proc = cgroup.spawn(
            lambda: subprocess.Popen(
                ["sh", "-c", "setsid sleep 600 & echo $!; exec sleep 600"],
                stdout=subprocess.PIPE,
                text=True,
            )
        )
        assert proc.stdout is not None
        grandchild = int(proc.stdout.readline())
        if _own_cgroup() != home or not (cgroup.contains(proc.pid) and cgroup.contains(grandchild)):
            bad.append(n)
        os.kill(grandchild, signal.SIGKILL)
        proc.kill()
        proc.wait()
    assert not bad, bad


def test_kill_refuses_while_we_are_inside(cgroup: SessionCgroup) -> None:
    """cgroup.kill is never written while this process is in the cgroup (a failed move back)."""
    home = os.path.dirname(cgroup.path)  # the session cgroup is made below our own
    with open(os.path.join(cgroup.path, "cgroup.procs"), "w", encoding="ascii") as f:
        f.write(str(os.getpid()))
    try:
        assert cgroup.contains(os.getpid())
        assert cgroup.kill() is False  # and we are alive to say so
    finally:
        with open(os.path.join(home, "cgroup.procs"), "w", encoding="ascii") as f:
            f.write(str(os.getpid()))
    assert not cgroup.contains(os.getpid())
