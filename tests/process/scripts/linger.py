"""An escapee for the tests: ``linger.py FD [stubborn]``.

Writes its pid to FD, keeps FD open (the test sees EOF only once every holder has exited) and
waits for a signal. ``stubborn`` ignores SIGTERM, so only SIGKILL ends it. A 60 s alarm ends it
whatever happens, so a failed test cannot leave it behind for long.
"""

import os
import signal
import sys

fd = int(sys.argv[1])
if "stubborn" in sys.argv[2:]:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.alarm(60)
os.write(fd, f"{os.getpid()}\n".encode())
while True:
    signal.pause()
