"""An orchestrator whose children leave escapees behind: ``escapees.py DB FD KIND[,KIND...]``.

Opens the store, installs a ProcessLayer (grace ``--grace``), and spawns one launcher per KIND
through the layer. Each launcher starts an escapee that leaves the launcher's tree its own way and
exits, so every recorded child has exited while the escapees live on:

* ``setsid``: ``setsid -f`` (new session, environment kept);
* ``nohup``: ``nohup ... &`` from a shell that exits (same group, environment kept);
* ``envi``: ``env -i setsid -f`` (new session, empty environment: no tree marker);
* ``doublefork``: a Python double fork with ``setsid`` that ``execve``s with an empty environment;
* ``daemon``: a classic self-daemonising program (fork, ``setsid``, fork, ``chdir /``, stdio
  to /dev/null), environment kept;
* ``hopper``: a process that forks and exits in a loop, a new session each time, empty
  environment, SIGTERM ignored (see hopper.py);
* ``node``: ``node`` spawning a detached child with ``env: {}``, then exiting.

Every escapee inherits FD (a pipe the test reads), writes its pid there and keeps it open. With
``--stubborn`` the linger escapees ignore SIGTERM. Prints ``READY {"session_id": ...}`` once every
launcher has exited, then waits: a line on stdin runs ``layer.shutdown()`` and prints
``REPORT {json}``; a signal runs the layer's own signal path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sessionstore import SessionStore
from sessionstore.process import ProcessLayer

HERE = Path(__file__).parent
LINGER = str(HERE / "linger.py")
HOPPER = str(HERE / "hopper.py")

DOUBLE_FORK = """
import os, sys
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execve(sys.executable, [sys.executable, *sys.argv[1:]], {})
    os._exit(0)
os.wait()
"""

DAEMON = """
import os, sys
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.chdir("/")
        os.umask(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
    os._exit(0)
os.wait()
"""

HOPPER_LAUNCH = """
import os, sys
if os.fork() == 0:
    os.setsid()
    os.execve(sys.executable, [sys.executable, *sys.argv[1:]], {})
os.wait()
"""

# The child gets the pipe as its fd 3; it writes its pid there and keeps it open.
NODE = """
const fd = Number(process.argv[1]);
const child = require("child_process").spawn(process.execPath, ["-e", `
  require("fs").writeSync(3, process.pid + "\\\\n");
  setTimeout(() => process.exit(0), 60000);
  setInterval(() => {}, 1000000);
`], { detached: true, env: {}, stdio: ["ignore", "ignore", "ignore", fd] });
child.unref();
"""


def launcher(kind: str, fd: int, stubborn: bool) -> list[str]:
    linger = [sys.executable, LINGER, str(fd), *(["stubborn"] if stubborn else [])]
    setsid = shutil.which("setsid") or "/usr/bin/setsid"
    if kind == "setsid":
        return [setsid, "-f", *linger]
    if kind == "nohup":
        return ["sh", "-c", 'nohup "$@" >/dev/null 2>&1 &', "sh", *linger]
    if kind == "envi":
        return ["env", "-i", setsid, "-f", *linger]
    if kind == "doublefork":
        return [sys.executable, "-c", DOUBLE_FORK, *linger[1:]]
    if kind == "daemon":
        return [sys.executable, "-c", DAEMON, *linger[1:]]
    if kind == "hopper":
        return [sys.executable, "-c", HOPPER_LAUNCH, HOPPER, str(fd), str(time.time() + 60)]
    if kind == "node":
        return [shutil.which("node") or "node", "-e", NODE, str(fd)]
    raise SystemExit(f"unknown kind {kind!r}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("db")
    p.add_argument("fd", type=int)
    p.add_argument("kinds")
    p.add_argument("--grace", type=float, default=1.0)
    p.add_argument("--stubborn", action="store_true")
    p.add_argument("--cgroup", action="store_true", help="the cgroup tier (off: subreaper tier)")
    args = p.parse_args()

    store = SessionStore.open(args.db)
    sid = store.create_session("escapees").id
    layer = ProcessLayer(store, sid, grace_s=args.grace, kill_verify_s=3.0, cgroup=args.cgroup)
    layer.install()
    launchers = [
        layer.spawn(
            launcher(kind, args.fd, args.stubborn),
            pass_fds=[args.fd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for kind in args.kinds.split(",")
    ]
    for proc in launchers:
        proc.wait(30)
    os.close(args.fd)  # from now on only the escapees hold the pipe
    print("READY " + json.dumps({"session_id": sid}), flush=True)
    if sys.stdin.readline():
        report = layer.shutdown(reason="asked on stdin")
        print("REPORT " + report.model_dump_json(), flush=True)


if __name__ == "__main__":
    main()
