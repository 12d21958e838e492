"""``python -m lcfast.bench``: the ``lcfast bench`` command."""
from .cli import main

raise SystemExit(main())
