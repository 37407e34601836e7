"""A child that survives SIGTERM but says it got one: ``python stubborn.py NOTIFY_FD``."""

from __future__ import annotations

import os
import signal
import sys

fd = int(sys.argv[1])


def on_term(signum: int, frame: object) -> None:
    os.write(fd, b"TERM\n")


signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    signal.pause()
