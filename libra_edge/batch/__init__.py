"""Batch checking: read inputs (pairs or chat transcripts; JSON, JSONL, CSV, Parquet, folders, stdin),
run them resumably, store every record's outcome.

    from libra_edge.batch import BatchJob, BatchOptions, read_inputs, resume_settings

Names are imported from their modules on first use: `libra_edge.batch.transcripts` (the
`batch` command's option choices, read at every start) does not bring in the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from libra_edge.lazy import module_getattr

if TYPE_CHECKING:
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
    from libra_edge.batch.identity import BatchOptions, fingerprint, record_run, recorded_settings, resume_settings
    from libra_edge.batch.policy import ANALYSIS_MODES, AnalysisMode, GuardLike, Outcome, VerdictLike, judge_pairs
    from libra_edge.batch.runner import (
        BatchJob,
        BatchProgress,
        BatchSummary,
        Executor,
        LocalExecutor,
        MixedBuildError,
        RunInterrupted,
        load_guard,
        processing_order,
    )
    from libra_edge.batch.transcripts import INPUT_FORMATS, TURN_SELECTIONS

_WHERE = {
    "FieldMap": "fields",
    "BatchInput": "readers",
    "InputIssue": "readers",
    "Item": "readers",
    "Placeholder": "readers",
    "expand_inputs": "readers",
    "read_inputs": "readers",
    "read_records": "readers",
    "ANALYSIS_MODES": "policy",
    "AnalysisMode": "policy",
    "BatchJob": "runner",
    "BatchOptions": "identity",
    "BatchProgress": "runner",
    "BatchSummary": "runner",
    "Executor": "runner",
    "GuardLike": "policy",
    "Outcome": "policy",
    "VerdictLike": "policy",
    "LocalExecutor": "runner",
    "MixedBuildError": "runner",
    "RunInterrupted": "runner",
    "fingerprint": "identity",
    "judge_pairs": "policy",
    "load_guard": "runner",
    "processing_order": "runner",
    "record_run": "identity",
    "recorded_settings": "identity",
    "resume_settings": "identity",
    "INPUT_FORMATS": "transcripts",
    "TURN_SELECTIONS": "transcripts",
}

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
    "Outcome",
    "Placeholder",
    "RunInterrupted",
    "VerdictLike",
    "expand_inputs",
    "fingerprint",
    "judge_pairs",
    "load_guard",
    "processing_order",
    "read_inputs",
    "read_records",
    "record_run",
    "recorded_settings",
    "resume_settings",
]


# `from libra_edge.batch import BatchJob` imports the module that defines it, on first use.
__getattr__ = module_getattr(__name__, _WHERE)
