"""The values the package returns share one frozen base."""

from __future__ import annotations

import pydantic
import pytest

import sessionstore
import sessionstore.process
from sessionstore._models import Frozen

# Models that are not returned values: a config (its own rules: extra fields forbidden) and an
# identity (below the models module, which imports it).
_NOT_VALUES = {"StoreConfig", "ProcessIdentity"}


def _public_models() -> list[type[pydantic.BaseModel]]:
    found = []
    for module in (sessionstore, sessionstore.process):
        for name in module.__all__:
            value = getattr(module, name)
            if isinstance(value, type) and issubclass(value, pydantic.BaseModel):
                found.append(value)
    return [m for m in found if m.__name__ not in _NOT_VALUES]


def test_every_returned_value_model_derives_from_the_one_frozen_base() -> None:
    """Store and process-layer reports alike derive from _models.Frozen."""
    models = _public_models()
    assert {"CloseReport", "ShutdownReport", "ReapReport", "ChildOutcome"} <= {
        m.__name__ for m in models
    }
    assert [m.__name__ for m in models if not issubclass(m, Frozen)] == []


def test_a_value_cannot_be_changed() -> None:
    """Frozen: assigning a field raises."""
    report = sessionstore.CloseReport(path="p")
    with pytest.raises(pydantic.ValidationError):
        report.path = "q"  # type: ignore[misc]
