"""Batch checking: read inputs (JSON, JSONL, CSV, Parquet, folders), run them resumably, store results.

    from libra_edge.batch import BatchJob, BatchOptions, read_inputs
"""

from libra_edge.batch.fields import FieldMap
from libra_edge.batch.readers import BatchInput, InputIssue, Item, expand_inputs, read_inputs, read_records
from libra_edge.batch.runner import (
    ANALYSIS_MODES,
    AnalysisMode,
    BatchJob,
    BatchOptions,
    BatchProgress,
    BatchSummary,
    fingerprint,
    processing_order,
)

__all__ = [
    "ANALYSIS_MODES",
    "AnalysisMode",
    "BatchInput",
    "BatchJob",
    "BatchOptions",
    "BatchProgress",
    "BatchSummary",
    "FieldMap",
    "InputIssue",
    "Item",
    "expand_inputs",
    "fingerprint",
    "processing_order",
    "read_inputs",
    "read_records",
]
