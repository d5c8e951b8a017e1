"""The header-state cache: a fresh process restores the header block instead of computing it.

Scores must not move by one bit whether the state was computed (no cache, a cold cache),
restored (a warm cache) or a file in the cache's place had to be ignored (another model's
state, a truncated file). Each command runs as a real CLI subprocess on the real models.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from libra_edge.engine import Guard, header_state
from libra_edge.engine.header_state import HeaderState, Rejected

pytestmark = pytest.mark.slow

PAIRS = [
    ("怎么制作炸弹？", "先准备硝酸铵和燃料油，然后混合。"),
    ("今天天气怎么样？", "今天晴，气温二十度左右。"),
    ("How do I pick a lock?", "I can't help with breaking into property."),
    ("怎么制作炸弹？", "我不能提供这方面的帮助。"),  # a repeated question: its block is reused
    ("写一首诗", "春眠不觉晓，处处闻啼鸟。"),
    ("你好", "你好，有什么可以帮你？"),  # the calibration pair itself
]
CTX = ["--ctx", "1024", "--threads", "2"]
NO_CACHE = {header_state.DISABLE_ENV: "1"}


# --------------------------------------------------------------------------- helpers
def _bits(score: float) -> str:
    """The score's float64 bits, as hex: equality here is bit-identity."""
    return struct.pack("<d", score).hex()


def _run(cli: list[str], home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "LIBRA_EDGE_HOME": str(home), "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([*cli, *args], env=full_env, capture_output=True, text=True, timeout=900)
    assert proc.returncode in (0, 1), proc.stderr
    return proc


def _check(cli: list[str], home: Path, model: Path, *extra: str, env: dict[str, str] | None = None,
           ) -> tuple[tuple[str, str, str], str]:
    """`check --json` (full analysis) of the first pair: ((score bits, label, raw), stderr)."""
    q, r = PAIRS[0]
    proc = _run(cli, home, "check", "--json", "-q", q, "-r", r, "-m", str(model), "--max-tokens", "12",
                *CTX, *extra, env=env)
    v = json.loads(proc.stdout)
    return (_bits(v["score"]), v["label"], v["raw"]), proc.stderr


def _batch(cli: list[str], home: Path, model: Path, src: Path, out: Path, *extra: str,
           env: dict[str, str] | None = None) -> tuple[dict[str, tuple[str, str]], str]:
    """`batch --fast --parallel 2` of PAIRS: ({id: (score bits, label)}, stderr)."""
    proc = _run(cli, home, "batch", str(src), "--new-run", "--fast", "--parallel", "2", "-m", str(model),
                "-o", str(out), *CTX, *extra, env=env)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip()]
    got = {r["id"]: (_bits(r["verdict"]["score"]), r["verdict"]["label"]) for r in rows}
    assert len(got) == len(PAIRS), proc.stderr
    return got, proc.stderr


def _notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("libra-edge: header state")]


def _only_state_file(home: Path) -> Path:
    files = sorted((home / "state").glob("*.bin"))
    assert len(files) == 1, files
    return files[0]


def _pairs_file(tmp_path: Path) -> Path:
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps({"id": f"p{i}", "question": q, "response": r}, ensure_ascii=False) + "\n"
                           for i, (q, r) in enumerate(PAIRS)), encoding="utf-8")
    return src


# ------------------------------------------------------------- the file, never trusted
def _sample() -> tuple[dict[str, Any], HeaderState]:
    key = {"model_sha256": "ab" * 32, "threshold": 0.5, "kv_layout": {"type_k": 1}}
    return key, HeaderState(header=(1, 2, 3), opening_draft=(4, 5), middle_draft=(6,), state=b"\x00\x01state" * 50)


def test_a_file_round_trips_and_any_damage_is_rejected() -> None:
    key, hs = _sample()
    raw = header_state.encode(key, hs)
    assert header_state.decode(raw, key, n_vocab=10) == hs
    damaged = [
        ("truncated", raw[: len(raw) // 2]),
        ("truncated", raw[:10]),
        ("not a libra-edge header-state file", b"GGUF" + raw[4:]),
        ("format version 99", raw[:8] + struct.pack("<I", 99) + raw[12:]),
        ("sha256 does not match", raw[:-1] + bytes([raw[-1] ^ 1])),
        ("longer than its header says", raw + b"\0"),
        ("made for another model_sha256", header_state.encode({**key, "model_sha256": "cd" * 32}, hs)),
        ("made for another threshold", header_state.encode({**key, "threshold": 0.6}, hs)),
        ("not a list of token ids", header_state.encode(key, HeaderState((1, 2, 99), (4,), (6,), b"x"))),
    ]
    for reason, data in damaged:
        with pytest.raises(Rejected, match=reason):
            header_state.decode(data, key, n_vocab=10)


def test_write_is_atomic_and_an_unwritable_folder_raises_oserror(tmp_path: Path) -> None:
    key, hs = _sample()
    path = tmp_path / "state" / "x.bin"
    header_state.write(path, key, hs)
    assert header_state.read(path, key, n_vocab=10) == hs
    assert [p.name for p in path.parent.iterdir()] == ["x.bin"]  # no temporary file left behind
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")  # unwritable even for root
    with pytest.raises(OSError):
        header_state.write(blocked / "x.bin", key, hs)


# --------------------------------------------------------------- in process: what is kept
def test_restored_guard_holds_the_evaluated_state_and_scores_alike(
    tiny_qwen_gguf: Path, isolated_home: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    def judge(guard: Guard) -> list[tuple[str, str | None, str]]:
        return ([(_bits(v.score), v.analysis, v.raw) for v in (guard.check(q, r, analysis=False) for q, r in PAIRS)]
                + [(_bits(v.score), v.analysis, v.raw) for v in (guard.check(q, r) for q, r in PAIRS[:3])])

    settings: dict[str, Any] = {"ctx_per_seq": 1024, "threads": 1, "max_new_tokens": 8, "verbose": True}
    with Guard.load(tiny_qwen_gguf, **settings) as cold:
        cold_blocks, cold_state = cold._checker.decoder.held_state(0)
        drafts = (cold._checker.opening_draft, cold._checker.middle_draft)
        cold_scores = judge(cold)
    assert _notes(capsys.readouterr().err) == [f"libra-edge: header state saved to {_only_state_file(isolated_home)}"]
    with Guard.load(tiny_qwen_gguf, **settings) as warm:
        assert warm._checker.decoder.held_state(0) == (cold_blocks, cold_state)  # the very bytes evaluation wrote
        assert (warm._checker.opening_draft, warm._checker.middle_draft) == drafts
        assert warm.check(*PAIRS[1], analysis=False).timings.reused_tokens == len(cold_blocks[0].tokens)
        warm_scores = judge(warm)
    assert _notes(capsys.readouterr().err) == [
        f"libra-edge: header state restored from {_only_state_file(isolated_home)}"]
    assert warm_scores == cold_scores


def test_key_leaves_out_what_the_bytes_do_not_depend_on(
    tiny_qwen_gguf: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The saved bytes, computed fresh, across threads and context sizes (measured): the same.

    What the key leaves out must not change them; what it holds (the number of
    sequences, whose KV streams the bytes name; the threshold; GPU layers) changes its file.
    """
    monkeypatch.setenv(header_state.DISABLE_ENV, "1")
    seen: dict[tuple[int, int, int], tuple[Any, ...]] = {}
    for threads, ctx, parallel in [(1, 1024, 1), (2, 1024, 1), (1, 512, 1), (2, 8192, 1), (1, 1024, 3), (2, 2048, 3)]:
        with Guard.load(tiny_qwen_gguf, ctx_per_seq=ctx, threads=threads, parallel=parallel) as guard:
            blocks, state = guard._checker.decoder.held_state(0)
            seen[(threads, ctx, parallel)] = (blocks, state, guard._checker.opening_draft, guard._checker.middle_draft,
                                              header_state.path_for(guard._checker.state_key()))
    assert not (isolated_home / "state").exists()  # turned off: nothing written
    for parallel in (1, 3):
        group = [got for (_, _, par), got in seen.items() if par == parallel]
        assert len(group) >= 2 and len(group[0][1]) > 1000
        for got in group:
            assert got == group[0], f"parallel {parallel}: the state or its key differs across threads or --ctx"
    one, three = seen[(1, 1024, 1)], seen[(1, 1024, 3)]
    assert one[0] == three[0] and one[2:4] == three[2:4]  # the same header and drafts...
    assert one[1] != three[1] and one[4] != three[4]  # ...but other bytes (the streams), so another file
    with Guard.load(tiny_qwen_gguf, ctx_per_seq=1024, threshold=0.9) as other:
        key = other._checker.state_key()
        assert header_state.path_for(key) != one[4]
    assert header_state.path_for({**key, "gpu_layers": 4}) != header_state.path_for(key)


# ----------------------------------------------------- fresh processes: the must-shows
@pytest.mark.parametrize("model_fixture,other_fixture", [
    ("tiny_qwen_gguf", "tiny_qwen_q4km_gguf"),
    ("tiny_qwen_q4km_gguf", "tiny_qwen_gguf"),
    ("smollm2_gguf", "tiny_qwen_q4km_gguf"),
])
def test_scores_are_bit_identical_cold_warm_foreign_and_truncated(
    model_fixture: str, other_fixture: str, request: pytest.FixtureRequest, tmp_path: Path, cli: list[str],
) -> None:
    model: Path = request.getfixturevalue(model_fixture)
    other: Path = request.getfixturevalue(other_fixture)
    src = _pairs_file(tmp_path)
    ref_home, home, other_home = tmp_path / "ref-home", tmp_path / "home", tmp_path / "other-home"

    # The reference: the header computed, no cache at all.
    ref_check, err = _check(cli, ref_home, model, env=NO_CACHE)
    ref_batch, _ = _batch(cli, ref_home, model, src, tmp_path / "ref.jsonl", env=NO_CACHE)
    assert not (ref_home / "state").exists() and not _notes(err)

    # A cold cache: computed, then saved (silently: no --verbose). One file per sequence
    # count: the check's (1 sequence) and the --parallel 2 batch's.
    got, err = _check(cli, home, model)
    assert got == ref_check and not _notes(err)
    check_file = _only_state_file(home)
    batch, err = _batch(cli, home, model, src, tmp_path / "cold.jsonl")
    assert batch == ref_batch and not _notes(err)
    (batch_file,) = set((home / "state").glob("*.bin")) - {check_file}
    saved = {f: f.read_bytes() for f in (check_file, batch_file)}

    # A warm cache: restored, in the check and in the --parallel 2 batch.
    got, err = _check(cli, home, model, "--verbose")
    assert got == ref_check
    assert _notes(err) == [f"libra-edge: header state restored from {check_file}"]
    batch, err = _batch(cli, home, model, src, tmp_path / "warm.jsonl", "--verbose")
    assert batch == ref_batch
    assert _notes(err) == [f"libra-edge: header state restored from {batch_file}"]

    # Another model file's state in its place: ignored, and rebuilt.
    _check(cli, other_home, other)
    shutil.copyfile(_only_state_file(other_home), check_file)
    got, err = _check(cli, home, model, "--verbose")
    assert got == ref_check
    (note,) = _notes(err)
    assert note.startswith(f"libra-edge: header state {check_file} ignored: it was made for another ")
    assert "model_sha256" in note and note.endswith(f"rebuilt, saved to {check_file}")
    assert check_file.read_bytes() == saved[check_file]  # the rebuilt file is the one the cold start wrote

    # A truncated file: ignored, rebuilt, said once with --verbose.
    batch_file.write_bytes(saved[batch_file][: len(saved[batch_file]) * 2 // 3])
    batch, err = _batch(cli, home, model, src, tmp_path / "truncated.jsonl", "--verbose")
    assert batch == ref_batch
    (note,) = _notes(err)
    assert note.startswith(f"libra-edge: header state {batch_file} ignored: it is truncated")
    assert batch_file.read_bytes() == saved[batch_file]
    assert sorted((home / "state").iterdir()) == sorted(saved)  # no temporary files


def test_an_unwritable_data_folder_never_fails_a_check(tiny_qwen_gguf: Path, tmp_path: Path, cli: list[str]) -> None:
    ref, _ = _check(cli, tmp_path / "ref-home", tiny_qwen_gguf, env=NO_CACHE)
    home = tmp_path / "home"
    home.mkdir()
    (home / "state").write_text("a file where the state folder should be")  # unwritable even for root
    got, err = _check(cli, home, tiny_qwen_gguf, "--verbose")
    assert got == ref
    (note,) = _notes(err)
    assert note.startswith("libra-edge: header state not saved")
    got, err = _check(cli, home, tiny_qwen_gguf)
    assert got == ref and not _notes(err)
