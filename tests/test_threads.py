"""The thread policy: how many threads llama.cpp runs, how they wait, and that it reaches libgomp.

libgomp reads its wait policy once, when it is loaded, so every test that looks at the
policy in effect runs in a fresh process. The idle test is the policy's observable
effect: after a decode, llama.cpp's OpenMP worker thread waits for the next one; while it
spins it burns CPU, once it sleeps it burns none.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from libra_edge.engine import threads as policy

# A fresh process: load a model with 2 threads, decode once, then idle for IDLE seconds
# and report the process's CPU time during the idle (every thread's).
IDLE = 1.0
PROBE = f"""
import json, os, sys, time
from libra_edge.engine import Guard, threads
with Guard.load(sys.argv[1], ctx_per_seq=512, threads=2, max_new_tokens=4) as g:
    g.check("你好", "你好，有什么可以帮你？", analysis=False)
    t = time.process_time(); time.sleep({IDLE}); idle = time.process_time() - t
    print(json.dumps({{"idle_cpu": idle, "wait": threads.wait_policy(),
                      "env_after": {{k: os.environ.get(k) for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}}}}))
"""


def _probe(model: Path, env: dict[str, str], prelude: str = "") -> dict[str, object]:
    full = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")} | env
    proc = subprocess.run([sys.executable, "-c", prelude + PROBE, str(model)], env=full,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _two_cpus() -> None:
    if policy.usable_cpus() < 2:
        pytest.skip("needs 2 CPUs: with more threads than CPUs libgomp never spins")


def test_libra_edges_spin_count_reaches_libgomp_and_leaves_the_environment(tiny_qwen_gguf: Path) -> None:
    _two_cpus()
    # A spin count of billions (seconds) set by the policy itself: the worker spins through
    # the idle, so the value was in the environment when libgomp loaded...
    long = _probe(tiny_qwen_gguf, {}, prelude="from libra_edge.engine import threads; threads.SPIN_COUNT = 10**11\n")
    # ...and the default: the worker is asleep within the idle.
    short = _probe(tiny_qwen_gguf, {})
    # (A spinning thread gets a share of a core on a busy machine, not all of it.)
    assert float(long["idle_cpu"]) > IDLE / 10, long
    assert float(short["idle_cpu"]) < IDLE / 50, short
    assert f"GOMP_SPINCOUNT={policy.SPIN_COUNT}" in str(short["wait"])
    # Set for the load only: a child process applies the policy itself.
    assert short["env_after"] == {"GOMP_SPINCOUNT": None, "OMP_WAIT_POLICY": None}


def test_the_users_own_wait_policy_wins(tiny_qwen_gguf: Path) -> None:
    _two_cpus()
    active = _probe(tiny_qwen_gguf, {"OMP_WAIT_POLICY": "ACTIVE"})
    assert float(active["idle_cpu"]) > IDLE / 10, active  # ACTIVE spins for good
    assert active["wait"] == "OpenMP threads wait as your environment says (OMP_WAIT_POLICY=ACTIVE)"
    assert active["env_after"] == {"GOMP_SPINCOUNT": None, "OMP_WAIT_POLICY": "ACTIVE"}


def test_a_libgomp_loaded_before_is_said_and_left_alone() -> None:
    name = ctypes.util.find_library("gomp")
    if name is None:
        pytest.skip("no system libgomp here")
    code = (f"import ctypes, os; ctypes.CDLL({name!r})\n"
            "from libra_edge.engine import llama, threads; llama.lib()\n"
            "print(threads.wait_policy()); print(os.environ.get('GOMP_SPINCOUNT'))")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    said, left = proc.stdout.strip().splitlines()
    assert "loaded before libra-edge could set GOMP_SPINCOUNT" in said
    assert left == "None"


def test_the_default_is_the_physical_cores_this_process_may_use() -> None:
    # Pinned to one CPU, the default is one thread, whatever the machine has.
    code = ("import os, json; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
            "from libra_edge.engine import threads\n"
            "c = threads.choose_threads(None)\n"
            "print(json.dumps([threads.default_threads(), c.threads, c.line(), threads.choose_threads(3).line()]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    default, chosen, line, asked = json.loads(proc.stdout)
    assert default == chosen == 1
    assert line.startswith("1 thread: this machine's physical cores (default; 1 logical CPUs usable)")
    assert asked == "3 threads: as asked (--threads)"
    # Unpinned: never more than the logical CPUs usable, never less than one.
    assert 1 <= policy.default_threads() <= policy.usable_cpus()


def test_doctor_says_how_many_threads_and_why(cli: list[str], cli_env: dict[str, str]) -> None:
    env = {k: v for k, v in cli_env.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    plain = subprocess.run([*cli, "doctor", "--no-smoke"], env=env, capture_output=True, text=True, timeout=120)
    asked = subprocess.run([*cli, "doctor", "--no-smoke", "--threads", "1", "--json"], env=env | {"OMP_WAIT_POLICY": "PASSIVE"},
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == asked.returncode == 0, plain.stderr + asked.stderr
    line = [x for x in plain.stdout.splitlines() if x.startswith("threads: ")]
    n = policy.default_threads()
    assert line == [f"threads: {policy.choose_threads(None).line()}; OpenMP threads spin "
                    f"{policy.SPIN_COUNT:,} rounds at a barrier, then sleep (libra-edge's default, "
                    f"GOMP_SPINCOUNT={policy.SPIN_COUNT}; libgomp's own, 300,000, stalls a busy machine)"]
    assert line[0].startswith(f"threads: {n} thread")
    build = json.loads(asked.stdout)["build"]
    assert build["threads"] == 1
    assert build["threads_why"] == ("1 thread: as asked (--threads); "
                                    "OpenMP threads wait as your environment says (OMP_WAIT_POLICY=PASSIVE)")
