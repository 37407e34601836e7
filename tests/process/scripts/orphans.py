"""Leave orphans and exit: ``orphans.py PIDS_FD GO_FD``.

Two orphans, each writing its pid to PIDS_FD and exiting with its own code once GO_FD reads
EOF: one in a session of someone else's making (its parent ``setsid``s, then forks it, then
exits: code 3), one in the session it was born in, carrying the environment it inherited
(code 4). Then this process exits, so both are re-parented to the nearest subreaper.
"""

import os
import sys

pids_fd, go_fd = int(sys.argv[1]), int(sys.argv[2])


def orphan(code: int) -> None:
    os.write(pids_fd, f"{code} {os.getpid()}\n".encode())
    while os.read(go_fd, 1):
        pass
    os._exit(code)


if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        orphan(3)
    os._exit(0)
os.wait()
if os.fork() == 0:
    orphan(4)
os._exit(0)
