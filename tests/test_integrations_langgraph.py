"""The LangGraph saver: the official conformance suite, and real graphs over one store file."""

from __future__ import annotations

import asyncio
import operator
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

# Imported, not importorskip'd: the `test` extra installs LangGraph, and a missing framework
# must fail CI rather than skip the suite that proves the adapter.
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.graph import END, START, StateGraph

from sessionstore import SessionStore
from sessionstore.integrations.langgraph import SessionStoreSaver


class State(TypedDict):
    steps: Annotated[list[str], operator.add]


def _graph(saver: SessionStoreSaver, *, on_b: Any = None, interrupt: bool = False) -> Any:
    def node(name: str) -> Any:
        def run(state: State) -> dict[str, list[str]]:
            if name == "b" and on_b is not None:
                on_b()
            return {"steps": [name]}

        return run

    g = StateGraph(State)
    for name in ("a", "b", "c"):
        g.add_node(name, node(name))
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", "c")
    g.add_edge("c", END)
    return g.compile(checkpointer=saver, interrupt_before=["c"] if interrupt else None)


def test_conformance_suite_is_full_with_every_extended_capability(tmp_path: Path) -> None:
    """langgraph-checkpoint-conformance: every base and extended capability passes (FULL)."""
    db = str(tmp_path / "lg.db")

    @checkpointer_test(name="SessionStoreSaver")
    async def saver() -> AsyncIterator[SessionStoreSaver]:
        store = SessionStore.open(db)
        try:
            yield SessionStoreSaver(store)
        finally:
            store.close()

    report = asyncio.run(validate(saver))
    report.print_report()
    failures = {k: r.failures for k, r in report.results.items() if r.failures}
    assert report.conformance_level() == "FULL", failures
    for capability in ("delete_for_runs", "copy_thread", "prune"):
        assert report.results[capability].detected
        assert report.results[capability].passed is True


def test_a_graph_interrupted_resumes_after_a_reopen(tmp_path: Path) -> None:
    """A graph stopped before its last node resumes from its checkpoint in a new store."""
    db = str(tmp_path / "lg.db")
    config = {"configurable": {"thread_id": "t-1"}}
    with SessionStore.open(db) as store:
        graph = _graph(SessionStoreSaver(store), interrupt=True)
        graph.invoke({"steps": []}, config)
        assert graph.get_state(config).next == ("c",)
    with SessionStore.open(db) as store:
        graph = _graph(SessionStoreSaver(store), interrupt=True)
        result = graph.invoke(None, config)
        assert result["steps"] == ["a", "b", "c"]
        assert graph.get_state(config).next == ()


def test_closing_the_store_mid_graph_loses_no_checkpoint(tmp_path: Path) -> None:
    """Closing the store while a graph runs: the graph finishes, its checkpoints are journaled."""
    db = str(tmp_path / "lg.db")
    config = {"configurable": {"thread_id": "t-close"}}
    store = SessionStore.open(db)
    graph = _graph(SessionStoreSaver(store), on_b=store.close)
    result = graph.invoke({"steps": []}, config)
    assert result["steps"] == ["a", "b", "c"]
    assert store.closed and store.stats().journaled > 0
    with SessionStore.open(db) as again:
        state = _graph(SessionStoreSaver(again)).get_state(config)
        assert state.values["steps"] == ["a", "b", "c"]
        assert state.next == ()


def test_the_saver_writes_no_sql_of_its_own() -> None:
    """The adapter goes through the store's API only: no SQL text in its source."""
    import sessionstore.integrations.langgraph as module

    source = Path(module.__file__).read_text(encoding="utf-8")
    for word in ("SELECT ", "INSERT ", "DELETE FROM", "UPDATE ", ".execute("):
        assert word not in source


def test_import_sessionstore_imports_no_framework() -> None:
    """`import sessionstore` loads neither LangGraph nor the integrations package."""
    import subprocess
    import sys

    code = (
        "import sys, sessionstore; "
        "print(any(m.startswith(('langgraph', 'langchain', 'sessionstore.integrations')) "
        "for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
