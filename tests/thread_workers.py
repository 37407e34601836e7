"""Worker processes for the keyed-session and LangGraph tests: ``python thread_workers.py CMD``.

Each worker prints ``ready`` once its store is open, then waits on stdin: the test writes one
line to every worker at once, so all of them race from the same moment without a sleep.
"""

from __future__ import annotations

import sys

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


if __name__ == "__main__":
    {"keyed": keyed}[sys.argv[1]](*sys.argv[2:])
