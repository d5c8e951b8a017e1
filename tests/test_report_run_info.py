"""`batch --runs --json` and `batch --run-info RUN`: what the store holds about runs, for scripts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from libra_edge.store import open_store
from tests.report_runs import Spec, make_run


def test_runs_json_lists_every_run_with_settings_inputs_and_counts(isolated_home: Path, cli: list[str],
                                                                   cli_env: dict[str, str]) -> None:
    with open_store() as store:
        first = make_run(store, [Spec(0.9), Spec(0.1), Spec(None)], inputs=["/data/a.jsonl"])
        second = make_run(store, [Spec(0.2)], threshold=0.3, finish=False)
    done = subprocess.run([*cli, "batch", "--runs", "--json"], capture_output=True, text=True, env=cli_env)
    assert done.returncode == 0, done.stderr
    runs = json.loads(done.stdout)
    assert [r["id"] for r in runs] == [second, first]
    old = runs[1]
    assert (old["total"], old["done"], old["flagged"], old["errors"], old["remaining"]) == (3, 3, 1, 1, 0)
    assert old["settings"]["threshold"] == 0.5 and old["inputs"] == ["/data/a.jsonl"]
    assert old["model_sha256"] == "ab" * 32 and old["status"] == "finished"
    assert isinstance(old["elapsed_s"], float) and runs[0]["elapsed_s"] is None


def test_run_info_prints_one_run_as_text_or_json(isolated_home: Path, cli: list[str],
                                                 cli_env: dict[str, str]) -> None:
    with open_store() as store:
        run = make_run(store, [Spec(0.9), Spec(0.1)], inputs=["/data/bank.jsonl"])
    text = subprocess.run([*cli, "batch", "--run-info", str(run)], capture_output=True, text=True, env=cli_env)
    assert text.returncode == 0, text.stderr
    lines = dict(line.split(None, 1) for line in text.stdout.splitlines())
    assert lines["model_name"] == "libra-guard-test" and lines["flagged"] == "1"
    assert json.loads(lines["inputs"]) == ["/data/bank.jsonl"]
    as_json = subprocess.run([*cli, "batch", "--run-info", str(run), "--json"], capture_output=True, text=True,
                             env=cli_env)
    record = json.loads(as_json.stdout)
    assert record["id"] == run and record["settings"]["max_new_tokens"] == 256


def test_run_info_of_an_unknown_run_is_a_one_line_error(isolated_home: Path, cli: list[str],
                                                        cli_env: dict[str, str]) -> None:
    done = subprocess.run([*cli, "batch", "--run-info", "42"], capture_output=True, text=True, env=cli_env)
    assert done.returncode == 2
    assert "no run 42" in done.stderr and done.stderr.count("\n") == 1


def test_runs_list_and_info_print_what_the_batch_aliases_print(isolated_home: Path, cli: list[str],
                                                               cli_env: dict[str, str]) -> None:
    with open_store() as store:
        make_run(store, [Spec(0.9), Spec(0.1)], inputs=["/data/a.jsonl"])
        run = make_run(store, [Spec(0.2)], threshold=0.3, finish=False)

    def out(*argv: str) -> str:
        done = subprocess.run([*cli, *argv], capture_output=True, text=True, env=cli_env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = out("runs", "list")
    assert listed == out("batch", "--runs") == out("runs")  # a bare `runs` lists them too
    assert f"{run:>4}  running" in listed and "a.jsonl" in listed
    assert out("runs", "list", "--json") == out("batch", "--runs", "--json")
    assert out("runs", "info", str(run)) == out("batch", "--run-info", str(run))
    assert json.loads(out("runs", "info", str(run), "--json")) == json.loads(out("batch", "--run-info", str(run), "--json"))
    assert json.loads(out("runs", "info", str(run), "--json"))["settings"]["threshold"] == 0.3
    helped = out("runs", "--help")
    assert "examples:" in helped and "batch --runs" in helped and "runs info 7" in helped
