"""The LangGraph saver: the official conformance suite, and real graphs over one store file."""

from __future__ import annotations

import asyncio
import operator
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest

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


WORKERS = str(Path(__file__).with_name("thread_workers.py"))


def _popen(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, WORKERS, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _reap(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.mark.slow
def test_8_processes_running_graphs_on_one_file_lose_nothing(tmp_path: Path) -> None:
    """8 processes, each running a real 4-node graph 3 times on one file: 0 errors, all there."""
    db = str(tmp_path / "lg.db")
    SessionStore.open(db).close()
    procs = [_popen("graphs", db, f"thread-{i}", "3") for i in range(8)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.stderr
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == str(3 * 4)
    finally:
        _reap(procs)
    with SessionStore.open(db) as store:
        saver = SessionStoreSaver(store)
        for i in range(8):
            config = {"configurable": {"thread_id": f"thread-{i}"}}
            history = list(saver.list(config))
            # Per run, one checkpoint per superstep: the input, __start__, and each of 4 nodes.
            assert len(history) == 3 * 6
            latest = saver.get_tuple(config)
            assert latest is not None
            assert latest.checkpoint["channel_values"]["steps"] == ["a", "b", "c", "d"] * 3
        assert store.stats().failures == []


@pytest.mark.slow
def test_a_graph_sigtermed_mid_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    """SIGTERM in node c; a restarted process resumes at c: a and b are not run again."""
    db = str(tmp_path / "lg.db")
    first = _popen("stoppable", db, "t")
    try:
        assert first.stdout is not None
        seen = [first.stdout.readline().strip() for _ in range(3)]
        assert seen == ["in a", "in b", "in c"]
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == -signal.SIGTERM
    finally:
        _reap([first])
    second = _popen("stoppable", db, "t")
    try:
        out, err = second.communicate(input="\n", timeout=120)
        assert second.returncode == 0, err
        assert out.splitlines() == ["in c", "in d", "steps a,b,c,d"]
    finally:
        _reap([second])


def _close_while_writing(db: str) -> tuple[list[BaseException], list[dict[str, Any]]]:
    """Run a graph in a thread and close its store from this one when node b runs."""
    config = {"configurable": {"thread_id": "t"}}
    store = SessionStore.open(db)
    reached = threading.Event()
    errors: list[BaseException] = []
    results: list[dict[str, Any]] = []
    graph = _graph(SessionStoreSaver(store), on_b=reached.set)

    def run() -> None:
        try:
            results.append(graph.invoke({"steps": []}, config, durability="sync"))
        except BaseException as err:
            errors.append(err)

    worker = threading.Thread(target=run)
    worker.start()
    assert reached.wait(60)
    store.close()  # while node b returns and its checkpoint is being written
    worker.join(60)
    return errors, results


@pytest.mark.slow
def test_closing_the_store_while_a_graph_writes_never_crashes_nor_loses(tmp_path: Path) -> None:
    """close() from another thread while a graph checkpoints, 20 rounds: no error, all kept."""
    config = {"configurable": {"thread_id": "t"}}
    for rnd in range(20):
        db = str(tmp_path / f"race-{rnd}.db")
        errors, results = _close_while_writing(db)
        assert errors == [], f"round {rnd}: {errors}"
        assert results[0]["steps"] == ["a", "b", "c"]
        with SessionStore.open(db) as again:
            state = _graph(SessionStoreSaver(again)).get_state(config)
            assert state.values["steps"] == ["a", "b", "c"], f"round {rnd}"
            assert state.next == ()
