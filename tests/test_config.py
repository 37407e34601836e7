"""StoreConfig validates every field at the boundary; a bad value never reaches a database."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionstore import StoreConfig

NON_NEGATIVE_INT = ["busy_timeout_ms", "checkpoint_busy_timeout_ms"]
POSITIVE_FLOAT = ["write_deadline_s", "checkpoint_interval_s"]


@given(st.sampled_from(NON_NEGATIVE_INT), st.integers(max_value=-1))
def test_negative_timeouts_rejected(field: str, value: int) -> None:
    """Negative millisecond timeouts are a ValueError."""
    with pytest.raises(ValueError):
        StoreConfig(**{field: value})  # type: ignore[arg-type]


@given(
    st.sampled_from(POSITIVE_FLOAT),
    st.floats(max_value=0) | st.sampled_from([float("nan"), float("inf"), float("-inf")]),
)
def test_non_positive_durations_rejected(field: str, value: float) -> None:
    """Durations must be positive and finite: zero, negatives, NaN and infinity are refused."""
    with pytest.raises(ValueError):
        StoreConfig(**{field: value})  # type: ignore[arg-type]


@given(
    busy=st.integers(0, 600_000),
    interval=st.floats(0.001, 86_400),
    wal=st.integers(1, 1 << 40),
    pending=st.integers(1, 10**9),
    readers=st.integers(1, 64),
)
def test_valid_values_accepted(
    busy: int, interval: float, wal: int, pending: int, readers: int
) -> None:
    """Every in-range combination is accepted and kept as given."""
    config = StoreConfig(
        busy_timeout_ms=busy,
        checkpoint_interval_s=interval,
        checkpoint_wal_bytes=wal,
        max_pending_ops=pending,
        read_connections=readers,
    )
    assert (config.busy_timeout_ms, config.max_pending_ops) == (busy, pending)


@given(st.text(min_size=1).filter(lambda s: s not in ("NORMAL", "FULL")))
def test_unknown_synchronous_rejected(mode: str) -> None:
    """Only NORMAL and FULL are offered: OFF would lose acknowledged writes at a crash."""
    with pytest.raises(ValueError):
        StoreConfig(synchronous=mode)  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    """A config cannot be changed after construction (one may be shared by many stores)."""
    config = StoreConfig()
    with pytest.raises(ValueError):
        config.busy_timeout_ms = 1  # type: ignore[misc]


def test_reap_on_open_is_refused_with_the_way_to_reap() -> None:
    """reap_on_open=True names reap_orphans (the store never ends processes); False still loads."""
    with pytest.raises(ValueError, match=r"reap_orphans\(store\)"):
        StoreConfig(reap_on_open=True)  # type: ignore[call-arg]
    assert StoreConfig(reap_on_open=False) == StoreConfig()  # type: ignore[call-arg]
    assert StoreConfig.model_validate({"reap_on_open": False, "busy_timeout_ms": 10}) == (
        StoreConfig(busy_timeout_ms=10)
    )
