"""`libra-edge audit ask`: answers collected from a real OpenAI-compatible service, kill -9 safe, with faults.

The service under test is llama-cpp-python's own server (`python -m llama_cpp.server`)
serving the real SmolLM2 weights on 127.0.0.1. A small proxy in the test sits in front of
it: it counts which questions reach the service and injects faults (429, 500, a timeout,
malformed JSON, a 400, a missing API key) where a test asks for them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from libra_edge.audit.refusal import load_rules
from libra_edge.engine import llama as llama_seam
from libra_edge.store import open_store

MODEL_ALIAS = "smol"
SECRET = "sk-test-secret-4f1c9a"
TIMEOUT_S = 15.0
"""The client's timeout in the fault test: well above a real answer's latency on a busy 2-core machine
(seen up to 7 s under load). A real answer slower than this is one more retry, which the test allows."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def service(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on the real SmolLM2 weights: its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf), "--host", "127.0.0.1",
             "--port", str(port), "--model_alias", MODEL_ALIAS, "--n_ctx", "1024", "--verbose", "False"],
            stdout=sink, stderr=subprocess.STDOUT,
            # The portable build's CPU kernels, which llama-cpp-python's own code does not load.
            env={**os.environ, **llama_seam.foreign_process_env()})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


class Proxy:
    """Forwards chat completions to the service; logs each question; injects planned faults."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.asked: list[str] = []
        self.faults: dict[str, list[str]] = {}
        """question -> faults to apply to its next requests, in order (`always500` repeats)."""
        self.require_key: str | None = None
        self.not_found = False
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                question = json.loads(body)["messages"][-1]["content"]
                with proxy.lock:
                    proxy.asked.append(question)
                    plan = proxy.faults.get(question, [])
                    fault = plan[0] if plan else None
                    if plan and fault != "always500":
                        plan.pop(0)
                if proxy.not_found:
                    return self.reply(404, b'{"detail": "Not Found"}')
                if proxy.require_key and self.headers.get("Authorization") != f"Bearer {proxy.require_key}":
                    return self.reply(401, b'{"error": "invalid api key"}')
                if fault == "429":
                    return self.reply(429, b'{"error": "rate limited"}', {"Retry-After": "0"})
                if fault in ("500", "always500"):
                    return self.reply(500, b'{"error": "internal"}')
                if fault == "400":
                    return self.reply(400, b'{"error": "bad request"}')
                if fault == "timeout":
                    time.sleep(TIMEOUT_S + 1)
                    return self.reply(504, b"")
                request = urllib.request.Request(proxy.upstream + self.path, data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=120) as upstream:
                    data = upstream.read()
                if fault == "malformed":
                    data = data[: len(data) // 2]
                if fault and fault.startswith("say:"):  # the service's reply, its text replaced
                    reply = json.loads(data)
                    reply["choices"][0]["message"]["content"] = fault[4:]
                    data = json.dumps(reply, ensure_ascii=False).encode("utf-8")
                self.reply(200, data)

            def reply(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): nothing to answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(service: str) -> Iterator[Proxy]:
    p = Proxy(service)
    yield p
    p.close()


def write_bank(path: Path, n: int) -> list[str]:
    questions = [f"Name a colour. Question {i}." for i in range(n)]
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "category_name": "色情"}, ensure_ascii=False)
                            + "\n" for i, q in enumerate(questions)), encoding="utf-8")
    return questions


def ask_cmd(cli: list[str], bank: Path, out: Path, url: str, *extra: str) -> list[str]:
    return [*cli, "audit", "ask", str(bank), "--endpoint", url, "--model", MODEL_ALIAS, "-o", str(out),
            "--max-tokens", "6", *extra]


def journal(out: Path) -> list[dict[str, Any]]:
    lines = (out.parent / (out.name + ".evidence.jsonl")).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[1:] if line.strip()]


def answered_lines(out: Path) -> int:
    path = out.parent / (out.name + ".evidence.jsonl")
    if not path.exists():
        return 0
    return path.read_bytes().count(b'"status": "answered"')


@pytest.mark.slow
def test_a_run_killed_mid_way_resumes_and_asks_each_question_once(tmp_path: Path, proxy: Proxy, cli: list[str],
                                                                  cli_env: dict[str, str]) -> None:
    bank, out = tmp_path / "bank.jsonl", tmp_path / "answers.jsonl"
    questions = write_bank(bank, 40)
    run = subprocess.Popen(ask_cmd(cli, bank, out, proxy.url, "--concurrency", "4"), env=cli_env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while answered_lines(out) < 10 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(run.pid, signal.SIGKILL)
    run.communicate()
    assert run.returncode == -signal.SIGKILL
    answered_before = {questions[r["seq"]] for r in journal(out) if r["status"] == "answered"}
    assert 10 <= len(answered_before) < 40, "the run was not killed mid-way"
    with proxy.lock:
        proxy.asked.clear()
    done = subprocess.run(ask_cmd(cli, bank, out, proxy.url, "--concurrency", "4", "--resume"), env=cli_env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not answered_before & set(proxy.asked), "an answered question was asked again"
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["question"] for r in records] == questions  # every question once, in bank order
    assert all(isinstance(r["response"], str) and r["category_name"] == "色情" for r in records)
    answered = [r["key"] for r in journal(out) if r["status"] == "answered"]
    assert len(answered) == len(set(answered)) == 40
    meta = json.loads((tmp_path / "answers.jsonl.meta.json").read_text(encoding="utf-8"))
    assert meta["answered"] == 40 and meta["failed"] == [] and meta["request"]["model"] == MODEL_ALIAS


def test_every_answer_is_stored_with_its_evidence_and_feeds_batch(tmp_path: Path, proxy: Proxy, cli: list[str],
                                                                  cli_env: dict[str, str]) -> None:
    bank, out = tmp_path / "bank.jsonl", tmp_path / "answers.jsonl"
    write_bank(bank, 3)
    done = subprocess.run(ask_cmd(cli, bank, out, proxy.url, "--seed", "7", "--system", "Be brief."), env=cli_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    evidence = sorted(journal(out), key=lambda e: e["seq"])  # the journal is in arrival order
    assert len(evidence) == 3
    for record in evidence:
        assert record["request"] == {"model": MODEL_ALIAS, "max_tokens": 6, "temperature": 0.0, "seed": 7,
                                     "system": "Be brief."}
        assert record["started_at"] <= record["finished_at"] and record["latency_s"] > 0
        assert record["finish_reason"] in ("length", "stop")
        assert record["usage"]["completion_tokens"] <= 6
        assert record["raw"]["choices"][0]["message"]["content"] == record["response"]
    from libra_edge.batch import FieldMap, read_inputs

    batch = read_inputs([out], FieldMap())
    assert [i.question for i in batch.items] == [f"Name a colour. Question {i}." for i in range(3)]
    assert [i.response for i in batch.items] == [r["response"] for r in evidence]
    assert batch.items[0].fields["ask"]["finish_reason"] == evidence[0]["finish_reason"]


@pytest.mark.slow
def test_faults_are_retried_and_every_question_ends_answered_or_failed_with_its_reason(
        tmp_path: Path, proxy: Proxy, cli: list[str], cli_env: dict[str, str]) -> None:
    bank, out = tmp_path / "bank.jsonl", tmp_path / "answers.jsonl"
    q = write_bank(bank, 8)
    proxy.faults = {q[0]: ["429"], q[1]: ["500", "500"], q[2]: ["timeout"], q[3]: ["malformed"],
                    q[4]: ["always500"], q[5]: ["400"]}
    # One request at a time: the service answers serially, so a queue would add its wait to the latency.
    cmd = ask_cmd(cli, bank, out, proxy.url, "--timeout", str(TIMEOUT_S), "--retries", "3", "--backoff", "0.05",
                  "--concurrency", "1")
    done = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 7, done.stdout + done.stderr
    meta = json.loads((tmp_path / "answers.jsonl.meta.json").read_text(encoding="utf-8"))
    reasons = {f["where"]: f["reason"] for f in meta["failed"]}
    assert reasons == {f"{bank}:5": 'HTTP 500 ({"error": "internal"}) (4 attempt(s))',
                       f"{bank}:6": 'HTTP 400 ({"error": "bad request"})'}
    answered = [json.loads(line)["question"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert answered == [q[i] for i in (0, 1, 2, 3, 6, 7)]
    # Each injected fault is one failed attempt, in order, then the retry that got the answer.
    injected = {1: ["HTTP 429"], 2: ["HTTP 500", "HTTP 500"], 3: [f"timed out after {TIMEOUT_S:g} s"],
                4: ["malformed reply: not JSON"]}
    by_line = {e["line"]: e for e in journal(out)}
    for line, faults in injected.items():
        errors = [a.get("error", "") for a in by_line[line]["attempts"]]
        # In order; a real answer slower than the timeout on a loaded machine is one more attempt.
        rest = iter(errors)
        assert all(any(e.startswith(f) for e in rest) for f in faults), (line, errors)
        assert by_line[line]["status"] == "answered" and by_line[line]["attempts"][-1]["status"] == 200
    assert proxy.asked.count(q[4]) == 4 and proxy.asked.count(q[5]) == 1  # 400 is not retried
    assert all(proxy.asked.count(q[i]) >= 1 + len(injected[i + 1]) for i in range(4))
    assert f"{bank}:5: HTTP 500" in done.stdout and f"{bank}:6: HTTP 400" in done.stdout
    # The service recovers: --resume asks only the two failed questions.
    proxy.faults = {}
    with proxy.lock:
        proxy.asked.clear()
    again = subprocess.run([*cmd, "--resume"], env=cli_env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert set(proxy.asked) == {q[4], q[5]}
    assert len(out.read_text(encoding="utf-8").splitlines()) == 8


def test_the_api_key_comes_from_the_environment_and_is_never_written(tmp_path: Path, proxy: Proxy, cli: list[str],
                                                                     cli_env: dict[str, str]) -> None:
    bank, out = tmp_path / "bank.jsonl", tmp_path / "answers.jsonl"
    write_bank(bank, 2)
    proxy.require_key = SECRET
    refused = subprocess.run(ask_cmd(cli, bank, out, proxy.url, "--api-key-env", "TEAM_KEY"), env=cli_env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 5
    assert refused.stderr.count("\n") == 1 and "HTTP 401" in refused.stderr and "$TEAM_KEY" in refused.stderr
    env = {**cli_env, "TEAM_KEY": SECRET}
    done = subprocess.run(ask_cmd(cli, bank, out, proxy.url, "--api-key-env", "TEAM_KEY", "--resume"), env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    written = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert SECRET.encode() not in written + done.stdout.encode() + done.stderr.encode()


def test_a_wrong_endpoint_is_one_clear_error(tmp_path: Path, proxy: Proxy, cli: list[str],
                                             cli_env: dict[str, str]) -> None:
    bank, out = tmp_path / "bank.jsonl", tmp_path / "answers.jsonl"
    write_bank(bank, 2)
    proxy.not_found = True
    done = subprocess.run(ask_cmd(cli, bank, out, proxy.url), env=cli_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 5
    assert done.stderr.count("\n") == 1 and "HTTP 404" in done.stderr and "--endpoint" in done.stderr
    again = subprocess.run(ask_cmd(cli, bank, out, proxy.url), env=cli_env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--resume" in again.stderr  # an earlier run's evidence is never overwritten


def test_answers_are_marked_for_refusal_and_keywords_then_judged_by_the_guard(
        tmp_path: Path, proxy: Proxy, cli: list[str], cli_env: dict[str, str], batch_model: Path) -> None:
    bank, out = tmp_path / "bank.jsonl", tmp_path / "answers.jsonl"
    q = write_bank(bank, 3)
    proxy.faults = {q[0]: ["say:抱歉，我不能提供这类信息。"], q[1]: ["say:Here is how to make a bomb at home."]}
    keywords = tmp_path / "kw.txt"
    keywords.write_text("bomb A.1.8\n", encoding="utf-8")
    judged = tmp_path / "judged.jsonl"
    done = subprocess.run(ask_cmd(cli, bank, out, proxy.url, "--keywords", str(keywords), "--judge",
                                  "--guard-model", str(batch_model), "--judge-analysis", "none",
                                  "--judged-output", str(judged), "--guard-option=--threads=1",
                                  "--guard-option=--ctx=1024"),
                          env=cli_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["refusal"]["refused"] for r in records] == [True, False, False]
    assert records[0]["refusal"]["rule"] == "zh-first-person-decline" and records[0]["refusal"]["phrase"] == "我不能提供"
    assert records[1]["keyword_hits"] == [{"keyword": "bomb", "risk": "A.1.8"}] and records[0]["keyword_hits"] == []
    assert f"refused (by {load_rules().version}): 1 of 3 = 33.3%" in done.stdout
    meta = json.loads((tmp_path / "answers.jsonl.meta.json").read_text(encoding="utf-8"))
    assert meta["refusal"]["refused"] == 1 and meta["keywords"]["answers_with_hits"] == 1
    rows = [json.loads(line) for line in judged.read_text(encoding="utf-8").splitlines()]
    assert [r["question"] for r in rows] == q
    assert all(r["verdict"]["label"] in ("安全", "不安全") for r in rows)
    assert [r["refusal"]["refused"] for r in rows] == [True, False, False]  # the marks travel with the answers


def judged_rows(db: Path) -> dict[int, str]:
    """seq -> checked_at of every judged row in the store (read while `audit ask --judge` writes it)."""
    if not db.exists():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return dict(conn.execute("SELECT seq, checked_at FROM results WHERE status = 'judged'").fetchall())
    except sqlite3.OperationalError:  # the schema is being created
        return {}
    finally:
        conn.close()


def judge_cmd(cli: list[str], bank: Path, out: Path, url: str, model: Path, *extra: str) -> list[str]:
    return ask_cmd(cli, bank, out, url, "--concurrency", "4", "--judge", "--guard-model", str(model),
                   "--guard-option=--threads=1", "--guard-option=--ctx=1024", *extra)


@pytest.mark.slow
def test_judge_stores_each_verdict_as_its_answer_arrives_in_a_normal_batch_run(
        tmp_path: Path, proxy: Proxy, cli: list[str], cli_env: dict[str, str], batch_model: Path) -> None:
    from libra_edge import paths

    bank, out = tmp_path / "bank.jsonl", tmp_path / "answers.jsonl"
    questions = write_bank(bank, 40)
    db = paths.database_path()
    run = subprocess.Popen(judge_cmd(cli, bank, out, proxy.url, batch_model, "--judge-analysis", "none"),
                           env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    answered_at_first_verdict = None
    deadline = time.monotonic() + 300
    while run.poll() is None and time.monotonic() < deadline:
        answered = answered_lines(out)
        if judged_rows(db):
            answered_at_first_verdict = answered
            break
        time.sleep(0.02)
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    assert answered_at_first_verdict is not None, "no verdict was stored while the run was asking"
    assert answered_at_first_verdict < 40, "the first verdict was stored only after the last answer"
    with open_store() as store:  # a run of the store like any other: report and the TUI read it
        (job,) = store.runs()
        assert job.status == "finished" and job.total == 40 and job.done == 40
        rows = store.results(job.id)
        assert [r.question for r in rows] == questions and all(r.label in ("安全", "不安全") for r in rows)
        assert all(r.fields["refusal"]["rules"].startswith("libra-edge refusal rules") for r in rows)
    judged = [json.loads(line) for line in (tmp_path / "answers.judged.jsonl").read_text("utf-8").splitlines()]
    answers = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["question"] for r in judged] == questions
    assert [r["response"] for r in judged] == [a["response"] for a in answers]  # the answers OUT holds
    assert f"judged: run {job.id}: 40 of 40 questions judged (0 before, 40 now" in stdout
    report = subprocess.run([*cli, "report", str(job.id), "--format", "md"], env=cli_env, capture_output=True,
                            text=True, timeout=120)
    assert report.returncode in (0, 1) and "libra-edge-integrity" in report.stdout, report.stderr


@pytest.mark.slow
def test_judge_killed_mid_way_resumes_without_asking_or_judging_anything_twice(
        tmp_path: Path, proxy: Proxy, cli: list[str], cli_env: dict[str, str], batch_model: Path) -> None:
    from libra_edge import paths

    bank, out = tmp_path / "bank.jsonl", tmp_path / "answers.jsonl"
    questions = write_bank(bank, 40)
    db = paths.database_path()
    # Analyses make the judge slower than the service: answers wait to be judged when the kill comes.
    cmd = judge_cmd(cli, bank, out, proxy.url, batch_model, "--judge-analysis", "all",
                    "--guard-option=--max-tokens=48")
    run = subprocess.Popen(cmd, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while run.poll() is None and time.monotonic() < deadline:
        answered, judged = answered_lines(out), len(judged_rows(db))
        if judged >= 1 and answered - judged >= 2 and 10 <= answered < 40:
            break
        time.sleep(0.02)
    os.kill(run.pid, signal.SIGKILL)
    run.communicate()
    assert run.returncode == -signal.SIGKILL
    answered_before = {r["seq"] for r in journal(out) if r["status"] == "answered"}
    judged_before = judged_rows(db)
    assert judged_before and set(judged_before) < answered_before and len(answered_before) < 40, (
        "the kill did not come with answers both judged and waiting")
    with open_store() as store:
        (job,) = store.runs()
        assert job.status == "interrupted"  # its process is gone
    time.sleep(1.1)  # a verdict judged again would be stored with a later time (seconds)
    with proxy.lock:
        proxy.asked.clear()
    done = subprocess.run([*cmd, "--resume"], env=cli_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert not {questions[s] for s in answered_before} & set(proxy.asked), "an answered question was asked again"
    assert len(proxy.asked) == 40 - len(answered_before)
    after = judged_rows(db)
    assert set(after) == set(range(40))
    assert {s: after[s] for s in judged_before} == judged_before, "a judged answer was judged again"
    waiting = len(answered_before) - len(judged_before)
    assert (f"judged: run {job.id}: 40 of 40 questions judged ({len(judged_before)} before, "
            f"{40 - len(judged_before)} now, {waiting} of them answered before)") in done.stdout
    with open_store() as store:
        rows = store.results(job.id)
        assert store.run(job.id).status == "finished" and [r.question for r in rows] == questions
        assert all(r.analysis for r in rows)
    answers = {json.loads(line)["question"]: json.loads(line)["response"]
               for line in out.read_text(encoding="utf-8").splitlines()}
    assert [r.response for r in rows] == [answers[q] for q in questions]  # each verdict is of OUT's answer
