"""The public surface: the contract's names exist, __all__ is sorted, privates stay private."""

from __future__ import annotations

import inspect

import sessionstore
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
