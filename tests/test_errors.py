"""Every exported error pickles to an equal error, also across a multiprocessing pool."""

from __future__ import annotations

import inspect
import multiprocessing
import pickle
from typing import Any

import pytest

import sessionstore
from sessionstore import SessionStoreError

SAMPLES: dict[str, Any] = {"str": "value", "int": 4242, "float": 1.25}


def _exported_errors() -> list[type[SessionStoreError]]:
    found = []
    for name in sessionstore.__all__:
        obj = getattr(sessionstore, name)
        if isinstance(obj, type) and issubclass(obj, SessionStoreError):
            found.append(obj)
    return found


def _build(cls: type[SessionStoreError]) -> SessionStoreError:
    """An instance with a distinct sample value for every constructor parameter."""
    if "__init__" not in vars(cls) and cls.__init__ is Exception.__init__:
        return cls("a message")  # the root: Exception's own signature
    kwargs: dict[str, Any] = {}
    for i, (name, param) in enumerate(inspect.signature(cls.__init__).parameters.items()):
        if name == "self":
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        kind = str(param.annotation).split("|")[0].strip()
        sample = SAMPLES.get(kind, "value")
        kwargs[name] = f"{sample}-{i}" if isinstance(sample, str) else sample + i
    return cls(**kwargs)


def _same(a: BaseException, b: BaseException) -> bool:
    return type(a) is type(b) and a.args == b.args and vars(a) == vars(b) and str(a) == str(b)


def _raise(err: SessionStoreError) -> None:
    raise err


ERRORS = _exported_errors()


def test_every_exported_error_is_found() -> None:
    """The sweep below covers the whole exported hierarchy, not an empty list."""
    assert SessionStoreError in ERRORS
    assert len(ERRORS) >= 10


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_round_trip_is_equal(cls: type[SessionStoreError]) -> None:
    """pickle.loads(pickle.dumps(err)) has the same type, args, fields and message."""
    err = _build(cls)
    back = pickle.loads(pickle.dumps(err))  # noqa: S301 - our own bytes
    assert _same(err, back), (vars(err), vars(back), str(err), str(back))


def test_pool_worker_error_reaches_the_parent() -> None:
    """A worker's SessionStoreError reaches the parent of a pool, equal, not a pool crash."""
    errors = [_build(cls) for cls in ERRORS]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        for err in errors:
            with pytest.raises(type(err)) as caught:
                pool.apply(_raise, (err,))
            assert _same(err, caught.value)
