"""`libra-edge audit sample`: reproducible, stratified samples with their provenance recorded."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from libra_edge.audit.sample import allocate, draw, draw_key, sidecar_path, write_sample
from libra_edge.errors import LibraError

CATEGORIES = {"违法犯罪": 60, "偏见歧视": 30, "隐私": 7, "其他": 3}


@pytest.fixture
def bank(tmp_path: Path) -> Path:
    """A 100-record test bank in two files (JSONL and a JSON array), four categories."""
    records = [{"id": f"q{i}", "question": f"问题{i}", "response": f"回答{i}", "category_name": c}
               for i, c in enumerate(c for c, k in CATEGORIES.items() for _ in range(k))]
    folder = tmp_path / "bank"
    folder.mkdir()
    (folder / "a.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[::2]),
                                    encoding="utf-8")
    (folder / "b.json").write_text(json.dumps(records[1::2], ensure_ascii=False), encoding="utf-8")
    return folder


def ids(sample_records: list[dict[str, object]]) -> list[object]:
    return [r["id"] for r in sample_records]


def test_same_seed_and_inputs_draw_the_identical_sample(bank: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "s1.jsonl", tmp_path / "s2.jsonl"
    write_sample(draw([bank], 20, seed=2025), first)
    write_sample(draw([bank], 20, seed=2025), second)
    assert first.read_bytes() == second.read_bytes()
    assert len(first.read_text(encoding="utf-8").splitlines()) == 20


def test_another_seed_draws_another_sample(bank: Path) -> None:
    assert ids(draw([bank], 20, seed=1).records) != ids(draw([bank], 20, seed=2).records)


def test_the_sample_depends_on_contents_not_file_names(bank: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "x.jsonl").write_bytes((bank / "a.jsonl").read_bytes())
    (moved / "y.json").write_bytes((bank / "b.json").read_bytes())
    assert ids(draw([moved], 15, seed="s").records) == ids(draw([bank], 15, seed="s").records)


def test_records_are_written_unchanged_in_input_order(bank: Path) -> None:
    sample = draw([bank], 10, seed=3)
    a = [json.loads(line) for line in (bank / "a.jsonl").read_text(encoding="utf-8").splitlines()]
    b = json.loads((bank / "b.json").read_text(encoding="utf-8"))
    population = a + b
    positions = [population.index(r) for r in sample.records]
    assert positions == sorted(positions)


def test_the_draw_is_the_documented_key_order(bank: Path) -> None:
    # Redrawn by hand from the documented rule: smallest sha256 keys.
    files = sorted(bank.iterdir())
    keyed = []
    for path in files:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if path.suffix == ".jsonl":
            rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
        else:
            rows = json.loads(path.read_text(encoding="utf-8"))
        keyed += [(draw_key("7", digest, i), row["id"]) for i, row in enumerate(rows)]
    expected = {rid for _, rid in sorted(keyed)[:12]}
    assert set(ids(draw([bank], 12, seed=7).records)) == expected


def test_stratum_counts_are_exact_and_proportional(bank: Path) -> None:
    sample = draw([bank], 20, seed=11, by="category_name")
    counts = {s.value: (s.population, s.drawn) for s in sample.strata}
    # 20 x (60, 30, 7, 3)/100 = 12, 6, 1.4, 0.6 -> remainders give the last one to 其他 (0.6 > 0.4).
    assert counts == {"违法犯罪": (60, 12), "偏见歧视": (30, 6), "隐私": (7, 1), "其他": (3, 1)}
    drawn = {}
    for r in sample.records:
        drawn[r["category_name"]] = drawn.get(r["category_name"], 0) + 1
    assert drawn == {k: v[1] for k, v in counts.items()}


def test_equal_allocation_notes_a_stratum_smaller_than_its_share(bank: Path) -> None:
    sample = draw([bank], 40, seed=5, by="category_name", allocation="equal")
    counts = {s.value: s.drawn for s in sample.strata}
    # Share 10 each; 隐私 (7) and 其他 (3) give all they have; the other two make up 10.
    assert counts == {"违法犯罪": 15, "偏见歧视": 15, "隐私": 7, "其他": 3}
    assert sum(counts.values()) == 40
    assert any("隐私" in n and "fewer than its equal share" in n for n in sample.notes)
    assert any("其他" in n for n in sample.notes)


def test_n_larger_than_the_inputs_takes_everything_with_a_note(bank: Path) -> None:
    sample = draw([bank], 500, seed=1, by="category_name")
    assert sample.n_drawn == 100
    assert {s.value: s.drawn for s in sample.strata} == CATEGORIES
    assert sample.notes == ["asked for 500 records but the inputs hold 100: all of them are taken"]


def test_allocation_sums_to_n_and_never_exceeds_a_stratum() -> None:
    sizes = {"a": 1, "b": 2, "c": 50, "d": 947}
    for n in (1, 7, 100, 999, 1000, 5000):
        for how in ("proportional", "equal"):
            alloc = allocate(sizes, n, how)
            assert sum(alloc.values()) == min(n, 1000)
            assert all(alloc[k] <= sizes[k] for k in sizes)


def test_the_sidecar_records_seed_inputs_strata_and_the_sample_digest(bank: Path, tmp_path: Path) -> None:
    out = tmp_path / "sample.jsonl"
    side = write_sample(draw([bank], 10, seed="audit-2025", by="category_name"), out)
    assert side == sidecar_path(out) == tmp_path / "sample.jsonl.meta.json"
    meta = json.loads(side.read_text(encoding="utf-8"))
    assert meta["seed"] == "audit-2025" and meta["by"] == "category_name" and meta["n_drawn"] == 10
    assert [Path(i["path"]).name for i in meta["inputs"]] == ["a.jsonl", "b.json"]
    assert meta["inputs"][0]["sha256"] == hashlib.sha256((bank / "a.jsonl").read_bytes()).hexdigest()
    assert meta["output"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert sum(s["drawn"] for s in meta["strata"]) == 10


def test_bad_requests_are_one_line_errors(bank: Path) -> None:
    with pytest.raises(LibraError, match="at least 1"):
        draw([bank], 0, seed=1)
    with pytest.raises(LibraError, match="no record has a field 'topic'"):
        draw([bank], 5, seed=1, by="topic")


def test_the_command_prints_stratum_counts_and_redraws_identically(
        bank: Path, tmp_path: Path, cli: list[str], cli_env: dict[str, str]) -> None:
    outs = []
    for name in ("one.jsonl", "two.jsonl"):
        out = tmp_path / name
        done = subprocess.run([*cli, "audit", "sample", str(bank), "-n", "20", "--by", "category_name",
                               "--seed", "9", "-o", str(out)], capture_output=True, text=True, env=cli_env)
        assert done.returncode == 0, done.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert "drew 20 of 100 records (seed 9)" in done.stdout
    assert "违法犯罪" in done.stdout and "12" in done.stdout


def test_the_command_explains_a_missing_input_in_one_line(tmp_path: Path, cli: list[str],
                                                           cli_env: dict[str, str]) -> None:
    done = subprocess.run([*cli, "audit", "sample", str(tmp_path / "nope.jsonl"), "-n", "5", "-o",
                           str(tmp_path / "s.jsonl")], capture_output=True, text=True, env=cli_env)
    assert done.returncode == 4
    assert done.stderr.count("\n") == 1 and "no such file" in done.stderr
