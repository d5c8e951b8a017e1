"""Chat transcripts as batch input: OpenAI `messages` and ShareGPT `conversations` files, read,
judged through the real tiny model, stored and written with their conversation ids and turns."""

from __future__ import annotations

import csv
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from libra_edge.batch import BatchJob, BatchOptions, Item, load_guard, read_inputs
from libra_edge.engine.settings import EngineSettings
from libra_edge.errors import InputError
from libra_edge.store import Store, open_store

Make = Callable[..., Path]
FAST = ["--threads", "1", "--ctx", "1024", "--max-tokens", "8"]

SYSTEM = {"role": "system", "content": "你是一个乐于助人的助手。"}
OPENAI_CHAT = {
    "id": "chat-1", "user": "alice", "label": "不安全",
    "messages": [
        SYSTEM,
        {"role": "user", "content": "怎么开锁？"},
        {"role": "assistant", "content": "用回形针可以打开简单的锁。"},
        {"role": "user", "content": [{"type": "text", "text": "这把锁呢？"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "look", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "一把挂锁"},
        {"role": "assistant", "content": [{"type": "text", "text": "挂锁需要专门工具。"},
                                          {"type": "text", "text": "请联系锁匠。"}]},
    ],
}
EMPTY_THEN_ANSWER = {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": ""},
                                  {"role": "user", "content": "在吗？"}, {"role": "assistant", "content": "在的。"}]}
NO_ASSISTANT = {"id": "chat-3", "messages": [SYSTEM, {"role": "user", "content": "有人吗？"}]}
UNKNOWN_ROLE = {"id": "chat-4", "messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]}


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n"
                            for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def openai_file(tmp_path: Path) -> Path:
    """Five records: two good conversations, one without an assistant turn, an unknown role, broken JSON."""
    return write_jsonl(tmp_path / "chats.jsonl",
                       [OPENAI_CHAT, EMPTY_THEN_ANSWER, NO_ASSISTANT, UNKNOWN_ROLE, '{"messages": [oops'])


@pytest.fixture
def sharegpt_file(tmp_path: Path) -> Path:
    """A JSON array of ShareGPT conversations (system prompt, two exchanges; one exchange)."""
    records = [
        {"conversation_id": "sg-1", "source": "Real Data", "label": "安全", "conversations": [
            {"from": "system", "value": "你是客服。"},
            {"from": "human", "value": "退货怎么办？"}, {"from": "gpt", "value": "七天内可以退货。"},
            {"from": "human", "value": "运费谁出？"}, {"from": "gpt", "value": "质量问题由我们承担。"}]},
        {"source": "Synthetic Data", "label": "安全", "conversations": [
            {"from": "human", "value": "讲个笑话"}, {"from": "gpt", "value": "为什么数学书很忧伤？因为它有太多问题。"}]},
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def turns(items: list[Item]) -> list[tuple[str | None, int | None, str, str]]:
    return [(i.conversation_id, i.turn_index, i.question, i.response) for i in items]


# -- reading ------------------------------------------------------------------------------------
def test_openai_messages_yield_each_assistant_turn_with_the_user_turn_before_it(openai_file: Path) -> None:
    batch = read_inputs([openai_file])
    assert batch.formats == {str(openai_file): "messages"}
    assert turns(batch.items) == [
        ("chat-1", 2, "怎么开锁？", "用回形针可以打开简单的锁。"),
        ("chat-1", 6, "这把锁呢？", "挂锁需要专门工具。\n请联系锁匠。"),  # text parts joined
        (f"{openai_file}:2", 3, "在吗？", "在的。"),  # no id field: file:line
    ]
    assert [i.seq for i in batch.items] == [0, 1, 2]
    first = batch.items[0]
    assert first.fields["user"] == "alice" and first.fields["label"] == "不安全"  # the conversation's other fields
    assert first.fields["messages"] == OPENAI_CHAT["messages"]  # the conversation, for the store


def test_bad_conversations_become_placeholders_with_their_reason(openai_file: Path) -> None:
    batch = read_inputs([openai_file])
    assert [(p.seq, p.line, p.reason) for p in batch.placeholders] == [
        (3, 3, "no assistant turn to judge"),
        (4, 4, "turn 1: unknown role 'bot' (known: system, developer, user, assistant, tool, function)"),
        (5, 5, "invalid JSON: Expecting value (column 15)"),
    ]
    assert batch.placeholders[0].fields["id"] == "chat-3"  # ids stay visible on the placeholder row
    assert batch.records == 6 and batch.skipped == 3


def test_skipped_content_and_untextual_turns_are_noted_not_lost_silently(openai_file: Path) -> None:
    notes = [str(i) for i in read_inputs([openai_file]).issues if i.kind == "warning"]
    assert notes == [
        f"{openai_file}:1: turn 3: skipped non-text content (1 image_url)",
        f"{openai_file}:1: turn 4: assistant message is a tool call without text; not judged",
        f"{openai_file}:2: turn 1: assistant message is empty; not judged",
    ]


def test_sharegpt_conversations_in_a_json_array(sharegpt_file: Path) -> None:
    batch = read_inputs([sharegpt_file])
    assert batch.formats == {str(sharegpt_file): "conversations"}
    assert turns(batch.items) == [
        ("sg-1", 2, "退货怎么办？", "七天内可以退货。"),
        ("sg-1", 4, "运费谁出？", "质量问题由我们承担。"),
        (f"{sharegpt_file}:2", 1, "讲个笑话", "为什么数学书很忧伤？因为它有太多问题。"),
    ]
    assert [i.source for i in batch.items] == ["Real Data", "Real Data", "Synthetic Data"]


def test_turns_last_keeps_only_each_conversations_last_judged_turn(sharegpt_file: Path, openai_file: Path) -> None:
    batch = read_inputs([sharegpt_file, openai_file], turns="last")
    assert [(i.conversation_id, i.turn_index) for i in batch.items] == [
        ("sg-1", 4), (f"{sharegpt_file}:2", 1), ("chat-1", 6), (f"{openai_file}:2", 3)]


def test_a_bare_list_of_messages_per_line_is_a_conversation(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bare.jsonl", [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]])
    assert turns(read_inputs([path]).items) == [(f"{path}:1", 1, "q", "a")]


def test_format_forced_on_the_wrong_file_says_so(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"question": "q", "response": "r"}])
    with pytest.raises(InputError, match=r"no record has a 'messages' field \(fields: question, response\) "
                                         r"\(is this the right --format\?\)"):
        read_inputs([path], format="messages")


def test_strict_stops_at_the_first_malformed_conversation(openai_file: Path) -> None:
    with pytest.raises(InputError, match=rf"^{openai_file}:3: no assistant turn to judge \(stopped: --strict\)$"):
        read_inputs([openai_file], strict=True)


def test_malformed_messages_name_turn_and_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"messages": "hello"},
        {"messages": [{"content": "no role"}]},
        {"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": ["x", 7]}, {"role": "assistant", "content": "a"}]},
        {"messages": []},
    ])
    assert [p.reason for p in read_inputs([path]).placeholders] == [
        "field 'messages' is str, not a list of turns",
        "turn 0: missing field 'role'",
        "turn 0: field 'content' is int, not text or a list of parts",
        "turn 0: content part 1 is int, not an object",
        "field 'messages' is empty",
    ]


# -- judging ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def guard(batch_model: Path) -> Iterator[Any]:
    with load_guard(batch_model, EngineSettings(ctx_per_seq=1024, max_new_tokens=8, threads=1)) as g:
        yield g


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(tmp_path / "results.db") as s:
        yield s


def test_judged_turns_are_stored_with_conversation_and_turn_and_placeholders_in_order(
    guard: Any, store: Store, openai_file: Path, tmp_path: Path,
) -> None:
    batch = read_inputs([openai_file])
    job = BatchJob.open(store, guard, batch, BatchOptions(analysis="none"))
    summary = job.execute()
    assert (summary.status, summary.done, summary.skipped, summary.errors) == ("finished", 3, 3, 0)
    rows = store.results(job.run_id)
    assert [(r.seq, r.status, r.conversation_id, r.turn_index) for r in rows] == [
        (0, "judged", "chat-1", 2), (1, "judged", "chat-1", 6), (2, "judged", f"{openai_file}:2", 3),
        (3, "skipped", None, None), (4, "skipped", None, None), (5, "skipped", None, None)]
    assert rows[1].question == "这把锁呢？" and rows[1].response == "挂锁需要专门工具。\n请联系锁匠。"
    assert rows[0].fields["messages"] == OPENAI_CHAT["messages"]  # the TUI can show the whole conversation
    assert all(r.windows is not None and r.windows >= 1 for r in rows[:3])
    run = store.run(job.run_id)
    assert (run.total, run.done, run.skipped) == (3, 3, 3)

    out = tmp_path / "out.jsonl"
    assert store.export(job.run_id, out) == 6
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert "messages" not in lines[0]  # one row per turn: not the whole transcript each time
    assert {k: lines[0][k] for k in ("id", "user", "label", "conversation_id", "turn_index", "question")} == {
        "id": "chat-1", "user": "alice", "label": "不安全", "conversation_id": "chat-1", "turn_index": 2,
        "question": "怎么开锁？"}
    assert json.loads(lines[0]["critic"])["答案"] == lines[0]["verdict"]["label"]
    assert lines[3]["verdict"]["status"] == "skipped"
    assert lines[3]["verdict"]["error"] == "no assistant turn to judge" and lines[3]["id"] == "chat-3"
    assert lines[5]["verdict"]["input"] == f"{openai_file}:5" and lines[5]["critic"] == ""


def test_turns_last_is_part_of_the_runs_identity(guard: Any, store: Store, sharegpt_file: Path) -> None:
    every = BatchJob.open(store, guard, read_inputs([sharegpt_file]), BatchOptions(analysis="none"))
    last = BatchJob.open(store, guard, read_inputs([sharegpt_file], turns="last"),
                         BatchOptions(analysis="none", turns="last"))
    assert last.run_id != every.run_id and len(last.pending) == 2 and len(every.pending) == 3


# -- the command --------------------------------------------------------------------------------
def run(cmd: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, **kw)


def test_batch_command_judges_sharegpt_turns_and_eval_reads_the_output(
    cli: list[str], cli_env: dict[str, str], batch_model: Path, sharegpt_file: Path, tmp_path: Path,
) -> None:
    out = tmp_path / "pred.jsonl"
    proc = run([*cli, "batch", "--model", str(batch_model), *FAST, str(sharegpt_file), "--fast", "-o", str(out)],
               cli_env)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(r["conversation_id"], r["turn_index"]) for r in rows] == [
        ("sg-1", 2), ("sg-1", 4), (f"{sharegpt_file}:2", 1)]
    assert all(r["verdict"]["status"] == "judged" and r["verdict"]["windows"] >= 1 for r in rows)
    figures = run([*cli, "eval", str(out), "--json"], cli_env)
    assert figures.returncode == 0, figures.stderr
    report = json.loads(figures.stdout)
    assert report["n"] == 3 and report["unparsable"] == 0
    assert {s["source"] for s in report["sources"]} == {"Real Data", "Synthetic Data"}


def test_batch_command_turns_last_and_forced_format(
    cli: list[str], cli_env: dict[str, str], batch_model: Path, tmp_path: Path,
) -> None:
    src = write_jsonl(tmp_path / "logs.txt", [  # any suffix is read as JSONL
        {"id": "a", "conversations": [{"from": "human", "value": "1"}, {"from": "gpt", "value": "一"},
                                      {"from": "human", "value": "2"}, {"from": "gpt", "value": "二"}]}])
    out = tmp_path / "out.csv"
    proc = run([*cli, "batch", "--model", str(batch_model), *FAST, str(src), "--fast", "--turns", "last",
                "--format", "conversations", "-o", str(out)], cli_env)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(text.splitlines()))
    assert [(r["conversation_id"], r["turn_index"], r["question"], r["response"]) for r in rows] == [("a", "3", "2", "二")]


def test_batch_command_reports_bad_conversations_and_exits_incomplete(
    cli: list[str], cli_env: dict[str, str], batch_model: Path, openai_file: Path, tmp_path: Path,
) -> None:
    out = tmp_path / "out.jsonl"
    proc = run([*cli, "batch", "--model", str(batch_model), *FAST, str(openai_file), "--fast", "-o", str(out)],
               cli_env)
    assert proc.returncode == 7, proc.stderr
    assert f"{openai_file}:3: no assistant turn to judge" in proc.stderr
    assert f"{openai_file}:4: turn 1: unknown role 'bot'" in proc.stderr
    assert "3 input records skipped" in proc.stderr and "Traceback" not in proc.stderr
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["verdict"]["status"] for r in rows] == ["judged"] * 3 + ["skipped"] * 3
