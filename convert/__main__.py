"""`python -m convert` (from the repository root) or `python -m libra_edge.convert`: the converter as a script."""

import sys
from importlib import import_module

# `python convert/__main__.py` has no package context: use the installed package then.
cli = import_module(".cli", __package__) if __package__ else import_module("libra_edge.convert.cli")
sys.exit(cli.main(prog=f"python -m {__package__ or 'libra_edge.convert'}"))
