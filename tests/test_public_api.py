"""The public surface: the contract's names exist, each has one public home, errors pickle."""

from __future__ import annotations

import importlib
import inspect
import pickle
import subprocess
import sys
from types import ModuleType
from typing import Any, get_origin

import pytest
from test_errors import _build, _same

import sessionstore
import sessionstore.errors
import sessionstore.process

CONTRACT = {
    "SessionStore",
    "StoreConfig",
    "SessionStatus",
    "Session",
    "Checkpoint",
    "Event",
    "ChildProcess",
    "CloseReport",
    "StoreStats",
    "ProcessLayer",
    "ShutdownReport",
    "ProcessIdentity",
    "SessionStoreError",
    "StoreClosedError",
    "SessionNotFoundError",
    "StoreBusyError",
    "StoreCorruptError",
    "reap_orphans",
    "ReapReport",
}
STORE_METHODS = {
    "open",
    "create_session",
    "get_session",
    "list_sessions",
    "pause_session",
    "resume_session",
    "stop_session",
    "heartbeat",
    "save_checkpoint",
    "latest_checkpoint",
    "log_event",
    "events",
    "add_child",
    "remove_child",
    "children",
    "stats",
    "close",
    "closed",
}
LAYER_METHODS = {"install", "spawn", "track", "on_shutdown", "shutdown"}


def test_contract_names_are_exported() -> None:
    """Every name of the DESIGN.md contract is importable from sessionstore."""
    assert set(sessionstore.__all__) >= CONTRACT
    for name in sessionstore.__all__:
        assert getattr(sessionstore, name) is not None


def test_all_is_sorted_and_public() -> None:
    """__all__ lists are sorted and name no private module or object."""
    for module in (sessionstore, sessionstore.process):
        names = list(module.__all__)
        assert names == sorted(names)
        assert not [n for n in names if n.startswith("_") and n != "__version__"]


def test_contract_methods_exist_with_docstrings() -> None:
    """SessionStore and ProcessLayer have the contract's methods, each documented."""
    for cls, methods in (
        (sessionstore.SessionStore, STORE_METHODS),
        (sessionstore.ProcessLayer, LAYER_METHODS),
    ):
        for name in methods:
            member = inspect.getattr_static(cls, name)
            assert inspect.getdoc(getattr(cls, name)) or inspect.getdoc(member), f"{cls}.{name}"


def test_errors_share_one_root() -> None:
    """Every exported exception derives from SessionStoreError."""
    errors = [getattr(sessionstore, n) for n in sessionstore.__all__ if n.endswith("Error")]
    assert errors
    assert all(issubclass(e, sessionstore.SessionStoreError) for e in errors)


def test_public_classes_are_documented() -> None:
    """Every exported class and function has a docstring."""
    for name in sessionstore.__all__:
        obj = getattr(sessionstore, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), name


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return set(out.split())


HEAVY = ("rich", "psutil", "tenacity", "sessionstore.process", "sessionstore.cli")


def test_import_does_not_load_heavy_modules() -> None:
    """``import sessionstore`` leaves rich, psutil, tenacity, the process layer and CLI unloaded."""
    loaded = _modules_after("import sessionstore")
    assert "sessionstore._store" in loaded  # the probe sees the package's own modules
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY or m.startswith(HEAVY))
    assert heavy == []
    assert not any(m.startswith("sessionstore.stress") for m in loaded)


def test_lazy_names_resolve_in_a_fresh_interpreter() -> None:
    """Each lazily imported public name resolves to the process layer's own object."""
    names = ["ChildOutcome", "LayerAlreadyInstalledError", "ProcessLayer", "ReapReport"]
    names += ["ShutdownInProgressError", "ShutdownPhase", "ShutdownReport", "reap_orphans"]
    check = "; ".join(f"assert sessionstore.{n} is sessionstore.process.{n}, {n!r}" for n in names)
    loaded = _modules_after(f"import sessionstore, sessionstore.process; {check}")
    assert "sessionstore.process" in loaded
    assert set(names) <= set(dir(sessionstore))


# Every public namespace, and the names one re-exports from another on purpose: the DESIGN
# contract promises the process layer's names from ``sessionstore`` too.
NAMESPACES = (
    "sessionstore",
    "sessionstore.process",
    "sessionstore.testing",
    "sessionstore.stress",
    "sessionstore.integrations.langgraph",
    "sessionstore.integrations.openai_agents",
)
REEXPORTS = {("sessionstore", "sessionstore.process")}


def _namespaces() -> dict[str, ModuleType]:
    found = {}
    for name in NAMESPACES:
        try:
            found[name] = importlib.import_module(name)
        except ImportError:  # an integration's framework is an optional extra: check the rest
            if not name.startswith("sessionstore.integrations."):
                raise
    return found


def test_every_public_name_has_exactly_one_public_home() -> None:
    """Each exported class/function names, in __module__, the one namespace that owns it."""
    spaces = _namespaces()
    homes: dict[int, set[str]] = {}
    for space_name, space in spaces.items():
        names = list(space.__all__)
        assert names == sorted(names), space_name
        for name in names:
            obj = getattr(space, name)
            if get_origin(obj) is not None or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue  # constants and type aliases carry no __module__ of their own
            home = obj.__module__
            assert home in spaces, f"{space_name}.{name}: __module__ is {home!r}"
            assert name in spaces[home].__all__, f"{home} does not export {name}"
            assert getattr(spaces[home], name) is obj
            if home != space_name:
                assert (space_name, home) in REEXPORTS, f"{space_name}.{name} from {home}"
            homes.setdefault(id(obj), set()).add(home)
    assert homes
    assert all(len(h) == 1 for h in homes.values())


def test_the_errors_module_is_where_sessionstore_errors_are_written() -> None:
    """sessionstore.errors names only errors sessionstore exports, with sessionstore as home."""
    for name in sessionstore.errors.__all__:
        obj = getattr(sessionstore.errors, name)
        assert getattr(sessionstore, name) is obj
        assert obj.__module__ == "sessionstore"


def test_import_sessionstore_leaves_no_private_module_in_a_public_name() -> None:
    """No public object of the top namespace still names a private module (fresh interpreter)."""
    code = (
        "import sessionstore, inspect\n"
        "bad = [n for n in sessionstore.__all__\n"
        "       if (inspect.isclass(getattr(sessionstore, n)) or\n"
        "           inspect.isfunction(getattr(sessionstore, n)))\n"
        "       and '._' in getattr(sessionstore, n).__module__ + '.'\n"
        "       and not getattr(sessionstore, n).__module__.startswith('sessionstore.process')]\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


# A fresh interpreter unpickles what this one pickled (by the public path in __module__),
# checks it, and pickles it back.
_ROUND_TRIP = """
import pickle, sys
items = pickle.loads(sys.stdin.buffer.read())
for item in items:
    assert type(item).__module__ in ("sessionstore", "sessionstore.process"), type(item)
sys.stdout.buffer.write(pickle.dumps(items))
"""


def _public_errors() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for space in (sessionstore, sessionstore.process):
        for name in space.__all__:
            obj = getattr(space, name)
            if isinstance(obj, type) and issubclass(obj, BaseException) and obj not in found:
                found.append(obj)
    return found


def test_errors_and_values_pickle_across_a_fresh_process() -> None:
    """Public errors and values unpickle in a new interpreter and come back equal."""
    errors = [_build(cls) for cls in _public_errors()]
    assert len(errors) >= 12
    values: list[Any] = [
        sessionstore.SessionStatus.PAUSED,
        sessionstore.StoreConfig(),
        sessionstore.ReplayReport(),
    ]
    out = subprocess.run(
        [sys.executable, "-c", _ROUND_TRIP],
        input=pickle.dumps([*errors, *values]),
        capture_output=True,
        check=True,
        timeout=60,
    )
    back = pickle.loads(out.stdout)  # noqa: S301 - our own bytes
    assert all(_same(a, b) for a, b in zip(errors, back, strict=False))
    assert back[len(errors) :] == values


def test_classes_not_built_by_hand_say_how_to_get_one(db_path: str) -> None:
    """SessionStore(...) and ReadLease(...) raise TypeError naming the right constructor."""
    with pytest.raises(TypeError, match=r"SessionStore\.open"):
        sessionstore.SessionStore(db_path, sessionstore.StoreConfig(), clock=lambda: 0.0)
    with sessionstore.SessionStore.open(db_path) as store, store.lease() as lease:
        with pytest.raises(TypeError, match=r"store\.lease\(\)"):
            sessionstore.ReadLease(store, lease._lease)
        assert lease.execute("SELECT 1") == [(1,)]
