"""Batch checking: read inputs (pairs or chat transcripts; JSON, JSONL, CSV, Parquet, folders, stdin),
run them resumably, store every record's outcome.

    from libra_edge.batch import BatchJob, BatchOptions, read_inputs, resume_settings
"""

from libra_edge.batch.fields import FieldMap
from libra_edge.batch.readers import (
    BatchInput,
    InputIssue,
    Item,
    Placeholder,
    expand_inputs,
    read_inputs,
    read_records,
)
from libra_edge.batch.runner import (
    ANALYSIS_MODES,
    AnalysisMode,
    BatchJob,
    BatchOptions,
    BatchProgress,
    BatchSummary,
    Executor,
    GuardLike,
    LocalExecutor,
    MixedBuildError,
    RunInterrupted,
    fingerprint,
    judge_pairs,
    load_guard,
    processing_order,
    resume_settings,
)
from libra_edge.batch.transcripts import INPUT_FORMATS, TURN_SELECTIONS

__all__ = [
    "ANALYSIS_MODES",
    "INPUT_FORMATS",
    "TURN_SELECTIONS",
    "AnalysisMode",
    "BatchInput",
    "BatchJob",
    "BatchOptions",
    "BatchProgress",
    "BatchSummary",
    "Executor",
    "FieldMap",
    "GuardLike",
    "InputIssue",
    "Item",
    "LocalExecutor",
    "MixedBuildError",
    "Placeholder",
    "RunInterrupted",
    "expand_inputs",
    "fingerprint",
    "judge_pairs",
    "load_guard",
    "processing_order",
    "read_inputs",
    "read_records",
    "resume_settings",
]
