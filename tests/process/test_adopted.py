"""Adopted orphans' zombies are reaped; a child the application forked keeps its status."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from _support import zombie_children
from escapee_helpers import subreaper_scope
from process_helpers import SCRIPTS, read_line, wait_pidfds_readable

from sessionstore import SessionStore
from sessionstore.process import ProcessLayer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux subreaper")

ORPHANS = str(SCRIPTS / "orphans.py")


@pytest.fixture
def subreaper() -> Iterator[None]:
    """The test process is the subreaper the orphans land on (the layer's own process)."""
    with subreaper_scope():
        yield


def _exited(popen: subprocess.Popen[bytes]) -> None:
    """Wait until ``popen``'s child has exited, without reaping it (its pidfd turns readable)."""
    fd = os.pidfd_open(popen.pid)
    try:
        assert wait_pidfds_readable([fd], 10)
    finally:
        os.close(fd)


def _leave_orphans(layer: ProcessLayer) -> tuple[dict[int, int], int]:
    """Spawn orphans.py through the layer; its two orphans' {exit code: pid}, and the go fd."""
    pids_r, pids_w = os.pipe()
    go_r, go_w = os.pipe()
    try:
        root = layer.spawn(
            [sys.executable, ORPHANS, str(pids_w), str(go_r)], pass_fds=[pids_w, go_r]
        )
        assert root.wait(10) == 0
        os.close(pids_w)
        os.close(go_r)
        pids_w = go_r = -1
        found = {}
        for _ in range(2):
            code, pid = read_line(pids_r, 10).split()
            found[int(code)] = int(pid)
        return found, go_w
    finally:
        for fd in (pids_r, pids_w, go_r):
            if fd != -1:
                os.close(fd)


def test_adopted_zombies_are_reaped_and_the_applications_statuses_kept(
    store: SessionStore, session_id: str, subreaper: None
) -> None:
    """A sweep reaps adopted orphans (by session, by marker) and no child the app forked."""
    layer = ProcessLayer(store, session_id, cgroup=False, close_store=False)
    go_w = -1
    try:
        orphans, go_w = _leave_orphans(layer)
        fds = [os.pidfd_open(pid) for pid in orphans.values()]
        layer._reap_adopted()  # sees them alive: the marker one is known from here on
        mine = subprocess.Popen(["sh", "-c", "exit 7"])
        mine_own_session = subprocess.Popen(["sh", "-c", "exit 9"], start_new_session=True)
        _exited(mine)
        _exited(mine_own_session)
        os.close(go_w)
        go_w = -1
        try:
            assert wait_pidfds_readable(fds, 10)
        finally:
            for fd in fds:
                os.close(fd)
        assert set(orphans.values()) <= zombie_children()
        assert layer._reap_adopted() == 2
        assert zombie_children() == {mine.pid, mine_own_session.pid}
        assert mine.wait(5) == 7
        assert mine_own_session.wait(5) == 9
    finally:
        if go_w != -1:
            os.close(go_w)
        layer.shutdown()


def test_shutdown_never_steals_the_status_of_an_application_child_it_ends(
    store: SessionStore, session_id: str, subreaper: None
) -> None:
    """A child the app started in its own session is ended by shutdown; Popen still sees -15."""
    layer = ProcessLayer(store, session_id, grace_s=2, cgroup=False, close_store=False)
    mine = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        layer.spawn(["sleep", "600"])
        layer.shutdown()
        assert mine.wait(5) == -signal.SIGTERM
    finally:
        if mine.poll() is None:
            mine.kill()
            mine.wait()


@pytest.mark.timeout(60)
def test_sweeps_racing_a_popen_wait_never_take_its_status(
    store: SessionStore, session_id: str, subreaper: None
) -> None:
    """20 rounds: sweeps run while another thread waits on the app's Popen; its code stays 5."""
    layer = ProcessLayer(store, session_id, cgroup=False, close_store=False)
    bad = []
    try:
        for n in range(20):
            go_r, go_w = os.pipe()
            mine = subprocess.Popen(
                [sys.executable, "-c", f"import os\nos.read({go_r}, 1)\nos._exit(5)"],
                pass_fds=[go_r],
                start_new_session=True,
            )
            os.close(go_r)
            codes: list[int] = []
            waiter = threading.Thread(target=lambda p=mine, c=codes: c.append(p.wait()))
            waiter.start()
            os.close(go_w)  # it exits now, while the sweeps run
            while waiter.is_alive():
                layer._reap_adopted()
                waiter.join(0.001)
            if codes != [5]:
                bad.append((n, codes))
    finally:
        layer.shutdown()
    assert not bad, bad
