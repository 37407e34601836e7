"""Process-wide hooks: one module registers them all, in an order that keeps a fork safe."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import sessionstore
from sessionstore import SessionStore, StoreConfig
from sessionstore._files import wal_size
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


def test_hooks_are_registered_once_whatever_is_imported_first() -> None:
    """Importing a low module first (the journal) still registers every hook once, in order."""
    code = (
        "import sessionstore._journal\n"
        "import sessionstore\n"
        "from sessionstore._lifecycle import HOOKS\n"
        "print(','.join(h.owner.rsplit('.', 1)[1] for h in HOOKS))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    assert out == "_forkgate,_ops,_journal,_lifecycle,_lifecycle"


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


def test_a_store_left_open_is_closed_at_interpreter_exit(db_path: str) -> None:
    """A store never closed is closed by the exit hook: its queued state is on disk after exit."""
    code = (
        "import sys\n"
        "from sessionstore import SessionStore\n"
        "store = SessionStore.open(sys.argv[1])\n"
        "store.create_session('left open')\n"
    )
    subprocess.run([sys.executable, "-c", code, db_path], timeout=60, check=True)
    # Closed at exit: the final TRUNCATE checkpoint emptied the WAL.
    assert wal_size(db_path) == 0
    with SessionStore.open(db_path, config=StoreConfig(checkpointing=False)) as store:
        assert [s.name for s in store.list_sessions()] == ["left open"]
