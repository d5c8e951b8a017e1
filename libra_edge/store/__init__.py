"""The results database: batch runs, verdicts and reviews in one SQLite file (see `open_store`).

    from libra_edge.store import open_store
    with open_store() as store:                 # the user's database, migrated
        run = store.runs()[0]
        page = store.results(run.id, verdict="flagged", order="score_desc", limit=50)
        store.set_review(page[0].id, "confirm", "clear instructions for harm")
"""

from libra_edge.store.db import Store, open_store
from libra_edge.store.export import output_record
from libra_edge.store.filters import Order, ResultFilter, VerdictFilter
from libra_edge.store.rows import (REVIEW_DECISIONS, Facets, NodeRow, RefusalEvent, ResultRow, ReviewDecision,
                                   ReviewEvent, RunRow, RunStatus)

__all__ = [
    "REVIEW_DECISIONS",
    "Facets",
    "NodeRow",
    "Order",
    "RefusalEvent",
    "ResultFilter",
    "ResultRow",
    "ReviewDecision",
    "ReviewEvent",
    "RunRow",
    "RunStatus",
    "Store",
    "VerdictFilter",
    "open_store",
    "output_record",
]
