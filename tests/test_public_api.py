"""The public surface: the contract's names exist, each has one public home, errors pickle."""

from __future__ import annotations

import ast
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
from sessionstore import _exports

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


# Third-party packages ``import sessionstore`` must not load: the first public name used loads
# what it needs (sessionstore/__init__.py).
DEPENDENCIES = {"pydantic", "pydantic_core", "apsw", "psutil", "tenacity", "rich"}


def _probe(code: str) -> Any:
    """What the last line of ``code`` prints, evaluated as a Python literal, in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return ast.literal_eval(out.strip().splitlines()[-1])


def test_import_loads_no_dependency_and_no_store_module() -> None:
    """A fresh ``import sessionstore`` loads none of pydantic, apsw, psutil, tenacity, rich."""
    loaded = _modules_after("import sessionstore")
    assert "sessionstore" in loaded  # the probe sees the package itself
    assert sorted(m for m in loaded if m.split(".")[0] in DEPENDENCIES) == []
    assert sorted(m for m in loaded if m.startswith("sessionstore.")) == ["sessionstore._exports"]


def test_the_errors_load_without_pydantic_or_apsw() -> None:
    """Catching our errors (``sessionstore.errors``, ``sessionstore.X...Error``) stays light."""
    loaded = _modules_after("import sessionstore.errors\nsessionstore.StoreBusyError")
    assert sorted(m for m in loaded if m.split(".")[0] in DEPENDENCIES) == []


def test_all_is_the_lazy_table_and_dir_lists_it() -> None:
    """__all__ is exactly the names the lazy loader serves (plus __version__); dir() shows them."""
    assert set(sessionstore.__all__) == set(_exports.PUBLIC) | {"__version__"}
    names = _probe("import sessionstore; print(dir(sessionstore))")
    assert set(sessionstore.__all__) <= set(names)


def test_every_public_name_imports_alone_in_a_fresh_interpreter() -> None:
    """``from sessionstore import X`` works first thing for each X, naming its public home."""
    code = (
        "homes = {}\n"
        "for name in %r:\n"
        "    ns = {}\n"
        "    exec(f'from sessionstore import {name}', ns)\n"
        "    homes[name] = getattr(ns[name], '__module__', None)\n"
        "print(homes)\n"
    )
    # One fresh interpreter per name would take a second each; a name already loaded by an
    # earlier one is still served (and checked) through the same path.
    names = sorted(_exports.PUBLIC)
    homes = _probe(code % (names,))
    process = {n for n, home in _exports.PUBLIC.items() if home == "sessionstore.process"}
    for name in names:
        assert homes[name] == ("sessionstore.process" if name in process else "sessionstore")
    with pytest.raises(ImportError):
        exec("from sessionstore import NoSuchName", {})  # noqa: S102 - a fixed string


def test_a_private_module_imported_directly_publishes_its_names() -> None:
    """Public classes name ``sessionstore`` even when only a private module imported them."""
    code = (
        "import sessionstore.cli._hooks, sys\n"
        "from sessionstore._models import Session, SessionStatus\n"
        "from sessionstore._store import SessionStore\n"
        "from sessionstore._config import StoreConfig\n"
        "print([c.__module__ for c in (Session, SessionStatus, SessionStore, StoreConfig)]\n"
        "      + ['Session' in vars(sys.modules['sessionstore'])])\n"
    )
    # The last item: the top namespace was never asked for Session, so nothing but the
    # module itself can have published it.
    assert _probe(code) == ["sessionstore"] * 4 + [False]


def test_a_value_unpickles_where_only_sessionstore_was_imported(db_path: str) -> None:
    """A pickled Session loads in a fresh process that only ran ``import sessionstore``."""
    with sessionstore.SessionStore.open(db_path) as store:
        session = store.create_session("pickled")
    code = (
        "import pickle, sys, sessionstore\n"
        f"value = pickle.loads({pickle.dumps(session)!r})\n"
        "print([type(value).__module__, value.name])\n"
    )
    assert _probe(code) == ["sessionstore", "pickled"]


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
