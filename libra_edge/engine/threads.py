"""The one thread policy: how many CPU threads llama.cpp runs, and how they wait for each other.

llama-cpp-python builds llama.cpp with OpenMP (libgomp). Between the steps of a decode
each thread waits at a barrier for the others; libgomp's default is to spin there for
about 300,000 rounds (milliseconds) before sleeping. On a quiet machine that is fastest.
On a busy one, where another process holds a core, the sibling a thread waits for is not
running, and the waiting thread burns its own time slice spinning for it, at every one of
the hundreds of barriers of a decode: the measured collapse was 11x slower beside one
other CPU-bound process on 2 cores. libgomp reads its wait policy once, from the
environment, when it is loaded; so `llama.lib()` loads llama.cpp inside
`wait_policy_while_loading()`, and the user's own `OMP_WAIT_POLICY`/`GOMP_SPINCOUNT` always win.

The thread count never changes a score (llama.cpp splits the work by rows, whatever the
count; `tests/test_reproducible.py` and `tests/test_threads.py` check it), so the policy
is free to follow the machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass

# libgomp's variables; when the user sets either, libra-edge sets neither.
WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
SPIN_COUNT_ENV = "GOMP_SPINCOUNT"
# Rounds a waiting OpenMP thread spins before it sleeps: about 10 microseconds (libgomp's
# default, 300,000, is milliseconds). Long enough to catch a sibling that is running (on a
# quiet machine the threads of a step finish microseconds apart, and a sleep-and-wake costs
# tens of microseconds), short enough not to burn a time slice on one that is not. Measured
# against 300,000, 10,000, 0 (OMP_WAIT_POLICY=PASSIVE) and one thread: README, "Busy machine".
SPIN_COUNT = 1_000


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS has no affinity masks
        return max(1, os.cpu_count() or 1)


def physical_cores() -> int | None:
    """Physical cores among the CPUs we may use, where Linux tells them; else None."""
    try:
        allowed = os.sched_getaffinity(0)
        cores: set[tuple[str | None, str]] = set()
        cpu = phys = None
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    cpu, phys = int(value), None
                elif key == "physical id":
                    phys = value
                elif key == "core id" and cpu in allowed:
                    cores.add((phys, value))
    except (OSError, AttributeError, ValueError):
        return None
    return len(cores) or None


def default_threads() -> int:
    """llama.cpp's threads by default: the physical cores we may use (SMT siblings share one)."""
    return physical_cores() or usable_cpus()


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and the reason for it, as `doctor` and `bench` print it."""

    threads: int
    why: str

    def line(self) -> str:
        """One line: `2 threads: ...`."""
        return f"{self.threads} thread{'s' if self.threads != 1 else ''}: {self.why}"


def choose_threads(requested: int | None) -> ThreadChoice:
    """The threads a Guard runs: `requested` when given, else the physical cores."""
    if requested is not None:
        return ThreadChoice(requested, "as asked (--threads)")
    cores = physical_cores()
    if cores is not None:
        return ThreadChoice(cores, f"this machine's physical cores (default; {usable_cpus()} logical CPUs usable)")
    n = usable_cpus()
    return ThreadChoice(n, "the logical CPUs usable (default; physical cores unknown here)")


# ------------------------------------------------------------------ wait policy
_applied: str | None = None  # what wait_policy_while_loading did, once it ran


@contextmanager
def wait_policy_while_loading(environ: MutableMapping[str, str] | None = None) -> Iterator[str]:
    """Set libgomp's spin count while llama.cpp loads, unless the user set the policy.

    Yields what holds, in words. libgomp reads the variables once, when it is loaded, so
    this must wrap the first load of llama.cpp (if something loaded libgomp earlier, the
    words say so and nothing is set). The variable is removed again afterwards: a child
    process (a `libra-edge` started by this one) applies the policy itself, and a user's
    own setting is still told apart from libra-edge's.
    """
    global _applied
    env = os.environ if environ is None else environ
    user = {k: env[k] for k in (WAIT_POLICY_ENV, SPIN_COUNT_ENV) if k in env}
    set_here = False
    if user:
        said = ", ".join(f"{k}={v}" for k, v in user.items())
        what = f"OpenMP threads wait as your environment says ({said})"
    elif libgomp_loaded():
        what = ("OpenMP threads wait as libgomp's default (spin up to 300,000 rounds): it was "
                f"loaded before libra-edge could set {SPIN_COUNT_ENV}")
    else:
        env[SPIN_COUNT_ENV] = str(SPIN_COUNT)
        set_here = True
        what = (f"OpenMP threads spin {SPIN_COUNT:,} rounds at a barrier, then sleep (libra-edge's "
                f"default, {SPIN_COUNT_ENV}={SPIN_COUNT}; libgomp's own, 300,000, stalls a busy machine)")
    try:
        yield what
    finally:
        if set_here:
            env.pop(SPIN_COUNT_ENV, None)
    if environ is None:
        _applied = what


def wait_policy() -> str:
    """How llama.cpp's threads wait in this process (once `llama.lib()` loaded it)."""
    return _applied or "OpenMP's wait policy is set when llama.cpp loads (not loaded yet)"


def libgomp_loaded() -> bool:
    """Whether the system's libgomp (the one llama.cpp links) is in this process already.

    Linux only (False elsewhere). Copies bundled under another name (torch's
    `libgomp-<hash>.so.1`) read the environment at their own load and do not count.
    """
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            return any(line.rstrip().rsplit("/", 1)[-1].startswith("libgomp.so") for line in fh)
    except OSError:
        return False
