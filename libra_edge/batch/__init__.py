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

_WHERE = {
    "FieldMap": "fields",
    "BatchInput": "readers",
    "InputIssue": "readers",
    "Item": "readers",
    "Placeholder": "readers",
    "expand_inputs": "readers",
    "read_inputs": "readers",
    "read_records": "readers",
    "ANALYSIS_MODES": "runner",
    "AnalysisMode": "runner",
    "BatchJob": "runner",
    "BatchOptions": "runner",
    "BatchProgress": "runner",
    "BatchSummary": "runner",
    "Executor": "runner",
    "GuardLike": "runner",
    "LocalExecutor": "runner",
    "MixedBuildError": "runner",
    "RunInterrupted": "runner",
    "fingerprint": "runner",
    "judge_pairs": "runner",
    "load_guard": "runner",
    "processing_order": "runner",
    "resume_settings": "runner",
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


# `from libra_edge.batch import BatchJob` imports the module that defines it, on first use.
__getattr__ = module_getattr(__name__, _WHERE)
