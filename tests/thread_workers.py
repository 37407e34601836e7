"""Worker processes for the keyed-session and LangGraph tests: ``python thread_workers.py CMD``.

Each worker prints ``ready`` once its store is open, then waits on stdin: the test writes one
line to every worker at once, so all of them race from the same moment without a sleep.
"""

from __future__ import annotations

import operator
import sys
from typing import Annotated, Any, TypedDict

from sessionstore import SessionStore


def keyed(db: str) -> None:
    """For every key read from stdin, get-or-create its session and print the session id."""
    with SessionStore.open(db) as store:
        print("ready", flush=True)
        for line in sys.stdin:
            key = line.strip()
            if not key:
                break
            print(store.get_or_create_session_by_key(key).id, flush=True)


class State(TypedDict):
    """A graph's state: the names of the nodes that ran, in order."""

    steps: Annotated[list[str], operator.add]


def _graph(store: SessionStore, names: list[str], in_node: Any = None) -> Any:
    from langgraph.graph import END, START, StateGraph

    from sessionstore.integrations.langgraph import SessionStoreSaver

    def node(name: str) -> Any:
        def run(state: State) -> dict[str, list[str]]:
            if in_node is not None:
                in_node(name)
            return {"steps": [name]}

        return run

    g = StateGraph(State)
    previous = START
    for name in names:
        g.add_node(name, node(name))
        g.add_edge(previous, name)
        previous = name
    g.add_edge(previous, END)
    return g.compile(checkpointer=SessionStoreSaver(store))


def graphs(db: str, thread_id: str, runs: str) -> None:
    """Run a 4-node graph ``runs`` times on one thread, from the barrier; print the steps."""
    with SessionStore.open(db) as store:
        graph = _graph(store, ["a", "b", "c", "d"])
        print("ready", flush=True)
        sys.stdin.readline()
        config = {"configurable": {"thread_id": thread_id}}
        for _ in range(int(runs)):
            result = graph.invoke({"steps": []}, config, durability="sync")
        print(len(result["steps"]), flush=True)


def stoppable(db: str, thread_id: str) -> None:
    """Run a 4-node graph; in node c say so and wait for stdin (the test SIGTERMs us there).

    A second run (stdin closed at once) resumes the thread from its last checkpoint.
    """
    with SessionStore.open(db) as store:

        def in_node(name: str) -> None:
            print(f"in {name}", flush=True)
            if name == "c":
                sys.stdin.readline()

        graph = _graph(store, ["a", "b", "c", "d"], in_node)
        config = {"configurable": {"thread_id": thread_id}}
        state = graph.get_state(config)
        start = None if state.next else {"steps": []}
        result = graph.invoke(start, config, durability="sync")
        print("steps " + ",".join(result["steps"]), flush=True)


if __name__ == "__main__":
    {"keyed": keyed, "graphs": graphs, "stoppable": stoppable}[sys.argv[1]](*sys.argv[2:])
