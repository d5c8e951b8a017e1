"""`python -m libra_edge` runs the command-line interface."""

from libra_edge.cli.main import main

raise SystemExit(main())
