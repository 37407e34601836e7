"""``python -m sessionstore``: the command line (see :mod:`sessionstore.cli`)."""

from .cli import main

raise SystemExit(main())
