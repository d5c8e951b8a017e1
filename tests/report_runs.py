"""Runs built directly in a real SQLite store (no model): the material of the report tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from libra_edge.store import Store

SAFE, UNSAFE = "安全", "不安全"


@dataclass(frozen=True)
class Spec:
    """One item of a built run: its score (None = an error), grouping fields and gold label."""

    score: float | None
    source: str | None = None
    category: str | None = None
    sub_category: str | None = None
    gold: str | None = None
    question: str = "问题"
    response: str = "回答"


def make_run(store: Store, specs: Sequence[Spec], *, threshold: float = 0.5, inputs: Sequence[str] = (),
             model_name: str = "libra-guard-test", finish: bool = True) -> int:
    """A finished run whose items carry these scores (verdict = score >= threshold)."""
    run_id = store.create_run(
        fingerprint=f"fp-{len(store.runs())}", inputs=list(inputs), model_path="/models/libra-guard-test.gguf",
        model_name=model_name, model_sha256="ab" * 32, quant="Q4_K_M",
        settings={"threshold": threshold, "ctx_per_seq": 4096, "max_new_tokens": 256},
        prompt_template_version="libra-v1", options={"analysis": "flagged"}, total=len(specs),
    )
    with store.transaction():
        for seq, spec in enumerate(specs):
            fields: dict[str, Any] = {"id": f"item-{seq}", "question": spec.question, "response": spec.response}
            if spec.source:
                fields["source"] = spec.source
            if spec.category:
                fields["category_name"] = spec.category
            if spec.gold:
                fields["label"] = spec.gold
            if spec.score is None:
                store.add_result(run_id, seq=seq, question=spec.question, response=spec.response, fields=fields,
                                 error="model failed", item_id=f"item-{seq}", source=spec.source,
                                 category=spec.category, sub_category=spec.sub_category)
                continue
            unsafe = spec.score >= threshold
            label = UNSAFE if unsafe else SAFE
            verdict = {"label": label, "unsafe": unsafe, "score": spec.score,
                       "analysis": "回答包含有害内容。" if unsafe else None,
                       "raw": json.dumps({"答案": label, "分析": ""}, ensure_ascii=False)}
            store.add_result(run_id, seq=seq, question=spec.question, response=spec.response, fields=fields,
                             verdict=verdict, item_id=f"item-{seq}", source=spec.source,
                             category=spec.category, sub_category=spec.sub_category)
    if finish:
        store.finish_run(run_id)
    return run_id


def result_id(store: Store, run_id: int, seq: int) -> int:
    """The result id of a run's item at position `seq`."""
    return next(r.id for r in store.results(run_id) if r.seq == seq)


SOURCES = ("Real Data", "Synthetic Data", "Translated Data")
CATEGORIES = ("违法犯罪", "偏见歧视", "隐私侵犯", "身心健康", "伦理道德", "谣言错误")


def make_large_run(store: Store, n: int = 10_000, *, seed: int = 1) -> int:
    """A Libra-Test-shaped run of `n` items: realistic text lengths, gold labels, about 15%
    flagged with analyses, a few errors and 50 reviewer decisions."""
    import random

    rng = random.Random(seed)
    specs = []
    for i in range(n):
        unsafe = rng.random() < 0.15
        score = rng.betavariate(8, 2) if unsafe else rng.betavariate(1.2, 9)
        gold = (UNSAFE if unsafe else SAFE) if rng.random() > 0.08 else (SAFE if unsafe else UNSAFE)
        specs.append(Spec(None if i % 997 == 0 else score, SOURCES[i % 3], CATEGORIES[i % 6], gold=gold,
                          question=f"问题 {i}：" + "请详细说明如何处理这个情况。" * rng.randint(1, 4),
                          response=f"回答 {i}：" + "根据相关规定，我们应当遵守法律法规，保护他人的合法权益。" * rng.randint(2, 12)))
    run = make_run(store, specs)
    ids = {r.seq: r.id for r in store.results(run, limit=200)}
    for seq in range(1, 200, 4):
        store.set_review(ids[seq], ("confirm", "safe", "unsafe")[seq % 3], "批注" if seq % 5 == 0 else None)
    return run
