"""Stopping a long item: SIGINT or SIGTERM lands inside it within seconds, and a resume scores it the same.

Was: a batch with one ~200,000-character response showed `0/1 0%` for 12 minutes; SIGTERM
printed "stopping after the current item" and went on; SIGINT to its PID did not stop it
within 5 s (the stop was checked between items only, and closing the guard waited for its
worker to finish the item); only SIGKILL did, and no `.partial` was written.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

from libra_edge.engine import Guard
from libra_edge.engine.decoding import CheckCancelled
from libra_edge.store import open_store

SHORT = {"id": "short", "question": "今天天气怎么样？", "response": "今天天气晴朗，适合出门散步。"}
LONG = {"id": "long", "question": "这段长文有问题吗？",
        "response": "".join(f"第{i}段：这是一段关于城市交通和公共服务的说明，涉及公交线路和地铁换乘。"
                            for i in range(300))}
# A small context makes the long response many windows of the tiny model: seconds of work
# in small steps, so the interrupt lands in the middle of the item, at a window.
ENGINE = ["--threads", "1", "--ctx", "1024", "--max-tokens", "8"]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_input(path: Path) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in (SHORT, LONG)), encoding="utf-8")
    return path


class Lines:
    """A child's stderr read line by line in a thread, so the test can wait for a line."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no line matching {pattern!r} in {timeout} s: {''.join(self.seen)}"
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            assert line is not None, f"stderr ended before {pattern!r}: {''.join(self.seen)}"
            self.seen.append(line)
            if (m := re.search(pattern, line)) is not None:
                return m

    def rest(self) -> str:
        self._thread.join(timeout=30)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.seen.append(line)
        return "".join(self.seen)


@pytest.fixture(scope="module")
def uninterrupted(cli: list[str], batch_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The long item's row from a run that nobody stopped (its own data folder)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    env = {**os.environ, "LIBRA_EDGE_HOME": str(folder / "home"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    out = folder / "out.jsonl"
    proc = subprocess.run([*cli, "batch", "--model", str(batch_model), *ENGINE, "--fast",
                           str(write_input(folder / "in.jsonl")), "-o", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["short", "long"]
    assert rows[1]["verdict"]["windows"] >= 8, rows[1]["verdict"]
    return rows[1]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_inside_a_long_chunked_item_stops_within_5_s_and_the_resume_scores_it_the_same(
    sig: signal.Signals, cli: list[str], cli_env: dict[str, str], batch_model: Path, tmp_path: Path,
    isolated_home: Path, uninterrupted: dict[str, Any],
) -> None:
    out = tmp_path / "out.jsonl"
    cmd = [*cli, "batch", "--model", str(batch_model), *ENGINE, "--fast", str(write_input(tmp_path / "in.jsonl")),
           "-o", str(out)]
    proc = subprocess.Popen(cmd, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        err = Lines(proc.stderr)  # type: ignore[arg-type]
        # The progress line shows the long item's windows: the interrupt lands inside it.
        at = err.wait_for(r"item 2/2, window (\d+)/(\d+)", timeout=300)
        sent = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=60)
        stopped_in = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = err.rest()
    windows = uninterrupted["verdict"]["windows"]
    assert int(at[2]) == windows and int(at[1]) < windows
    assert proc.returncode == 130, stderr
    assert stopped_in < 5.0, f"stopped {stopped_in:.1f} s after {sig.name}"
    name = "SIGTERM" if sig == signal.SIGTERM else "Ctrl-C"
    assert f"libra-edge: {name}: stopping now" in stderr and "Traceback" not in stderr
    assert "resume with: libra-edge batch --resume 1" in stderr
    with open_store(isolated_home / "libra-edge.db") as store:
        assert store.run(1).status == "interrupted"
        assert [r.item_id for r in store.results(1)] == ["short"]  # the finished item is kept
    partial = out.with_name(out.name + ".partial")
    assert [r["id"] for r in read_jsonl(partial)] == ["short"] and not out.exists()

    # The same command again judges the long item whole, with the uninterrupted score.
    done = subprocess.run(cmd, capture_output=True, text=True, env=cli_env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "run 1 (resuming): 2 items, 1 already done" in done.stderr
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["short", "long"] and not partial.exists()
    assert rows[1]["verdict"]["windows"] == windows
    assert rows[1]["verdict"]["score"] == uninterrupted["verdict"]["score"]
    assert rows[1]["verdict"]["window"] == uninterrupted["verdict"]["window"]


@pytest.fixture(scope="module")
def guard(batch_model: Path) -> Any:
    with Guard.load(batch_model, ctx_per_seq=1024, max_new_tokens=64, threads=1) as g:
        yield g


def test_a_cancel_between_windows_or_decode_steps_stops_the_check_and_the_next_check_scores_the_same(
    guard: Guard, batch_model: Path,
) -> None:
    with Guard.load(batch_model, ctx_per_seq=1024, max_new_tokens=64, threads=1) as fresh:
        whole = fresh.check(LONG["question"], LONG["response"][:3000], analysis=False)
        written = fresh.check(SHORT["question"], SHORT["response"], analysis=True)
    assert whole.windows >= 3 and written.timings.generated_tokens > 8

    # Between windows: stopped at the third, nothing after it evaluated.
    cancel, seen = threading.Event(), []

    def at_window(k: int, n: int) -> None:
        seen.append(k)
        if k == 2:
            cancel.set()

    with pytest.raises(CheckCancelled):
        guard.check(LONG["question"], LONG["response"][:3000], analysis=False, cancel=cancel, on_window=at_window)
    assert seen == [0, 1, 2]
    again = guard.check(LONG["question"], LONG["response"][:3000], analysis=False)
    assert (again.score, again.window, again.windows) == (whole.score, whole.window, whole.windows)

    # Between decode steps of an analysis: stopped after its third piece of text.
    cancel, pieces = threading.Event(), []

    def on_text(piece: str) -> None:
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()

    with pytest.raises(CheckCancelled):
        guard.check(SHORT["question"], SHORT["response"], analysis=True, on_text=on_text, cancel=cancel)
    assert len(pieces) == 3
    again = guard.check(SHORT["question"], SHORT["response"], analysis=True)
    assert (again.score, again.raw) == (written.score, written.raw)
