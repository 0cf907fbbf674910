"""`python -m edgegemma ...`: the same as the `edgegemma` command."""
from .cli import main

raise SystemExit(main())
