"""Hold the database's write lock: ``python lock_holder.py DB``; prints ``locked``, then waits.

Used to make every write of another process BUSY until its deadline (a peer that the test then
SIGSTOPs, as a stopped peer would).
"""

from __future__ import annotations

import sys

import apsw

conn = apsw.Connection(sys.argv[1])
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
