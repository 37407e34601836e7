"""The OpenAI Agents session: the Session protocol's behaviour, and a real Runner run."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import apsw
import pytest
from agents import Agent, Runner, set_tracing_disabled
from agents.items import ModelResponse
from agents.memory import Session, SessionSettings
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import ResponseOutputMessage, ResponseOutputText

from sessionstore import SessionStore, StoreClosedError
from sessionstore.integrations.openai_agents import SessionStoreSession


def _msg(text: str, role: str = "user") -> dict[str, Any]:
    return {"role": role, "content": text}


def test_it_is_an_agents_session(store: SessionStore) -> None:
    """The SDK's runtime-checkable Session protocol recognises it."""
    assert isinstance(SessionStoreSession("c", store), Session)


def test_items_come_back_in_order_with_limits(store: SessionStore) -> None:
    """get_items gives the latest `limit` items oldest first; settings give the default."""
    session = SessionStoreSession("c", store)

    async def go() -> None:
        await session.add_items([_msg("1"), _msg("2")])
        await session.add_items([_msg("3")])
        assert [i["content"] for i in await session.get_items()] == ["1", "2", "3"]
        assert [i["content"] for i in await session.get_items(limit=2)] == ["2", "3"]
        assert await session.get_items(limit=0) == []
        limited = SessionStoreSession("c", store, session_settings=SessionSettings(limit=1))
        assert [i["content"] for i in await limited.get_items()] == ["3"]

    asyncio.run(go())


def test_pop_and_clear(store: SessionStore) -> None:
    """pop_item removes the newest; clear_session empties; other sessions are untouched."""
    a, b = SessionStoreSession("a", store), SessionStoreSession("b", store)

    async def go() -> None:
        await a.add_items([_msg("1"), _msg("2")])
        await b.add_items([_msg("other")])
        assert (await a.pop_item())["content"] == "2"
        assert [i["content"] for i in await a.get_items()] == ["1"]
        await a.clear_session()
        assert await a.get_items() == []
        assert await a.pop_item() is None
        await a.add_items([_msg("again")])
        assert [i["content"] for i in await a.get_items()] == ["again"]
        assert [i["content"] for i in await b.get_items()] == ["other"]

    asyncio.run(go())


def test_a_failed_batch_leaves_history_unchanged(store: SessionStore) -> None:
    """A batch with one item that is not JSON adds nothing; earlier history stays."""
    session = SessionStoreSession("c", store)

    async def go() -> None:
        await session.add_items([_msg("kept")])
        with pytest.raises(ValueError, match="JSON"):
            await session.add_items([_msg("lost"), {"bad": float("nan")}])
        assert [i["content"] for i in await session.get_items()] == ["kept"]

    asyncio.run(go())


def _pop_in_threads(session: SessionStoreSession, n_threads: int) -> list[str]:
    """Pop until empty from ``n_threads`` threads started together; every popped content."""
    popped: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(n_threads)

    def pop_all() -> None:
        start.wait()
        while (item := asyncio.run(session.pop_item())) is not None:
            with lock:
                popped.append(item["content"])

    threads = [threading.Thread(target=pop_all) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return popped


def test_concurrent_pops_never_return_one_item_twice(store: SessionStore) -> None:
    """8 threads popping 40 items, 20 rounds: every item popped exactly once."""
    for rnd in range(20):
        session = SessionStoreSession(f"c-{rnd}", store)
        asyncio.run(session.add_items([_msg(str(i)) for i in range(40)]))
        popped = _pop_in_threads(session, 8)
        assert sorted(popped, key=int) == [str(i) for i in range(40)], f"round {rnd}"


def test_after_close_adds_are_journaled_and_reads_refuse(db_path: str) -> None:
    """After store.close(): add_items is journaled (kept), get_items raises StoreClosedError."""
    store = SessionStore.open(db_path)
    session = SessionStoreSession("c", store)
    asyncio.run(session.add_items([_msg("before")]))
    store.close()
    asyncio.run(session.add_items([_msg("after close")]))
    with pytest.raises(StoreClosedError):
        asyncio.run(session.get_items())
    with SessionStore.open(db_path) as again:
        items = asyncio.run(SessionStoreSession("c", again).get_items())
        assert [i["content"] for i in items] == ["before", "after close"]


class ScriptedModel(Model):
    """A model that answers from a script and records the input it was given (no network)."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = list(answers)
        self.inputs: list[Any] = []

    async def get_response(self, system_instructions: Any, input: Any, *args: Any, **kw: Any):  # type: ignore[no-untyped-def]
        self.inputs.append(input)
        text = self.answers.pop(0)
        message = ResponseOutputMessage(
            id=f"msg-{len(self.inputs)}",
            content=[ResponseOutputText(text=text, type="output_text", annotations=[])],
            role="assistant",
            status="completed",
            type="message",
        )
        return ModelResponse(output=[message], usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kw: Any) -> Any:
        raise NotImplementedError


def test_a_runner_run_remembers_the_conversation_across_a_reopen(tmp_path: Path) -> None:
    """Runner.run with the session: the second run, in a reopened store, sees the first."""
    set_tracing_disabled(True)
    db = str(tmp_path / "agents.db")
    model = ScriptedModel(["Hello, Ada.", "Your name is Ada."])
    agent = Agent(name="assistant", instructions="Be brief.", model=model)
    with SessionStore.open(db) as store:
        result = asyncio.run(
            Runner.run(agent, "My name is Ada.", session=SessionStoreSession("conv", store))
        )
        assert result.final_output == "Hello, Ada."
    with SessionStore.open(db) as store:
        session = SessionStoreSession("conv", store)
        result = asyncio.run(Runner.run(agent, "What is my name?", session=session))
        assert result.final_output == "Your name is Ada."
        second_input = model.inputs[1]
        texts = [str(item.get("content")) for item in second_input]
        assert "My name is Ada." in texts[0]
        assert "What is my name?" in texts[-1]
        assert len(asyncio.run(session.get_items())) == 4


def test_a_corrupt_record_does_not_hide_valid_history(store: SessionStore) -> None:
    """Damaged rows (bad JSON, a non-object) are skipped and reported; the rest comes back."""
    session = SessionStoreSession("c", store)

    async def add() -> None:
        await session.add_items([_msg(str(i)) for i in range(6)])

    asyncio.run(add())
    ids = [cp.id for cp in store.find_checkpoints(session._sid, namespace="items")]  # newest first
    # Damage two records on disk, as a bit flip or another tool would: item 4 and item 1.
    conn = apsw.Connection(store.path)
    conn.set_busy_timeout(5000)
    conn.execute(
        'UPDATE checkpoints SET data = \'{"role": "us\' WHERE checkpoint_id = ?', (ids[1],)
    )
    conn.execute("UPDATE checkpoints SET data = '42' WHERE checkpoint_id = ?", (ids[4],))
    conn.close()

    async def go() -> None:
        assert [i["content"] for i in await session.get_items()] == ["0", "2", "3", "5"]
        # The latest 3 readable items: the page is filled from below the damaged one.
        assert [i["content"] for i in await session.get_items(limit=3)] == ["2", "3", "5"]
        assert {cid for cid, _ in session.skipped} == {ids[1], ids[4]}
        assert (await session.pop_item())["content"] == "5"
        assert (await session.pop_item())["content"] == "3"  # the damaged "4" is popped past
        assert [i["content"] for i in await session.get_items()] == ["0", "2"]

    asyncio.run(go())
