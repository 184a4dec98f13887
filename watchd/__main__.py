"""`python -m watchd` is the same as the `watchd` console script."""

from watchd.cli import main

raise SystemExit(main())
