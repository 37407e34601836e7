"""Process-wide hooks: one module registers them all, in an order that keeps a fork safe."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _procs import start

import sessionstore
from sessionstore import SessionStore
from sessionstore._lifecycle import HOOKS
from sessionstore._store import live_stores

_PACKAGE = Path(sessionstore.__file__).parent
# ProcessLayer registers its atexit hook per install() and removes it at uninstall(): an
# instance's hook, not a process-wide one registered at import (listed in _lifecycle's table).
_PER_INSTANCE = {"process/_coordinator.py"}


def _registrations(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func
            if isinstance(target.value, ast.Name) and (target.value.id, target.attr) in {
                ("os", "register_at_fork"),
                ("atexit", "register"),
            }:
                found.append(f"{target.value.id}.{target.attr}:{node.lineno}")
    return found


def test_only_lifecycle_registers_process_wide_hooks() -> None:
    """No module but _lifecycle calls os.register_at_fork or atexit.register."""
    offenders = {}
    for source in sorted(_PACKAGE.rglob("*.py")):
        name = str(source.relative_to(_PACKAGE))
        if name in {"_lifecycle.py", *_PER_INSTANCE}:
            continue
        calls = _registrations(ast.parse(source.read_text(), filename=name))
        if calls:
            offenders[name] = calls
    assert offenders == {}


def test_hooks_are_listed_in_the_order_a_fork_needs() -> None:
    """The fork gate registers first (its before-hook runs last), the live stores' reset last."""
    forks = [hook.owner for hook in HOOKS if hook.when == "fork"]
    assert forks[0] == "sessionstore._forkgate"
    assert forks[-1] == "sessionstore._lifecycle"
    assert {"sessionstore._ops", "sessionstore._journal"} <= set(forks)
    assert [hook.owner for hook in HOOKS if hook.when == "exit"] == ["sessionstore._lifecycle"]
    assert len(HOOKS) == len(set(HOOKS)), HOOKS  # registered once each


def _words_printed_by(code: str) -> list[str]:
    """What a fresh interpreter running ``code`` prints, split into words."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()


def test_hooks_are_registered_once_whatever_is_imported_first() -> None:
    """Importing a low module first (the journal) still registers every hook once, in order."""
    code = (
        "import sessionstore._journal\n"
        "from sessionstore._lifecycle import HOOKS\n"
        "print(','.join(h.owner.rsplit('.', 1)[1] for h in HOOKS))\n"
        "import sessionstore\n"
        "sessionstore.SessionStore  # the first use of the store imports it\n"
        "print(','.join(h.owner.rsplit('.', 1)[1] for h in HOOKS))\n"
    )
    out = _words_printed_by(code)
    assert out == ["_forkgate,_ops,_journal", "_forkgate,_ops,_journal,_lifecycle,_lifecycle"]


def test_a_fork_hook_before_the_gate_is_refused() -> None:
    """A module registering a fork hook before the fork gate's fails at import, registering none."""
    code = (
        "from sessionstore import _lifecycle\n"
        "try:\n"
        "    _lifecycle.at_fork('probe', 'nothing', before=lambda: None)\n"
        "except RuntimeError as err:\n"
        "    print(len(_lifecycle.HOOKS), 'fork gate' in str(err))\n"
    )
    out = _words_printed_by(code)
    assert out == ["0", "True"]


def test_a_store_is_live_from_open_until_close(db_path: str) -> None:
    """live_stores() holds a store while it is open (or closing), never after close."""
    store = SessionStore.open(db_path)
    assert store in live_stores()
    store.close()
    assert store not in live_stores()


def test_a_failed_open_leaves_no_live_store(tmp_path: Path) -> None:
    """An open that fails (not a database) is not left in the live registry."""
    path = tmp_path / "not.db"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(sessionstore.StoreCorruptError):
        SessionStore.open(str(path))
    assert live_stores() == []


@pytest.mark.filterwarnings(
    # Forking while the store's threads run is what this test proves safe (3.12+ warns).
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)
def test_forked_child_reopens_its_own_connection(db_path: str) -> None:
    """After fork the child never uses the parent's connection: it opens its own and writes."""
    store = SessionStore.open(db_path)
    sid = store.create_session("s").id
    store.log_event(sid, "parent before fork")
    parent_conn = store._writer._conn
    pid = os.fork()
    if pid == 0:  # the child: exit with a status that says what it saw
        try:
            store.log_event(sid, "child")
            child_conn = store._writer._conn  # the child's own, opened after the fork
            ok = child_conn is not None and child_conn is not parent_conn
            store.close()
            os._exit(0 if ok else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    store.log_event(sid, "parent after fork")
    assert [e.message for e in store.events(sid)] == [
        "parent before fork",
        "child",
        "parent after fork",
    ]
    store.close()


def test_store_left_open_is_closed_at_exit(db_path: str) -> None:
    """A process that forgets close() still closes at interpreter exit, with a warning."""
    with SessionStore.open(db_path) as store:
        sid = store.create_session("s").id
    proc = start("leave_open", db_path, sid)
    _, err = proc.communicate("", timeout=60)
    assert proc.returncode == 0
    assert "left open at interpreter exit" in err
    assert not os.path.exists(db_path + "-wal") or os.path.getsize(db_path + "-wal") == 0
    with SessionStore.open(db_path) as store:
        assert [e.message for e in store.events(sid)] == ["written before exit"]
