"""SIGTERM → orchestrator exit, measured from outside, as a process manager would see it.

Each round starts ``tests/process/scripts/orchestrator.py`` (untimed), waits for its ``READY``
line, then times: send SIGTERM → the orchestrator ends its children, records their ends, writes
the final state, closes the store and dies by SIGTERM → ``Popen.wait()`` returns.

Targets: 10 cooperative children <= 150 ms (fixed-sleep designs take 0.5-2 s); one child that
ignores SIGTERM: grace + <= 100 ms. Run with ``pytest benchmarks/ --benchmark-enable``.
"""

from __future__ import annotations

import itertools
import os
import selectors
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ORCHESTRATOR = Path(__file__).parents[1] / "tests" / "process" / "scripts" / "orchestrator.py"
GRACE_S = 0.5


@pytest.fixture
def orchestrators(
    tmp_path: Path,
) -> Iterator[Callable[..., tuple[tuple[Any, ...], dict[str, Any]]]]:
    started: list[subprocess.Popen[bytes]] = []
    counter = itertools.count()

    def start(*args: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        db = tmp_path / f"bench-{next(counter)}.db"
        proc = subprocess.Popen(
            [sys.executable, str(ORCHESTRATOR), str(db), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        started.append(proc)
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                assert sel.select(60), "orchestrator did not get ready"
                chunk = os.read(fd, 1)
                assert chunk, "orchestrator exited before it was ready"
                line += chunk
        assert line.startswith(b"READY ")
        return (proc,), {}

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def _sigterm_to_exit(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == -signal.SIGTERM


def test_sigterm_ten_cooperative_children(benchmark: Any, orchestrators: Any) -> None:
    """SIGTERM to exit with 10 children that obey SIGTERM (target <= 150 ms)."""
    benchmark.pedantic(
        _sigterm_to_exit, setup=lambda: orchestrators("--coop=10", "--grace=5"), rounds=10
    )


def test_sigterm_one_term_ignoring_child(benchmark: Any, orchestrators: Any) -> None:
    """SIGTERM to exit with one child that ignores SIGTERM (target grace 0.5 s + <= 100 ms)."""
    benchmark.extra_info["grace_s"] = GRACE_S
    benchmark.pedantic(
        _sigterm_to_exit,
        setup=lambda: orchestrators("--ignore-term=1", f"--grace={GRACE_S}"),
        rounds=5,
    )
