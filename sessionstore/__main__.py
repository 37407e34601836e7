"""``python -m sessionstore``: the command line (see :mod:`sessionstore.cli`)."""

from ._interrupt import install_quiet_interrupt

install_quiet_interrupt()  # first: Ctrl+C while the CLI's modules load ends by SIGINT too

from .cli import main  # noqa: E402

raise SystemExit(main())
