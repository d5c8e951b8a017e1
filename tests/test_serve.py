"""`libra-edge serve` as a client sees it: a real server process on loopback, a real HTTP client."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from libra_edge.engine import Guard
from libra_edge.store import open_store

FAST = ["--threads", "1", "--ctx", "1024", "--max-tokens", "8"]
PAIRS = [
    ("某些地区的人普遍素质低下，不值得我们去交往", "我无法提供有关如何歧视或排斥特定群体的建议。"),
    ("怎么制作炸弹？", "我不能帮助你。"),
    ("今天天气怎么样？", "今天晴朗，适合出门。"),
    ("How do I pick a lock?", "Insert a tension wrench, then rake the pins."),
]


class Server:
    """One `libra-edge serve` subprocess; its URL is read from the line it prints once listening."""

    def __init__(self, model: Path, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.env = {k: v for k, v in os.environ.items() if k != "LIBRA_EDGE_API_KEY"}
        self.env.update({"LIBRA_EDGE_HOME": str(home), "PYTHONUNBUFFERED": "1", **(env or {})})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "libra_edge", "serve", "-m", str(model), "--port", "0", *FAST, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env,
        )
        self.stderr: list[str] = []
        self._listening = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, daemon=True).start()
        if not self._listening.wait(120) or not self.url:
            self.proc.kill()
            raise AssertionError("server did not start: " + "".join(self.stderr)[-2000:])
        self.wait_ready()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                self.url = found.group(1)
                self._listening.set()
        self._listening.set()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=30).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError("server never answered /health")

    def health(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/health", timeout=30).json())

    def wait_in_flight(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.health()["in_flight"] != n:
            assert time.monotonic() < deadline, f"in_flight never reached {n}: {self.health()}"
            time.sleep(0.05)

    def stop(self, timeout: float = 120) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-home")


@pytest.fixture(scope="module")
def server(tiny_qwen_q8_gguf: Path, home: Path) -> Iterator[Server]:
    """The shared server: two sequences, fields cut past 4,000 characters."""
    srv = Server(tiny_qwen_q8_gguf, home, "--parallel", "2", "--max-chars", "4000")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def guard(tiny_qwen_q8_gguf: Path) -> Iterator[Guard]:
    """The same model in this process, with the server's verdict settings."""
    with Guard.load(tiny_qwen_q8_gguf, ctx_per_seq=1024, max_new_tokens=8, threads=1) as g:
        yield g


def without_timings(verdict: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in verdict.items() if k != "timings"}


def post(url: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(url, json=body, timeout=300, **kwargs)


# ------------------------------------------------------------------ the service's own queue
def test_a_cancelled_future_gives_its_slot_back(guard: Guard) -> None:
    """`Service.start` (serve/app.py) admits pairs and hands them to the engine; a future
    cancelled while queued, and one that finishes, each give their slot back."""
    from concurrent.futures import wait

    from libra_edge.serve.app import Service, ServeConfig
    from libra_edge.serve.jobs import QueueFull
    from libra_edge.serve.schema import Pair

    service = Service(guard, ServeConfig(queue=4))
    futures = service.start([Pair(f"问题{i}", f"回答{i}") for i in range(4)], analysis=True)
    assert service.admission.held == 4
    with pytest.raises(QueueFull):
        service.start([Pair("q", "r")], analysis=False)  # no room: nothing handed to the engine
    assert futures[-1].cancel()  # one sequence: the last of four is still waiting
    cancelled = [futures[-1], *(f for f in futures[1:-1] if f.cancel())]
    wait([f for f in futures if f not in cancelled])
    deadline = time.monotonic() + 30
    while service.admission.held and time.monotonic() < deadline:  # done callbacks run on the engine's thread
        time.sleep(0.01)
    assert service.admission.held == 0
    assert futures[0].result().label in ("安全", "不安全")


# ---------------------------------------------------------------------------------- /v1/check
@pytest.mark.parametrize("analysis", [False, True], ids=["fast", "full"])
def test_check_answers_exactly_what_guard_check_gives(server: Server, guard: Guard, analysis: bool) -> None:
    for q, r in PAIRS:
        res = post(server.url + "/v1/check", {"question": q, "response": r, "analysis": analysis})
        assert res.status_code == 200, res.text
        expected = guard.check(q, r, analysis=analysis).to_dict()
        assert without_timings(res.json()) == without_timings(expected)
        assert res.json()["score"] == expected["score"]  # float64 through JSON, bit for bit


def test_an_array_of_pairs_is_answered_in_order(server: Server, guard: Guard) -> None:
    body = [{"question": q, "response": r, "analysis": False} for q, r in PAIRS]
    res = post(server.url + "/v1/check", body)
    assert res.status_code == 200, res.text
    got = res.json()
    assert isinstance(got, list) and len(got) == len(PAIRS)
    for (q, r), v in zip(PAIRS, got):
        assert v["score"] == guard.check(q, r, analysis=False).score


def test_a_request_threshold_relabels_from_the_same_score(server: Server) -> None:
    q, r = PAIRS[0]
    plain = post(server.url + "/v1/check", {"question": q, "response": r, "analysis": False}).json()
    for threshold in (0.0, 1.0, plain["score"]):
        got = post(server.url + "/v1/check",
                   {"question": q, "response": r, "analysis": False, "threshold": threshold}).json()
        assert got["score"] == plain["score"]
        assert got["unsafe"] is (plain["score"] >= threshold) and got["threshold"] == threshold
        assert got["label"] == ("不安全" if got["unsafe"] else "安全")
        assert json.loads(got["raw"])["答案"] == got["label"]


def test_a_field_over_max_chars_is_cut_and_marked_truncated(server: Server) -> None:
    res = post(server.url + "/v1/check", {"question": "问", "response": "长" * 9000, "analysis": False})
    assert res.status_code == 200, res.text
    assert res.json()["truncated"] is True


def test_32_concurrent_requests_are_all_answered_like_guard_check(server: Server, guard: Guard) -> None:
    jobs = [(f"问题{i % 5}", f"回答{i}", i % 8 == 0) for i in range(32)]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=600) as client:
            return await asyncio.gather(*(
                client.post(server.url + "/v1/check", json={"question": q, "response": r, "analysis": a})
                for q, r, a in jobs))

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 32
    for (q, r, a), res in zip(jobs, responses):
        v, expected = res.json(), guard.check(q, r, analysis=a)
        assert (v["label"], v["unsafe"], v["score"]) == (expected.label, expected.unsafe, expected.score)
        assert (v["analysis"] is None) is (not a)
    assert server.health()["in_flight"] == 0


def test_streaming_sends_the_analysis_in_pieces_then_the_verdict(server: Server, guard: Guard) -> None:
    q, r = PAIRS[1]
    events = []
    with httpx.stream("POST", server.url + "/v1/check", timeout=300,
                      json={"question": q, "response": r, "stream": True}) as res:
        assert res.status_code == 200
        assert res.headers["content-type"].startswith("text/event-stream")
        for line in res.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    pieces = [e["text"] for e in parsed if e["type"] == "text"]
    verdict = parsed[-1]["verdict"]
    assert parsed[-1]["type"] == "verdict" and len(pieces) >= 2
    assert "".join(pieces) == verdict["analysis"]
    assert verdict["score"] == guard.check(q, r).score


# ---------------------------------------------------------------------------- /v1/moderations
def test_moderations_has_openai_shape_with_the_guard_score(server: Server, guard: Guard) -> None:
    q = PAIRS[0][0]
    res = post(server.url + "/v1/moderations", {"input": [PAIRS[0][1], PAIRS[2][1]], "question": q})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["id"].startswith("modr-") and body["model"] == guard.info.name
    assert len(body["results"]) == 2
    for text, result in zip((PAIRS[0][1], PAIRS[2][1]), body["results"]):
        v = guard.check(q, text, analysis=False)
        assert result["flagged"] is v.unsafe
        assert result["categories"] == {"libra-guard/unsafe": v.unsafe}
        assert result["category_scores"] == {"libra-guard/unsafe": v.score}


def test_moderations_takes_a_single_string_without_question(server: Server, guard: Guard) -> None:
    res = post(server.url + "/v1/moderations", {"input": "你好"})
    assert res.status_code == 200, res.text
    [result] = res.json()["results"]
    assert result["category_scores"]["libra-guard/unsafe"] == guard.check("", "你好", analysis=False).score


def test_the_official_openai_client_reads_moderations(server: Server, guard: Guard) -> None:
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused-on-loopback", max_retries=0)
    resp = client.moderations.create(input=PAIRS[1][1], extra_body={"question": PAIRS[1][0]})
    v = guard.check(*PAIRS[1], analysis=False)
    [result] = resp.results
    assert result.flagged is v.unsafe
    assert result.category_scores.model_dump()["libra-guard/unsafe"] == v.score


# ------------------------------------------------------------------------- health, metrics, models
def test_health_says_the_model_is_loaded_and_the_queue_depth(server: Server, guard: Guard) -> None:
    h = server.health()
    assert h["status"] == "ok" and h["model_loaded"] is True and h["model"] == guard.info.name
    assert h["queue_depth"] == 0 and h["queue_capacity"] == 64


def test_models_lists_the_loaded_model(server: Server, guard: Guard) -> None:
    data = httpx.get(server.url + "/v1/models", timeout=30).json()["data"]
    assert [m["id"] for m in data] == [guard.info.name]
    assert data[0]["sha256"] == guard.model_sha256


def test_metrics_are_prometheus_text_with_requests_latency_queue_and_rate(server: Server) -> None:
    post(server.url + "/v1/check", {"question": "a", "response": "b", "analysis": False})
    res = httpx.get(server.url + "/metrics", timeout=30)
    assert res.headers["content-type"].startswith("text/plain")
    text = res.text
    assert re.search(r'^libra_edge_requests_total\{endpoint="/v1/check",code="200"\} [1-9]', text, re.M)
    assert re.search(r'^libra_edge_request_duration_seconds_bucket\{endpoint="/v1/check",le="\+Inf"\} [1-9]',
                     text, re.M)
    assert re.search(r"^libra_edge_queue_depth 0$", text, re.M)
    rate = re.search(r"^libra_edge_tokens_per_second (\S+)$", text, re.M)
    assert rate and float(rate.group(1)) > 0


# ----------------------------------------------------------------------------- bad requests
@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", "malformed JSON"),
    (b'{"question": "q"}', "field 'response' is missing"),
    (b'{"question": 1, "response": "r"}', "field 'question' is a int, not a string"),
    (b'{"question": "q", "response": "r", "threshold": 2}', "'threshold' must be a number between 0 and 1"),
    (b'[]', "empty array"),
    (b'"text"', "expected a JSON object"),
])
def test_a_malformed_check_gets_422_with_a_one_line_reason(server: Server, body: bytes, reason: str) -> None:
    res = httpx.post(server.url + "/v1/check", content=body, timeout=30,
                     headers={"content-type": "application/json"})
    assert res.status_code == 422
    message = res.json()["error"]["message"]
    assert reason in message and "\n" not in message


def test_a_moderation_without_input_gets_422(server: Server) -> None:
    res = post(server.url + "/v1/moderations", {"model": "x"})
    assert res.status_code == 422 and res.json()["error"]["message"] == "field 'input' is missing"


def test_an_oversized_body_gets_413(server: Server) -> None:
    res = post(server.url + "/v1/check", {"question": "q", "response": "x" * (2 << 20)})
    assert res.status_code == 413
    assert "--max-body" in res.json()["error"]["message"]
    assert server.health()["status"] == "ok"


# ------------------------------------------------------------------------------------ the key
def test_with_a_key_requests_without_it_or_with_a_wrong_one_get_401(tiny_qwen_q8_gguf: Path, home: Path) -> None:
    srv = Server(tiny_qwen_q8_gguf, home, env={"LIBRA_EDGE_API_KEY": "s3cret-key"})
    try:
        body = {"question": "a", "response": "b", "analysis": False}
        assert post(srv.url + "/v1/check", body).status_code == 401
        wrong = post(srv.url + "/v1/check", body, headers={"Authorization": "Bearer s3cret-kez"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
        assert httpx.get(srv.url + "/metrics", timeout=30).status_code == 401
        assert post(srv.url + "/v1/check", body, headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        assert post(srv.url + "/v1/check", body, headers={"X-API-Key": "s3cret-key"}).status_code == 200
        assert httpx.get(srv.url + "/health", timeout=30).status_code == 200  # probes need no key
    finally:
        assert srv.stop() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_non_loopback_host_without_a_key_is_refused_before_binding(cli: list[str], cli_env: dict[str, str]) -> None:
    cli_env.pop("LIBRA_EDGE_API_KEY", None)
    port = free_port()
    res = subprocess.run([*cli, "serve", "-m", "/nonexistent/guard.gguf", "--host", "0.0.0.0", "--port", str(port)],
                         capture_output=True, text=True, env=cli_env, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "0.0.0.0 is not a loopback address" in lines[0] and "LIBRA_EDGE_API_KEY" in lines[0]
    with socket.socket() as s:  # it never took the port
        s.bind(("0.0.0.0", port))


def test_without_the_serve_extra_it_says_what_to_install(cli: list[str], cli_env: dict[str, str],
                                                         tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    (blocked / "starlette").mkdir(parents=True)
    (blocked / "starlette" / "__init__.py").write_text("raise ImportError('starlette is not installed')\n")
    env = {**cli_env, "PYTHONPATH": os.pathsep.join([str(blocked), cli_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    res = subprocess.run([*cli, "serve", "-m", "/nonexistent/guard.gguf"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip() == ("libra-edge: error: `libra-edge serve` needs the serve extra: "
                                  "pip install 'libra-edge[serve]' (starlette and uvicorn)")


def test_serve_help_teaches_with_examples(cli: list[str], cli_env: dict[str, str]) -> None:
    res = subprocess.run([*cli, "serve", "--help"], capture_output=True, text=True, env=cli_env, timeout=60)
    assert res.returncode == 0
    assert "examples:" in res.stdout and "/v1/moderations" in res.stdout and "libra-guard/unsafe" in res.stdout


# ----------------------------------------------------------------- the queue under pressure
SLOW = ["--parallel", "1", "--queue", "2", "--max-tokens", "128"]


@pytest.fixture(scope="module")
def slow_server(tiny_qwen_q8_gguf: Path, home: Path) -> Iterator[Server]:
    """A server whose checks take a while (long analyses) and whose queue holds two pairs."""
    srv = Server(tiny_qwen_q8_gguf, home, *SLOW)
    yield srv
    srv.stop()


def full_pairs(n: int) -> list[dict[str, Any]]:
    return [{"question": f"慢问题{i}", "response": f"慢回答{i}", "analysis": True} for i in range(n)]


def test_a_full_queue_answers_429_with_retry_after(slow_server: Server) -> None:
    holder: dict[str, httpx.Response] = {}
    t = threading.Thread(target=lambda: holder.setdefault("r", post(slow_server.url + "/v1/check", full_pairs(2))))
    t.start()
    slow_server.wait_in_flight(2)
    refused = post(slow_server.url + "/v1/check", {"question": "q", "response": "r", "analysis": False})
    t.join(300)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert "queue is full" in refused.json()["error"]["message"]
    assert holder["r"].status_code == 200 and len(holder["r"].json()) == 2  # the admitted ones finish


def test_a_request_larger_than_the_queue_gets_413(slow_server: Server) -> None:
    res = post(slow_server.url + "/v1/check", full_pairs(3))
    assert res.status_code == 413 and "--queue" in res.json()["error"]["message"]


def test_a_client_that_disconnects_frees_its_slots(slow_server: Server) -> None:
    body = json.dumps(full_pairs(2)).encode()
    host, port = slow_server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        slow_server.wait_in_flight(2)
    # Gone mid-request: the waiting pair is dropped at once, the running one (at most) finishes.
    slow_server.wait_in_flight(0, timeout=120)
    deadline = time.monotonic() + 120
    while slow_server.health()["queue_depth"] != 0:  # the engine let go of them too
        assert time.monotonic() < deadline, slow_server.health()
        time.sleep(0.05)
    res = post(slow_server.url + "/v1/check", {"question": "q", "response": "r", "analysis": False})
    assert res.status_code == 200
    metrics = httpx.get(slow_server.url + "/metrics", timeout=30).text
    assert re.search(r"^libra_edge_cancelled_total [12]$", metrics, re.M)
    assert re.search(r'libra_edge_requests_total\{endpoint="/v1/check",code="499"\} 1', metrics)


def test_sigterm_drains_in_flight_requests_and_logs_them_as_a_serve_run(tiny_qwen_q8_gguf: Path,
                                                                        tmp_path: Path) -> None:
    home = tmp_path / "home"
    srv = Server(tiny_qwen_q8_gguf, home, *SLOW, "--log-results")
    holder: dict[str, httpx.Response] = {}
    t = threading.Thread(target=lambda: holder.setdefault("r", post(srv.url + "/v1/check", full_pairs(2))))
    t.start()
    srv.wait_in_flight(2)
    srv.proc.send_signal(signal.SIGTERM)
    t.join(300)
    assert srv.proc.wait(120) == 0
    res = holder["r"]
    assert res.status_code == 200 and [v["label"] in ("安全", "不安全") for v in res.json()] == [True, True]
    assert "stopped after draining" in "".join(srv.stderr)
    with open_store(home / "libra-edge.db") as store:
        [run] = store.runs()
        assert run.status == "finished" and run.options["kind"] == "serve"
        rows = store.results(run.id)
        assert sorted(r.score for r in rows) == sorted(v["score"] for v in res.json())
        assert {r.question for r in rows} == {"慢问题0", "慢问题1"}


def test_a_serve_run_records_what_a_batch_run_records(tiny_qwen_q8_gguf: Path, tmp_path: Path) -> None:
    """`--log-results` records its run as `batch` does (`batch.identity.record_run`): the tool
    version and the llama.cpp build are in its settings and its node, so its export names them."""
    from libra_edge import __version__
    from libra_edge.engine import llama

    home = tmp_path / "home"
    srv = Server(tiny_qwen_q8_gguf, home, "--log-results")
    try:
        res = post(srv.url + "/v1/check", {"question": "问", "response": "答", "analysis": False, "threshold": 0.25})
        assert res.status_code == 200, res.text
    finally:
        assert srv.stop() == 0
    with open_store(home / "libra-edge.db") as store:
        [run] = store.runs()
        assert run.settings["libra_edge_version"] == __version__
        assert run.settings["build"] == llama.build_features()
        assert run.settings["prompt_template_version"] == run.prompt_template_version
        assert run.model_sha256 == res.json()["model_sha256"]
        [node] = store.run_nodes(run.id)
        assert (node.build, node.items) == (llama.build_features(), 1)
        export = tmp_path / "serve-run.jsonl"
        store.export(run.id, export, format="jsonl")
    [row] = [json.loads(line) for line in export.read_text(encoding="utf-8").splitlines()]
    verdict = row["verdict"]
    assert (verdict["version"], verdict["model_sha256"]) == (__version__, run.model_sha256)
    assert verdict["label"] == res.json()["label"] and row["critic"] == res.json()["raw"]


def test_a_client_that_leaves_a_stream_frees_its_slot(slow_server: Server) -> None:
    with httpx.stream("POST", slow_server.url + "/v1/check", timeout=300,
                      json={"question": "流问题", "response": "流回答", "stream": True}) as res:
        assert res.status_code == 200
        next(line for line in res.iter_lines() if line.startswith("data: "))
    slow_server.wait_in_flight(0, timeout=120)
    assert post(slow_server.url + "/v1/check", {"question": "q", "response": "r", "analysis": False}).status_code == 200


def test_an_unknown_endpoint_gets_a_json_404(server: Server) -> None:
    res = httpx.get(server.url + "/v1/nothing", timeout=30)
    assert res.status_code == 404 and "/v1/nothing" in res.json()["error"]["message"]
    assert httpx.get(server.url + "/v1/check", timeout=30).status_code == 405


def test_real_weights_give_the_same_verdicts_and_analyses_as_guard_check(smollm2_gguf: Path, tmp_path: Path) -> None:
    srv = Server(smollm2_gguf, tmp_path / "home", "--parallel", "2")
    try:
        body = [{"question": q, "response": r} for q, r in PAIRS[:2]]
        res = post(srv.url + "/v1/check", body)
        assert res.status_code == 200, res.text
        single = post(srv.url + "/v1/check", body[0]).json()
    finally:
        assert srv.stop() == 0
    with Guard.load(smollm2_gguf, ctx_per_seq=1024, max_new_tokens=8, threads=1) as g:
        expected = [g.check(q, r) for q, r in PAIRS[:2]]
    for got, v in zip(res.json(), expected):
        assert (got["label"], got["score"]) == (v.label, v.score)
    assert without_timings(single) == without_timings(expected[0].to_dict())  # one at a time: the analysis too
