"""`check` says what the user waited for, load included and in parts; starting a command is cheap.

Was: `check` printed "(43.62 s)" where the command took 71.5 s: only the check itself,
not the 20-25 s of loading before it; and registering the commands (at every start,
`--help` included) imported the engine, numpy and jinja2.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

PAIR = json.dumps({"question": "今天天气怎么样？", "response": "今天天气晴朗，适合出门散步。"}, ensure_ascii=False)
ENGINE = ["--threads", "1", "--ctx", "1024", "--max-tokens", "8"]


def timed_check(cli: list[str], env: dict[str, str], model: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t = time.monotonic()
    proc = subprocess.run([*cli, "check", "--model", str(model), *ENGINE, *extra], input=PAIR,
                          capture_output=True, text=True, env=env, timeout=300)
    return proc, time.monotonic() - t


def test_check_prints_the_time_the_user_waited_with_its_parts(cli: list[str], cli_env: dict[str, str],
                                                              batch_model: Path) -> None:
    proc, took = timed_check(cli, cli_env, batch_model, "--fast")
    assert proc.returncode in (0, 1), proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"\((\d+\.\d) s: start (\d+\.\d) s, load (\d+\.\d) s, judge (\d+\.\d) s; "
                     r"\d+ prompt tokens, \d+ reused\)", last)
    assert m is not None, last
    wall, start, load, judge = (float(g) for g in m.groups())
    # The parts add up (to rounding), and the whole is what the process took, less its exit.
    assert abs(wall - (start + load + judge)) <= 0.25, last
    assert 0.6 * took <= wall <= took + 0.1, (last, took)
    assert load > judge  # a fast check of a short pair is quicker than loading the model


def test_check_json_timings_hold_the_same_parts(cli: list[str], cli_env: dict[str, str], batch_model: Path) -> None:
    proc, took = timed_check(cli, cli_env, batch_model, "--fast", "--json")
    assert proc.returncode in (0, 1), proc.stderr
    timings = json.loads(proc.stdout)["timings"]
    for key in ("start_s", "load_s", "judge_s", "wall_s", "total_s", "prefill_s", "prompt_tokens"):
        assert key in timings, timings
    assert timings["start_s"] is not None and timings["start_s"] > 0  # Python's own start-up counts too
    assert abs(timings["wall_s"] - (timings["start_s"] + timings["load_s"] + timings["judge_s"])) < 0.05
    assert 0.6 * took <= timings["wall_s"] <= took + 0.1, (timings, took)
    assert timings["judge_s"] >= timings["total_s"]  # the check's own time is inside what was waited for


def test_starting_any_command_imports_neither_the_engine_nor_numpy() -> None:
    # Every command registers every subcommand at start; `batch`'s option choices used to
    # import the engine package (numpy, jinja2): 0.8 s of each start, `--help` included.
    probe = ("import sys\n"
             "from libra_edge.cli.main import build_parser\n"
             "build_parser()\n"
             "print(sorted(m for m in ('numpy', 'jinja2', 'libra_edge.engine.guard', 'libra_edge.batch.runner',"
             " 'llama_cpp') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    # and the lazy packages still give their names
    names = subprocess.run([sys.executable, "-c", "from libra_edge.engine import Guard, EngineSettings\n"
                            "from libra_edge.batch import BatchJob, read_inputs, INPUT_FORMATS\n"
                            "print(Guard.__name__, EngineSettings.__name__, BatchJob.__name__, INPUT_FORMATS[0])"],
                           capture_output=True, text=True, timeout=60)
    assert names.stdout.split() == ["Guard", "EngineSettings", "BatchJob", "auto"], names.stderr
