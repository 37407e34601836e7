"""A child that survives SIGTERM but says it got one: ``python stubborn.py NOTIFY_FD``.

SIGTERM is blocked and taken with ``sigwait``, not handled: a handler plus ``signal.pause()``
loses a SIGTERM that lands between Python's check for pending signals and the ``pause()`` call
(the handler then waits for a next signal, which was the SIGKILL: the child never said it got
the SIGTERM, and a round looked as if no grace was given). A blocked signal stays pending until
``sigwait`` takes it, whenever it arrives.
"""

from __future__ import annotations

import os
import signal
import sys

fd = int(sys.argv[1])
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
print("ready", flush=True)
while True:
    signal.sigwait({signal.SIGTERM})
    os.write(fd, b"TERM\n")
