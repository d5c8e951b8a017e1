"""Audit helpers that come before a run: reproducible samples of test banks and logs (`sample`)."""
