"""The ``sessionstore`` command line: ``entry()`` is the console script, ``main()`` its body.

The parser lives in :mod:`._main`; each command's module is imported only when that command runs,
so a shell hook pays only for what it uses. The demo (``sessionstore demo``) lives here too: it is
a tool built on the library, not part of it.
"""

from ._main import entry, main

__all__ = ["entry", "main"]
