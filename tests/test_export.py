"""Export/import carry a framework thread whole: key, keyed checkpoints, writes, tombstones."""

from __future__ import annotations

import json
import operator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.graph import END, START, StateGraph

from sessionstore import SessionStore
from sessionstore._export import read_extras
from sessionstore._ops import session_id_for_key
from sessionstore.cli import main
from sessionstore.integrations.langgraph import SessionStoreSaver

pytestmark = pytest.mark.timeout(120)


class State(TypedDict):
    steps: Annotated[list[str], operator.add]


def _graph(saver: SessionStoreSaver) -> Any:
    g = StateGraph(State)
    for name in ("a", "b", "c"):
        g.add_node(name, lambda state, name=name: {"steps": [name]})
    g.add_edge(START, "a")
    g.add_edge("a", "b")
    g.add_edge("b", "c")
    g.add_edge("c", END)
    return g.compile(checkpointer=saver, interrupt_before=["c"])


def _comparable(store: SessionStore, sid: str) -> dict[str, Any]:
    extras, _ = read_extras(store, sid)
    data = extras.model_dump()
    for cp in data["keyed_checkpoints"]:
        cp.pop("created_at")  # an import writes a keyed checkpoint at its last write's time
    return data


def test_a_langgraph_thread_round_trips_and_resumes_in_the_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real interrupted graph with a deleted past: exported, imported, resumed there."""
    src, dst, doc = tmp_path / "src.db", tmp_path / "dst.db", tmp_path / "t.json"
    config = {"configurable": {"thread_id": "t-1"}}
    sid = session_id_for_key("langgraph:t-1")
    with SessionStore.open(str(src)) as store:
        saver = SessionStoreSaver(store)
        _graph(saver).invoke({"steps": []}, config)
        saver.delete_thread("t-1")  # a tombstone; the thread then starts afresh
        _graph(saver).invoke({"steps": []}, config)
        assert _graph(saver).get_state(config).next == ("c",)
        source = _comparable(store, sid)
    assert source["app_key"] == "langgraph:t-1"
    assert source["keyed_checkpoints"] and source["writes"] and source["tombstones"]
    assert any(cp["blob"] for cp in source["keyed_checkpoints"])  # binary payloads
    assert main(["--db", str(src), "export", sid, "-o", str(doc)]) == 0
    assert json.loads(doc.read_text())["version"] == 2
    assert main(["new", str(dst)]) == 0
    capsys.readouterr()
    assert main(["--db", str(dst), "import", str(doc), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["keyed_checkpoints"]["added"] == len(source["keyed_checkpoints"])
    assert summary["writes"]["added"] == len(source["writes"])
    assert summary["tombstones"]["applied"] == 1
    assert main(["--db", str(dst), "import", str(doc), "--json"]) == 0  # idempotent
    assert json.loads(capsys.readouterr().out)["ops"] == 0
    with SessionStore.open(str(dst)) as store:
        assert _comparable(store, sid) == source
        assert store.find_session_by_key("langgraph:t-1") is not None
        graph = _graph(SessionStoreSaver(store))
        assert graph.get_state(config).next == ("c",)
        assert graph.invoke(None, config)["steps"] == ["a", "b", "c"]


def test_a_version_1_document_still_imports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first format (no key, keyed checkpoints, writes or tombstones) imports as before."""
    src, dst, doc = tmp_path / "src.db", tmp_path / "dst.db", tmp_path / "v1.json"
    with SessionStore.open(str(src)) as store:
        sid = store.create_session("plain").id
        store.save_checkpoint(sid, "plan", {"step": 1})
        store.log_event(sid, "hello")
    assert main(["--db", str(src), "export", sid, "-o", str(doc)]) == 0
    v1 = json.loads(doc.read_text())
    for key in ("app_key", "keyed_checkpoints", "writes", "tombstones"):
        del v1[key]
    v1["version"] = 1
    doc.write_text(json.dumps(v1))
    assert main(["new", str(dst)]) == 0
    capsys.readouterr()
    assert main(["--db", str(dst), "import", str(doc), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["created"] is True
    with SessionStore.open(str(dst)) as store:
        assert store.latest_checkpoint(sid, "plan").data == {"step": 1}  # type: ignore[union-attr]
        assert [e.message for e in store.events(sid)] == ["hello"]
