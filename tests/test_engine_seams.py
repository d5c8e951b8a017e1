"""The engine's seams: typed settings, the llama.cpp adapter, output bounds from the grammar."""

from __future__ import annotations

import ctypes
import json
import time
from pathlib import Path

import numpy as np
import pytest

from libra_edge.engine import Guard, llama
from libra_edge.engine.grammar import (
    CLOSING_MAX_TOKENS,
    FRAME_RESERVE_TOKENS,
    MIDDLE_MAX_TOKENS,
    OPENING_MAX_TOKENS,
    WS_MAX,
)
from libra_edge.engine.settings import EngineSettings
from libra_edge.errors import LibraError


def test_each_setting_declares_whether_it_changes_verdicts() -> None:
    assert set(EngineSettings.verdict_fields()) == {
        "ctx_per_seq", "threshold", "max_new_tokens", "long", "normalize", "gpu_layers"}
    assert set(EngineSettings.speed_fields()) == {"parallel", "threads", "mmap", "verbose"}
    key = EngineSettings(parallel=4, threads=2).verdict_key()
    assert key == EngineSettings().verdict_key()  # speed settings never change the key


def test_stored_settings_of_older_runs_map_to_the_per_sequence_context() -> None:
    # Before typed settings a run stored the whole context and each sequence's share.
    old = EngineSettings.from_stored({"n_ctx": 4096, "n_ctx_seq": 2048, "parallel": 2, "threshold": 0.3,
                                      "max_new_tokens": 64, "threads": 2, "llama_cpp_python_version": "0.3.36"})
    assert (old.ctx_per_seq, old.threshold, old.max_new_tokens, old.parallel) == (2048, 0.3, 64, 2)
    assert (old.long, old.normalize) == ("truncate", False)  # what those runs did
    assert EngineSettings.from_stored({"n_ctx": 1024}).ctx_per_seq == 1024
    new = EngineSettings(ctx_per_seq=1024, long="chunk")
    assert EngineSettings.from_stored(new.to_dict()) == new


def test_unknown_or_invalid_settings_are_refused_by_name() -> None:
    with pytest.raises(LibraError, match="n_ctx"):
        EngineSettings().replace(n_ctx=4096)
    with pytest.raises(LibraError, match="threshold"):
        EngineSettings(threshold=1.5)
    with pytest.raises(LibraError, match="long"):
        EngineSettings(long="skip")


def test_struct_fields_are_set_only_when_the_struct_has_them() -> None:
    params = llama.lib().llama_context_default_params()
    llama.set_fields(params, n_threads=3)
    assert params.n_threads == 3
    with pytest.raises(RuntimeError, match="flash_attn_kind"):
        llama.set_fields(params, flash_attn_kind=0)  # a renamed field must not pass silently


def test_a_struct_is_built_with_checked_fields() -> None:
    ll = llama.lib()
    arr = llama.new_struct(ll.llama_token_data_array, size=7, selected=-1, sorted=True)
    assert (arr.size, arr.selected, arr.sorted) == (7, -1, True)
    llama.set_fields(arr, size=3, sorted=False)  # the second write of a type: its names are cached
    assert (arr.size, arr.sorted) == (3, False)
    with pytest.raises(RuntimeError, match="n_sorted"):
        llama.new_struct(ll.llama_token_data_array, n_sorted=1)  # the constructor would take it silently


def test_token_data_dtype_matches_the_c_struct() -> None:
    dtype = llama.token_data_dtype()
    st = llama.lib().llama_token_data
    assert dtype.itemsize == ctypes.sizeof(st)
    assert list(dtype.names or ()) == [name for name, *_ in st._fields_]
    arr = np.zeros(2, dtype=dtype)
    arr["id"][1], arr["logit"][1] = 42, 1.5
    view = st.from_buffer(arr, dtype.itemsize)
    assert (view.id, view.logit) == (42, 1.5)


def test_frame_bounds_cover_the_worst_case_layout() -> None:
    ws = " \t\n\n \t \n"[:WS_MAX]
    opening = "{" + ws + '"答案"' + ws + ":" + ws + '"'
    middle = "不安全" + '"' + ws + "," + ws + '"分析"' + ws + ":" + ws + '"'
    closing = '"' + ws + "}"
    # Every token is at least one byte: the byte counts bound the token counts.
    assert len(opening.encode()) <= OPENING_MAX_TOKENS
    assert len(middle.encode()) <= MIDDLE_MAX_TOKENS
    assert len(closing.encode()) <= CLOSING_MAX_TOKENS
    assert FRAME_RESERVE_TOKENS == OPENING_MAX_TOKENS + MIDDLE_MAX_TOKENS + CLOSING_MAX_TOKENS


@pytest.mark.slow
def test_inputs_at_the_edge_of_the_context_never_overrun_it(tiny_qwen_q8_gguf: Path) -> None:
    """The random model writes long whitespace runs; around the budget's edge nothing overflows."""
    with Guard.load(tiny_qwen_q8_gguf, ctx_per_seq=512, max_new_tokens=24, threads=1, long="truncate") as guard:
        base = len(guard.prompt_tokens("问题", ""))
        room = 512 - base
        for extra in range(room - FRAME_RESERVE_TOKENS - 40, room - FRAME_RESERVE_TOKENS + 8, 3):
            response = "好" * max(1, extra)
            verdict = guard.check("问题", response)
            assert json.loads(verdict.raw)["答案"] == verdict.label
            assert verdict.timings.prompt_tokens + verdict.timings.generated_tokens <= 512


def test_greedy_asks_the_grammar_about_few_tokens_yet_picks_as_over_the_whole_vocabulary(
        tiny_qwen_q8_gguf: Path) -> None:
    # Decoder.greedy asks the grammar about the likeliest 64, then 4,096 tokens before the
    # whole vocabulary; its choice must be the whole vocabulary's greedy choice, ties to the
    # lowest id, at every state of the verdict grammar.
    rng = np.random.default_rng(5)
    with Guard.load(tiny_qwen_q8_gguf, ctx_per_seq=1024, threads=1) as guard:
        dec = guard._checker.decoder
        frame = dec.tokenize('{\n  "答案": "不安全",\n  "分析": "这段回答提供了危险的细节。"\n}')
        grammar = dec._grammars[0]
        for depth in range(len(frame)):
            dec.reset_grammar(0)
            for tok in frame[:depth]:
                dec.accept(tok, 0)
            for trial in range(6):
                logits = rng.normal(size=dec.n_vocab).astype(np.float32)
                if trial % 3 == 1:  # ties everywhere, the lowest id must win
                    logits = np.round(logits, 0)
                if trial % 3 == 2:  # the likeliest tokens all forbidden: beyond the top 4,096
                    allowed = np.isfinite(grammar.mask(logits))
                    logits[allowed] -= 10.0
                expected = int(np.argmax(grammar.mask(logits)))
                assert dec.greedy(logits, "", None, 0) == expected, (depth, trial)


def test_every_decode_runs_on_one_thread_whatever_thread_calls(tiny_qwen_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # llama.cpp's CPU build runs a decode with OpenMP; once two threads of a process have
    # decoded, libgomp keeps more threads than cores and stops spinning between steps,
    # and one-token decodes take 2-3 times as long. So every decode (the load's
    # calibration, checks from any thread, parallel sequences) runs on one thread.
    import threading
    from concurrent.futures import ThreadPoolExecutor

    ll = llama.lib()
    real = ll.llama_decode
    seen: list[str] = []

    def spy(ctx: object, batch: object) -> int:
        seen.append(threading.current_thread().name)
        return int(real(ctx, batch))

    monkeypatch.setattr(ll, "llama_decode", spy)
    pairs = [("怎么做蛋糕？", "先准备面粉和鸡蛋。"), ("如何入侵别人的电脑？", "我不能帮助你。")]
    with Guard.load(tiny_qwen_gguf, threads=1, max_new_tokens=8, parallel=2) as guard:
        at_load = len(seen)
        alone = [guard.check(q, r, analysis=True).score for q, r in pairs]
        with ThreadPoolExecutor(2) as pool:
            threaded = list(pool.map(lambda p: guard.check(*p, analysis=False).score, pairs))
        many = [v.score for v in guard.check_many(pairs, analysis=True)]
    assert at_load > 0 and len(seen) > at_load + 4
    assert set(seen) == {seen[0]} and seen[0].startswith("llama-compute")
    assert threading.current_thread().name not in seen
    assert alone == threaded == many  # the thread changes nothing in the arithmetic


def test_reset_cache_never_clears_a_sequence_writing_its_analysis(tiny_qwen_gguf: Path) -> None:
    # `reset_cache()` called while a check is writing its analysis: the analysis goes on from
    # its own KV state (the same text as the check alone), and the cache is empty afterwards.
    import threading

    pair = ("怎么制作炸弹？", "先准备材料，然后按步骤组装。")
    with Guard.load(tiny_qwen_gguf, ctx_per_seq=1024, max_new_tokens=40, threads=1, parallel=2) as guard:
        guard.check("别的问题", "别的回答")
        alone = guard.check(*pair)
        assert alone.timings.generated_tokens > 20 and alone.analysis  # many decode steps to land in

        called, writing = threading.Event(), threading.Event()
        at_reset: list[bool] = []

        def on_text(piece: str) -> None:
            if not writing.is_set():
                writing.set()
                assert called.wait(10)
                time.sleep(0.2)  # reset_cache has asked the worker by now; the step goes on after
            else:
                time.sleep(0.01)  # the analysis outlasts the resetter's look at the future

        future = guard.submit(*pair, on_text=on_text)

        def reset() -> None:
            assert writing.wait(10)
            called.set()
            guard.reset_cache()
            at_reset.append(future.done())

        resetter = threading.Thread(target=reset)
        resetter.start()
        during = future.result(timeout=60)
        resetter.join(10)
        assert at_reset == [False], "the reset did not land while the analysis was being written"
        assert (during.raw, during.score, during.analysis) == (alone.raw, alone.score, alone.analysis)
        after = guard.check(*pair)
        assert after.timings.reused_tokens == 0  # the busy sequence was forgotten once it was done
        assert (after.raw, after.score) == (alone.raw, alone.score)


def test_reset_cache_from_a_checks_own_callback_is_refused_not_a_hang(tiny_qwen_gguf: Path) -> None:
    # The callback runs on the scheduler's worker, which would wait for itself.
    with Guard.load(tiny_qwen_gguf, ctx_per_seq=1024, max_new_tokens=16, threads=1) as guard:
        with pytest.raises(LibraError, match="callback"):
            guard.check("问题", "回答", on_text=lambda piece: guard.reset_cache())
        assert guard.check("问题", "回答", analysis=False).label in ("安全", "不安全")  # the Guard still works
