"""A PID hopper for the tests: ``hopper.py FD DEADLINE [HOPS]``.

Writes its first pid to FD, then forks and exits in a loop, each new self in a new session, so
no pid, process group or session stays the same for more than a millisecond. It ignores
SIGTERM. Every incarnation holds FD: the test sees EOF only when none is left. It stops on its
own at the ``time.time()`` DEADLINE. With HOPS, the self after that many hops writes ``hopped``
to FD (so a test can start once a trail of that many exited selves lies behind it).
"""

import os
import signal
import sys
import time

fd = int(sys.argv[1])
deadline = float(sys.argv[2])
hops = int(sys.argv[3]) if len(sys.argv) > 3 else -1
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.write(fd, f"{os.getpid()}\n".encode())
while time.time() < deadline:
    if os.fork():
        os._exit(0)
    os.setsid()
    hops -= 1
    if hops == 0:
        os.write(fd, b"hopped\n")
os._exit(0)
