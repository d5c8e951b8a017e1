"""Batch input readers: every format, field mapping, and each kind of bad input (real files)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from libra_edge.batch import FieldMap, Item, processing_order, read_inputs
from libra_edge.errors import InputError

Make = Callable[..., Path]


def pairs(items: list[Item]) -> list[tuple[str, str]]:
    return [(i.question, i.response) for i in items]


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "parquet"])
def test_every_format_reads_the_libra_sample_in_order(
    fmt: str, libra_sample: list[dict[str, Any]], make_input: Make
) -> None:
    path = make_input(f"sample.{fmt}", libra_sample)
    batch = read_inputs([path])
    assert batch.issues == []
    assert pairs(batch.items) == [(r["question"], r["response"]) for r in libra_sample]
    first = batch.items[0]
    assert (first.seq, first.item_id, first.source, first.category, first.sub_category) == (
        0, "dev-000", "Real Data", "偏见歧视", "地域歧视")
    assert first.fields == libra_sample[0]  # every input field, unchanged
    assert [i.seq for i in batch.items] == list(range(24))


def test_line_numbers_point_at_the_record(libra_sample: list[dict[str, Any]], make_input: Make) -> None:
    jsonl = read_inputs([make_input("s.jsonl", libra_sample[:3])])
    csv_ = read_inputs([make_input("s.csv", libra_sample[:3])])
    assert [i.line for i in jsonl.items] == [1, 2, 3]
    assert [i.line for i in csv_.items] == [2, 3, 4]  # line 1 is the header


def test_a_folder_reads_its_files_in_name_order(libra_sample: list[dict[str, Any]], make_input: Make,
                                               tmp_path: Path) -> None:
    make_input("logs/b.csv", libra_sample[8:16])
    make_input("logs/a.jsonl", libra_sample[:8])
    make_input("logs/sub/c.parquet", libra_sample[16:])
    (tmp_path / "logs" / "README.txt").write_text("not data")
    (tmp_path / "logs" / ".hidden.jsonl").write_text("{broken")
    batch = read_inputs([tmp_path / "logs"])
    assert [p.name for p in batch.files] == ["a.jsonl", "b.csv", "c.parquet"]
    assert [i.item_id for i in batch.items] == [r["id"] for r in libra_sample]


def test_several_inputs_number_items_across_files(libra_sample: list[dict[str, Any]], make_input: Make) -> None:
    batch = read_inputs([make_input("a.json", libra_sample[:2]), make_input("b.jsonl", libra_sample[2:5])])
    assert [(i.seq, Path(i.file).name, i.line) for i in batch.items] == [
        (0, "a.json", 1), (1, "a.json", 2), (2, "b.jsonl", 1), (3, "b.jsonl", 2), (4, "b.jsonl", 3)]


def test_field_mapping_reads_other_names(make_input: Make) -> None:
    records = [{"uid": 7, "prompt": "问题一", "answer": "回答一", "label": "安全"}]
    batch = read_inputs([make_input("c.jsonl", records)],
                        FieldMap(question="prompt", response="answer", id="uid"))
    item = batch.items[0]
    assert (item.question, item.response, item.item_id) == ("问题一", "回答一", "7")
    assert item.fields == records[0]


def test_a_field_missing_everywhere_is_a_mapping_error_naming_the_fields(make_input: Make) -> None:
    path = make_input("c.csv", [{"prompt": "q", "answer": "a"}])
    with pytest.raises(InputError) as err:
        read_inputs([path])
    assert str(err.value) == (f"{path}: no record has a 'question' field (fields: prompt, answer) "
                              "(name the question field with --question-field)")


def test_malformed_jsonl_lines_are_reported_and_skipped(make_input: Make, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = {"question": "q", "response": "r"}
    path.write_text("\n".join([json.dumps(good), '{"question": "q", "response": ', json.dumps(good), "[1, 2]",
                               json.dumps({"question": "q"}), json.dumps({"question": "q", "response": None}),
                               ""]) + "\n", encoding="utf-8")
    batch = read_inputs([path])
    assert [i.line for i in batch.items] == [1, 3]
    assert [str(i) for i in batch.issues] == [
        f"{path}:2: invalid JSON: Expecting value (column 31)",
        f"{path}:4: expected a JSON object, got list",
        f"{path}:5: missing field 'response'",
        f"{path}:6: field 'response' is null, not text",
    ]
    assert batch.skipped == 4


def test_strict_stops_at_the_first_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "response": "r"}\nnot json\n', encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{path}:2: invalid JSON: .* \(stopped: --strict\)$"):
        read_inputs([path], strict=True)


def test_an_empty_file_is_a_warning_and_other_files_still_count(make_input: Make, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    batch = read_inputs([empty, make_input("ok.jsonl", [{"question": "q", "response": "r"}])])
    assert [str(i) for i in batch.issues] == [f"{empty}: empty: no records"]
    assert len(batch.items) == 1


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_a_utf8_bom_is_accepted(fmt: str, make_input: Make) -> None:
    path = make_input(f"bom.{fmt}", [{"question": "你好", "response": "世界"}])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    batch = read_inputs([path])
    assert pairs(batch.items) == [("你好", "世界")] and batch.issues == []


def test_a_gb18030_csv_is_refused_with_an_iconv_hint(tmp_path: Path) -> None:
    path = tmp_path / "gbk.csv"
    path.write_bytes("question,response\n怎么做炸弹,不能告诉你\n".encode("gb18030"))
    with pytest.raises(InputError) as err:
        read_inputs([path])
    message = str(err.value)
    assert message.startswith(f"{path}:2: not UTF-8 (byte 0x")
    assert f"iconv -f GB18030 -t UTF-8 {path}" in message


def test_duplicate_ids_warn_and_both_items_are_kept(make_input: Make) -> None:
    path = make_input("d.jsonl", [{"id": "a", "question": "q", "response": "r1"},
                                  {"id": "a", "question": "q", "response": "r2"}])
    batch = read_inputs([path])
    assert [i.response for i in batch.items] == ["r1", "r2"]
    assert [str(i) for i in batch.issues] == [f"{path}:2: duplicate id 'a' (first at {path}:1); both kept"]
    assert batch.skipped == 0


def test_a_one_megabyte_response_is_read_whole_from_csv(make_input: Make) -> None:
    big = "长" * (1 << 20)
    batch = read_inputs([make_input("big.csv", [{"question": "q", "response": big}])])
    assert batch.items[0].response == big


def test_a_json_file_that_is_not_an_array_of_objects(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('"just a string"')
    with pytest.raises(InputError, match="expected a JSON array of objects, got str"):
        read_inputs([path])
    path.write_text('[{"question": "q", "response": "r"},')
    with pytest.raises(InputError, match=rf"{path}:1: invalid JSON"):
        read_inputs([path])


def test_jsonl_saved_as_json_is_read_as_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"question": "q1", "response": "r"}\n{"question": "q2", "response": "r"}\n')
    assert [i.question for i in read_inputs([path]).items] == ["q1", "q2"]


def test_csv_rows_with_the_wrong_number_of_columns_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("question,response\nq1,r1\nq2,r2,extra\nq3,r3\n", encoding="utf-8")
    batch = read_inputs([path])
    assert [i.question for i in batch.items] == ["q1", "q3"]
    assert [str(i) for i in batch.issues] == [f"{path}:3: 3 columns, the header has 2"]


def test_missing_paths_and_empty_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file or folder"):
        read_inputs([tmp_path / "nope.jsonl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="folder has no .json, .jsonl, .csv or .parquet files"):
        read_inputs([tmp_path / "empty"])


def test_an_input_field_named_like_ours_is_warned_about(make_input: Make) -> None:
    path = make_input("p.jsonl", [{"question": "q", "response": "r", "critic": "old"}])
    assert [str(i) for i in read_inputs([path]).issues] == [
        f"{path}: field(s) critic will be replaced by libra-edge's in the output"]


def test_the_digest_changes_with_content_and_mapping(make_input: Make) -> None:
    path = make_input("a.jsonl", [{"question": "q", "response": "r"}])
    first = read_inputs([path]).digest
    assert read_inputs([path]).digest == first
    assert read_inputs([path], FieldMap(id="uid")).digest != first
    make_input("a.jsonl", [{"question": "q", "response": "r2"}])
    assert read_inputs([path]).digest != first


def test_items_sharing_a_question_are_processed_adjacently(make_input: Make) -> None:
    records = [{"question": q, "response": str(n)} for n, q in enumerate("ABACBA")]
    batch = read_inputs([make_input("q.jsonl", records)])
    order = processing_order(batch.items)
    assert [(i.question, i.seq) for i in order] == [("A", 0), ("A", 2), ("A", 5), ("B", 1), ("B", 4), ("C", 3)]


def test_parquet_without_pyarrow_names_the_extra(make_input: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_input("p.parquet", [{"question": "q", "response": "r"}])
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(InputError) as err:
        read_inputs([path])
    assert str(err.value) == f"{path}: reading Parquet needs pyarrow (pip install 'libra-edge[parquet]')"
