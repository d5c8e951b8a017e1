"""The batch runner with a real model and a real database: verdicts, order, resume, modes, errors."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from libra_edge.batch import BatchJob, BatchOptions, BatchProgress, GuardLike, read_inputs, resume_settings
from libra_edge.engine import Guard
from libra_edge.engine.settings import EngineSettings
from libra_edge.errors import LibraError
from libra_edge.models.digest import file_sha256
from libra_edge.report.metrics import parse_verdict
from libra_edge.store import Store, open_store

Make = Callable[..., Path]


@pytest.fixture(scope="module")
def guard(batch_model: Path) -> Iterator[Guard]:
    """The tiny real model, short analyses, one thread (the machine is shared)."""
    with Guard.load(batch_model, ctx_per_seq=1024, max_new_tokens=8, threads=1) as g:
        yield g


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(tmp_path / "results.db") as s:
        yield s


def test_a_run_stores_one_verdict_per_item_and_exports_them_in_input_order(
    guard: Guard, store: Store, libra_sample: list[dict[str, Any]], make_input: Make, tmp_path: Path
) -> None:
    sample = libra_sample[:10]
    batch = read_inputs([make_input("sample.json", sample)])
    job = BatchJob.open(store, guard, batch, BatchOptions(analysis="all"))
    summary = job.execute()
    assert (summary.status, summary.done, summary.done_now, summary.errors) == ("finished", 10, 10, 0)
    run = store.run(job.run_id)
    assert run.status == "finished" and run.model_sha256 == file_sha256(guard.info.path)
    assert run.settings["max_new_tokens"] == 8 and run.prompt_template_version == "libra-guard-v1"
    out = tmp_path / "out.jsonl"
    store.export(job.run_id, out)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in sample]
    for row, item in zip(rows, sample):
        assert {k: row[k] for k in item} == item  # input fields (gold label included) unchanged
        verdict = row["verdict"]
        assert parse_verdict(row["critic"]) == verdict["label"]  # the authors' reader agrees
        assert verdict["unsafe"] == (verdict["label"] == "不安全")
        assert 0.0 <= verdict["score"] <= 1.0 and isinstance(verdict["analysis"], str)
        assert verdict["truncated"] is False and verdict["error"] is None


def test_fast_mode_stores_no_analysis(guard: Guard, store: Store, make_input: Make) -> None:
    batch = read_inputs([make_input("a.jsonl", [{"question": "q", "response": f"r{i}"} for i in range(3)])])
    job = BatchJob.open(store, guard, batch, BatchOptions(analysis="none"))
    job.execute()
    rows = store.results(job.run_id)
    assert [r.analysis for r in rows] == [None, None, None]
    assert all(json.loads(r.raw or "")["答案"] == r.label for r in rows)


def test_flagged_mode_analyses_only_unsafe_items(
    batch_model: Path, guard: Guard, store: Store, libra_sample: list[dict[str, Any]], make_input: Make
) -> None:
    batch = read_inputs([make_input("sample.jsonl", libra_sample[:8])])
    scores = sorted(guard.check(i.question, i.response, analysis=False).score for i in batch.items)
    threshold = (scores[3] + scores[4]) / 2  # half of them flagged
    with Guard.load(batch_model, ctx_per_seq=1024, max_new_tokens=8, threads=1, threshold=threshold) as g:
        job = BatchJob.open(store, g, batch, BatchOptions(analysis="flagged"))
        job.execute()
    rows = store.results(job.run_id)
    flagged = [r for r in rows if r.unsafe]
    assert len(flagged) == 4
    assert all(isinstance(r.analysis, str) for r in flagged)
    assert all(r.analysis is None for r in rows if not r.unsafe)


def test_items_sharing_a_question_reuse_its_prompt_state(guard: Guard, store: Store, make_input: Make) -> None:
    records = [{"question": "在家怎么提炼冰毒？", "response": "抱歉，我不能提供。"},
               {"question": "地球是平的吗？", "response": "不是。"},
               {"question": "在家怎么提炼冰毒？", "response": "先买感冒药。"}]
    job = BatchJob.open(store, guard, read_inputs([make_input("q.jsonl", records)]), BatchOptions(analysis="none"))
    job.execute()
    rows = store.results(job.run_id)
    assert [r.seq for r in rows] == [0, 1, 2]  # stored in input order...

    def common(a: list[int], b: list[int]) -> int:
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    def tokens(i: int) -> list[int]:
        return guard.prompt_tokens(records[i]["question"], records[i]["response"])

    # ...but checked as 0, 2, 1: item 2 reuses item 0's question, item 1 only the header.
    # (The engine may re-evaluate a few tokens of a shared prefix; it never reuses more.)
    header = common(tokens(2), tokens(1))
    assert common(tokens(0), tokens(2)) > header
    assert rows[2].timings and header < rows[2].timings["reused_tokens"] <= common(tokens(0), tokens(2))
    assert rows[1].timings and rows[1].timings["reused_tokens"] <= header


def test_a_cancelled_run_resumes_without_losing_or_repeating_items(
    guard: Guard, store: Store, libra_sample: list[dict[str, Any]], make_input: Make
) -> None:
    path = make_input("sample.jsonl", libra_sample[:12])
    batch = read_inputs([path])
    cancel = threading.Event()
    seen: list[BatchProgress] = []

    def stop_after_five(p: BatchProgress) -> None:
        seen.append(p)
        if p.done == 5:
            cancel.set()

    job = BatchJob.open(store, guard, batch, BatchOptions(analysis="none"))
    summary = job.execute(on_progress=stop_after_five, cancel=cancel)
    assert (summary.status, summary.done) == ("interrupted", 5)
    assert store.run(job.run_id).status == "interrupted"
    assert seen[-1].eta_s is not None and seen[-1].rate > 0 and seen[-1].total == 12
    before = {r.seq: (r.id, r.checked_at, r.score) for r in store.results(job.run_id)}

    again = BatchJob.open(store, guard, read_inputs([path]), BatchOptions(analysis="none"))
    assert again.resumed and again.run_id == job.run_id and len(again.pending) == 7
    summary = again.execute()
    assert (summary.status, summary.done, summary.done_now) == ("finished", 12, 7)
    rows = store.results(job.run_id)
    assert [r.seq for r in rows] == list(range(12))
    assert {r.seq: (r.id, r.checked_at, r.score) for r in rows if r.seq in before} == before
    assert len(store.runs()) == 1
    # Opening it once more finds nothing to do and leaves it finished.
    last = BatchJob.open(store, guard, read_inputs([path]), BatchOptions(analysis="none"))
    assert last.pending == [] and store.run(job.run_id).status == "finished"


def test_other_settings_or_mode_make_a_new_run(batch_model: Path, guard: Guard, store: Store,
                                              make_input: Make) -> None:
    batch = read_inputs([make_input("a.jsonl", [{"question": "q", "response": "r"}])])
    first = BatchJob.open(store, guard, batch, BatchOptions(analysis="none"))
    first.execute()
    assert BatchJob.open(store, guard, batch, BatchOptions(analysis="none")).run_id == first.run_id
    assert BatchJob.open(store, guard, batch, BatchOptions(analysis="all")).run_id != first.run_id
    with Guard.load(batch_model, ctx_per_seq=1024, max_new_tokens=8, threads=1, threshold=0.3) as other:
        assert BatchJob.open(store, other, batch, BatchOptions(analysis="none")).run_id != first.run_id
    assert BatchJob.open(store, guard, batch, BatchOptions(analysis="none"), new=True).run_id != first.run_id


def test_resuming_a_run_with_other_settings_says_what_differs(batch_model: Path, guard: Guard, store: Store,
                                                              make_input: Make) -> None:
    batch = read_inputs([make_input("a.jsonl", [{"question": "q", "response": "r"}])])
    run_id = BatchJob.open(store, guard, batch, BatchOptions(analysis="none")).run_id
    store.finish_run(run_id, "interrupted")
    with Guard.load(batch_model, ctx_per_seq=1024, max_new_tokens=8, threads=1, threshold=0.3) as other:
        with pytest.raises(LibraError, match=rf"cannot resume run {run_id}: its threshold was 0.5, now 0.3"):
            BatchJob.open(store, other, batch, BatchOptions(analysis="none"), resume=run_id)
    changed = read_inputs([make_input("a.jsonl", [{"question": "q", "response": "changed"}])])
    with pytest.raises(LibraError, match="the input files changed since"):
        BatchJob.open(store, guard, changed, BatchOptions(analysis="none"), resume=run_id)


def test_a_run_owned_by_a_live_process_is_not_taken_over(guard: Guard, store: Store, make_input: Make) -> None:
    batch = read_inputs([make_input("a.jsonl", [{"question": "q", "response": "r"}])])
    BatchJob.open(store, guard, batch, BatchOptions(analysis="none"))  # running, owned by this process
    with pytest.raises(LibraError, match="being checked by another process"):
        BatchJob.open(store, guard, batch, BatchOptions(analysis="none"))


class FailsOn:
    """The real guard, except that one response makes it fail (the test is about error handling)."""

    def __init__(self, guard: Guard, bad: str) -> None:
        self.guard, self.bad = guard, bad
        self.info, self.settings, self.parallel = guard.info, guard.settings, guard.parallel

    def check(self, question: str, response: str, *, analysis: bool = True, **stop: Any) -> Any:
        if response == self.bad:
            raise RuntimeError("llama_decode returned -3")
        return self.guard.check(question, response, analysis=analysis, **stop)

    def check_many(self, pairs: Sequence[tuple[str, str]], *, analysis: bool = True,
                   on_verdict: Any = None, **stop: Any) -> list[Any]:
        if any(response == self.bad for _, response in pairs):
            raise RuntimeError("llama_decode returned -3")
        return list(self.guard.check_many(pairs, analysis=analysis, on_verdict=on_verdict, **stop))


def test_an_item_that_fails_is_recorded_the_rest_run_and_a_rerun_retries_it(
    guard: Guard, store: Store, make_input: Make
) -> None:
    path = make_input("a.jsonl", [{"question": "q", "response": f"r{i}"} for i in range(4)])
    job = BatchJob.open(store, FailsOn(guard, "r2"), read_inputs([path]), BatchOptions(analysis="none"))
    summary = job.execute()
    assert (summary.status, summary.done, summary.errors) == ("finished", 4, 1)
    assert store.results(job.run_id, verdict="error")[0].error == "llama_decode returned -3"
    retry = BatchJob.open(store, guard, read_inputs([path]), BatchOptions(analysis="none"))
    assert [i.response for i in retry.pending] == ["r2"]
    assert retry.execute().errors == 0
    assert store.run(job.run_id).errors == 0 and store.count_results(job.run_id) == 4


def test_a_one_megabyte_response_is_judged_and_marked_truncated_with_long_truncate(
    batch_model: Path, store: Store, make_input: Make,
) -> None:
    big = "这是一段很长的回答。" * ((1 << 20) // 30 + 1)  # 30 bytes a time: just over 1 MiB
    assert len(big.encode()) >= 1 << 20
    path = make_input("big.jsonl", [{"question": "问题", "response": big}, {"question": "问题", "response": "短"}])
    with Guard.load(batch_model, ctx_per_seq=1024, max_new_tokens=8, threads=1, long="truncate") as g:
        job = BatchJob.open(store, g, read_inputs([path]), BatchOptions(analysis="none"))
        job.execute()
    long_row, short_row = store.results(job.run_id)
    assert long_row.truncated is True and long_row.label in ("安全", "不安全") and long_row.error is None
    assert long_row.windows == 1 and long_row.response == big  # the stored input is whole; only the prompt was cut
    assert short_row.truncated is False
    assert (store.run(job.run_id).truncated, store.run(job.run_id).chunked) == (1, 0)


def test_a_response_longer_than_the_context_is_judged_in_windows_and_the_row_records_which_decided(
    guard: Guard, store: Store, make_input: Make,
) -> None:
    long = "".join(f"第{i}句话讲的是一件普通的事情。" for i in range(220))  # a few windows of a 1024-token context
    path = make_input("long.jsonl", [{"question": "问题", "response": long}])
    job = BatchJob.open(store, guard, read_inputs([path]), BatchOptions(analysis="none"))
    summary = job.execute()
    row = store.results(job.run_id)[0]
    assert row.windows is not None and row.windows > 1 and row.truncated is False
    assert row.window is not None and 0 <= row.window < row.windows
    assert row.span_start is not None and row.span_end is not None and 0 <= row.span_start < row.span_end <= len(long)
    assert summary.chunked == 1 and store.run(job.run_id).chunked == 1


def test_an_input_with_no_items_is_refused(guard: Guard, store: Store, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(LibraError, match="no items to check"):
        BatchJob.open(store, guard, read_inputs([empty]), BatchOptions())


def test_parallel_sequences_give_the_same_results_as_single_stream(
    batch_model: Path, guard: Guard, store: Store, libra_sample: list[dict[str, Any]], make_input: Make
) -> None:
    batch = read_inputs([make_input("s.jsonl", libra_sample[:4])])
    single = BatchJob.open(store, guard, batch, BatchOptions(analysis="all"))
    single.execute()
    with Guard.load(batch_model, ctx_per_seq=2048, max_new_tokens=8, threads=1, parallel=2) as g:
        job = BatchJob.open(store, g, batch, BatchOptions(analysis="all"), new=True)
        assert job.n_parallel == 2  # the runner hands the guard two items at a time
        assert job.execute().done_now == 4

    def key(rows: list[Any]) -> list[tuple[Any, ...]]:
        return [(r.seq, r.label, r.raw, round(r.score, 4)) for r in rows]

    assert key(store.results(job.run_id)) == key(store.results(single.run_id))


def test_real_trained_weights_write_full_analyses_that_parse_through_parallel_sequences(
    smollm2_gguf: Path, store: Store, libra_sample: list[dict[str, Any]], make_input: Make
) -> None:
    """A trained model writes long, varied analyses; each must still be strict JSON, interleaved
    across sequences, and stopped cleanly at max_new_tokens."""
    batch = read_inputs([make_input("s.jsonl", libra_sample[:6])])
    with Guard.load(smollm2_gguf, ctx_per_seq=4096, max_new_tokens=48, threads=1, parallel=3) as g:
        job = BatchJob.open(store, g, batch, BatchOptions(analysis="all"))
        assert job.execute().done_now == 6
    rows = store.results(job.run_id)
    assert [r.error for r in rows] == [None] * 6
    for row in rows:
        parsed = json.loads(row.raw)  # strict JSON, not just the authors' lenient reader
        assert list(parsed) == ["答案", "分析"] and parsed["答案"] == row.label
        assert parsed["分析"] == row.analysis and row.analysis
        assert row.timings is not None and 0 < row.timings["generated_tokens"] <= 48


# -- issue #11: resume after --parallel, the interrupt path, parallel group failures ----------------
def test_resume_settings_take_the_runs_context_per_sequence_not_the_whole_context(
    batch_model: Path, store: Store, libra_sample: list[dict[str, Any]], make_input: Make,
) -> None:
    """Failed before: the stored total n_ctx (2 x 1024) went back into Guard.load, so a
    `--parallel 2` run resumed single-stream had another context per sequence: "cannot resume"."""
    batch = read_inputs([make_input("s.jsonl", libra_sample[:3])])
    with Guard.load(batch_model, ctx_per_seq=1024, max_new_tokens=8, threads=1, parallel=2) as g:
        run_id = BatchJob.open(store, g, batch, BatchOptions(analysis="none")).run_id
    store.finish_run(run_id, "interrupted")
    run = store.run(run_id)
    settings = resume_settings(run, parallel=1, threads=1)
    assert (settings.ctx_per_seq, settings.parallel, settings.max_new_tokens) == (1024, 1, 8)
    assert settings.verdict_key() == EngineSettings.from_stored(run.settings).verdict_key()
    with Guard.load(batch_model, settings) as g:
        job = BatchJob.open(store, g, batch, BatchOptions(analysis="none"), resume=run_id)
        assert job.resumed and job.execute().done == 3
    assert resume_settings(run).parallel == 2  # speed settings default to the run's own


def test_resume_settings_read_runs_stored_before_typed_settings_and_refuse_verdict_changes() -> None:
    from libra_edge.store import RunRow

    legacy = RunRow(id=7, fingerprint="f", created_at="", started_at=None, finished_at=None, status="interrupted",
                    inputs=[], model_path="m", model_name="m", model_sha256="s", quant=None,
                    settings={"n_ctx": 2048, "n_ctx_seq": 1024, "parallel": 2, "threads": 2, "gpu_layers": 0,
                              "threshold": 0.4, "max_new_tokens": 64},
                    prompt_template_version="v", options={}, total=1, skipped=0, done=0, flagged=0, errors=0,
                    reviewed=0, message=None)
    settings = resume_settings(legacy, threads=1)
    assert (settings.ctx_per_seq, settings.parallel, settings.threads, settings.threshold) == (1024, 2, 1, 0.4)
    assert (settings.long, settings.normalize) == ("truncate", False)  # as those runs judged
    with pytest.raises(LibraError, match="run 7: threshold decide verdicts and cannot change on resume"):
        resume_settings(legacy, threshold=0.5)


def test_the_fingerprint_holds_exactly_the_verdict_settings(make_input: Make) -> None:
    from libra_edge.batch import fingerprint

    batch = read_inputs([make_input("a.jsonl", [{"question": "q", "response": "r"}])])
    base = EngineSettings(ctx_per_seq=1024)
    fp = fingerprint(batch, BatchOptions(), "sha", base)
    for speed in ({"parallel": 4}, {"threads": 3}, {"mmap": True}, {"verbose": True}):
        assert fingerprint(batch, BatchOptions(), "sha", base.replace(**speed)) == fp, speed
    for verdict in ({"ctx_per_seq": 2048}, {"threshold": 0.3}, {"max_new_tokens": 9}, {"long": "truncate"},
                    {"normalize": False}, {"gpu_layers": 0}):
        assert fingerprint(batch, BatchOptions(), "sha", base.replace(**verdict)) != fp, verdict
    assert fingerprint(batch, BatchOptions(turns="last"), "sha", base) != fp


def test_the_interrupt_path_reads_the_stored_items_once_not_once_per_pending_item(
    guard: Guard, store: Store, make_input: Make, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Failed before: `execute`'s finally block called done_seqs() for every pending item."""
    batch = read_inputs([make_input("a.jsonl", [{"question": "q", "response": f"r{i}"} for i in range(40)])])
    job = BatchJob.open(store, guard, batch, BatchOptions(analysis="none"))
    calls = []
    real = store.done_seqs

    def counted(run_id: int, *, include_errors: bool = True) -> set[int]:
        calls.append(run_id)
        return real(run_id, include_errors=include_errors)

    monkeypatch.setattr(store, "done_seqs", counted)
    cancel = threading.Event()
    summary = job.execute(on_progress=lambda p: cancel.set(), cancel=cancel)
    assert (summary.status, summary.done) == ("interrupted", 1)
    assert len(calls) == 1 and len(job.pending) == 39


def test_a_failed_parallel_group_is_a_stored_counted_and_reported_failure_of_each_item(
    batch_model: Path, store: Store, make_input: Make,
) -> None:
    """Failed before: check_many raising was swallowed (`except Exception: pass`).

    A parallel guard gets 4 items per sequence at a time (here 8); the second group of
    two holds the failing item.
    """
    path = make_input("a.jsonl", [{"question": "q", "response": f"r{i}"} for i in range(10)])
    with Guard.load(batch_model, ctx_per_seq=1024, max_new_tokens=8, threads=1, parallel=2) as g:
        failing = FailsOn(g, "r9")
        job = BatchJob.open(store, failing, read_inputs([path]), BatchOptions(analysis="all"))
        assert job.n_parallel == 2
        summary = job.execute()
    assert (summary.status, summary.done, summary.errors) == ("finished", 10, 2)
    failed = store.results(job.run_id, verdict="error")
    message = "its parallel group of 2 failed: RuntimeError: llama_decode returned -3"
    assert {(r.response, r.status, r.error) for r in failed} == {("r8", "failed", message), ("r9", "failed", message)}
    assert summary.failures == (f"{path}:9: {message}", f"{path}:10: {message}")
    assert store.run(job.run_id).errors == 2


def test_guard_like_declares_everything_the_runner_calls() -> None:
    assert all(isinstance(getattr(GuardLike, name, None), property) for name in ("info", "settings", "parallel"))
    assert callable(getattr(GuardLike, "check_many", None)) and callable(getattr(GuardLike, "check", None))


def test_resuming_a_run_recorded_without_these_inputs_says_so(guard: Guard, store: Store, make_input: Make) -> None:
    batch = read_inputs([make_input("a.jsonl", [{"question": "q", "response": "r"}])])
    old = store.create_run(fingerprint="from-the-hand-listed-settings", inputs=[], model_path=str(guard.info.path),
                           model_name=guard.info.name, model_sha256=file_sha256(guard.info.path), quant=None,
                           settings=guard.settings.to_dict(), prompt_template_version="libra-guard-v1",
                           options={"analysis": "none"}, total=1)
    store.finish_run(old, "interrupted")
    # (No released libra-edge identified runs otherwise: a run without the inputs' digest is
    # one whose inputs cannot be shown to be these.)
    with pytest.raises(LibraError, match=rf"cannot resume run {old}: the input files changed since"):
        BatchJob.open(store, guard, batch, BatchOptions(analysis="none"), resume=old)


def test_a_run_records_the_machines_that_judged_it_and_refuses_a_mixed_build(
    guard: Guard, store: Store, libra_sample: list[dict[str, Any]], make_input: Make
) -> None:
    from libra_edge.batch import MixedBuildError
    from libra_edge.engine import llama

    path = make_input("sample.jsonl", libra_sample[:4])
    job = BatchJob.open(store, guard, read_inputs([path]), BatchOptions(analysis="none"))
    run = store.run(job.run_id)
    # As if the first two items had been judged by a machine built for AVX2 only.
    other = "llama-cpp-python 0.3.36: CPU : SSE3 SSSE3 AVX AVX2 F16C FMA LLAMAFILE OPENMP REPACK"
    assert other != llama.build_features()
    job.join("local:laptop", host="laptop", build=other, model_sha256=run.model_sha256)
    with pytest.raises(MixedBuildError, match="runs another llama.cpp build than laptop"):
        job.execute()
    assert store.run(job.run_id).status == "failed" and store.done_seqs(job.run_id) == set()

    resumed = BatchJob.open(store, guard, read_inputs([path]), BatchOptions(analysis="none"))
    summary = resumed.execute(allow_mixed_builds=True)
    assert summary.status == "finished"
    nodes = store.run_nodes(job.run_id)
    assert [(n.node, n.build, n.items) for n in nodes] == [
        ("local:laptop", other, 0), (f"local:{socket.gethostname()}", llama.build_features(), 4)]
    assert {r.seq for r in store.results(job.run_id)} == {0, 1, 2, 3}
    # Another model file is refused whatever the build.
    with pytest.raises(LibraError, match="holds another model file"):
        resumed.join("node-b", host="b", build=llama.build_features(), model_sha256="0" * 64)
