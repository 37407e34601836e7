"""A bystander for the tests: ``bystander.py LOG``; must never receive a signal.

Appends the name of every catchable signal it receives to LOG, says ``ready`` once its handlers
are in place, and exits 0 when its stdin closes. SIGKILL and SIGSTOP cannot be caught: the test
checks that it is still running, not stopped, and exits 0.
"""

import os
import signal
import sys

log = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def note(signum: int, _frame: object) -> None:
    os.write(log, f"{signal.Signals(signum).name}\n".encode())


for sig in (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGCONT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
    signal.SIGPIPE,
    signal.SIGTSTP,
):
    signal.signal(sig, note)
print("ready", flush=True)
sys.stdin.read()
