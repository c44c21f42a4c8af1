"""`python -m analytic`: see analytic.cli."""

from analytic.cli import main

raise SystemExit(main())
