"""``python -m flowd``: the flowd command."""

from .cli import main

raise SystemExit(main())
