"""Ctrl+C ends the command line by SIGINT, silently, from the first line of ``__main__`` on.

A program interrupted by Ctrl+C should end *by SIGINT* rather than with an exit status of its
own choosing: a calling shell sees 130 either way, but only a death by the signal tells a shell
running a script (or ``make``, or an orchestrator) that the user asked everything to stop, and
``Popen`` reports it as ``-2``. CPython already ends that way when a ``KeyboardInterrupt`` is
never caught, after running ``atexit`` handlers and flushing output; it only prints a
traceback first. :func:`install_quiet_interrupt` keeps its ending and drops the traceback, so the
command line lets ``KeyboardInterrupt`` propagate instead of catching it: the same ending
whether Ctrl+C lands in an import, the argument parser or a command.

Standard library only: ``python -m sessionstore`` installs it before importing anything else.
(A Ctrl+C that lands earlier, while the package itself is imported, still ends the process by
SIGINT, with CPython's traceback.)
"""

from __future__ import annotations

import sys
from types import TracebackType

__all__ = ["install_quiet_interrupt"]


def _quiet_interrupt(
    kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    # CPython has already noted the uncaught KeyboardInterrupt when it calls this hook; after
    # it returns, the interpreter finalises (atexit, flush) and ends the process by SIGINT.
    if issubclass(kind, KeyboardInterrupt):
        return
    sys.__excepthook__(kind, value, tb)


def install_quiet_interrupt() -> None:
    """Make an uncaught ``KeyboardInterrupt`` end the process by SIGINT with no traceback.

    Every other uncaught exception is printed as before. For the process's entry points only
    (it replaces ``sys.excepthook``).
    """
    sys.excepthook = _quiet_interrupt
