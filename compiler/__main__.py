"""``python -m compiler``: see :mod:`compiler.cli`."""

from compiler.cli import main

raise SystemExit(main())
