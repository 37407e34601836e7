"""Publishing a private class under its public module keeps it working (pickle, pydantic)."""

from __future__ import annotations

import pickle
import sys
import textwrap
from collections.abc import Iterator
from types import ModuleType

import pydantic
import pytest

from sessionstore._exports import publish

_PRIVATE = textwrap.dedent(
    """
    from __future__ import annotations
    from typing import Literal
    from pydantic import BaseModel, ConfigDict

    class Reading(BaseModel):
        model_config = ConfigDict(frozen=True, defer_build=True)
        level: _Level  # defined below: resolved only when the model is built
        value: int

    _Level = Literal["low", "high"]  # a name only this module has

    def make(value: int) -> Reading:
        return Reading(level="low", value=value)
    """
)


@pytest.fixture
def modules() -> Iterator[tuple[ModuleType, ModuleType]]:
    private = ModuleType("exports_probe._impl")
    public = ModuleType("exports_probe")
    sys.modules.update({private.__name__: private, public.__name__: public})
    try:
        exec(compile(_PRIVATE, "<probe>", "exec"), vars(private))  # noqa: S102 - our own text
        public.Reading = private.Reading  # type: ignore[attr-defined]
        public.make = private.make  # type: ignore[attr-defined]
        yield private, public
    finally:
        del sys.modules[private.__name__], sys.modules[public.__name__]


def test_a_deferred_model_still_builds_after_it_moves(
    modules: tuple[ModuleType, ModuleType],
) -> None:
    """A defer_build model published elsewhere resolves its private annotations when built."""
    private, public = modules
    publish(public.__name__, [private.Reading, private.make, "not a class"])
    assert private.Reading.__module__ == "exports_probe"
    assert private.make.__module__ == "exports_probe"
    assert public.make(3) == public.Reading(level="low", value=3)  # first use builds it
    with pytest.raises(pydantic.ValidationError):
        public.Reading(level="middle", value=1)


def test_a_published_class_pickles_by_its_public_path(
    modules: tuple[ModuleType, ModuleType],
) -> None:
    """Pickle names the public module and finds the class there."""
    private, public = modules
    publish(public.__name__, [private.Reading])
    reading = public.Reading(level="high", value=2)
    data = pickle.dumps(reading)
    assert b"exports_probe\x94" in data and b"_impl" not in data
    assert pickle.loads(data) == reading  # noqa: S301 - our own bytes
