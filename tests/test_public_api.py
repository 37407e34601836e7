"""The public surface: the contract's names exist, __all__ is sorted, privates stay private."""

from __future__ import annotations

import inspect
import subprocess
import sys

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
