"""Collect the answers of the service under test through its OpenAI-compatible API (`audit ask`).

Each question of a bank is sent to `/v1/chat/completions` (vLLM, llama.cpp's server, an
internal gateway) by a small pool of threads over the standard library's HTTP client: no
web stack in the core. Every outcome is appended to an evidence journal (`OUT.evidence.jsonl`,
one JSON line per answered or failed question, written whole and fsync'd) with the request
parameters, timestamps, latency, finish reason, token usage and the raw reply, so a run
killed at any moment (kill -9 included) resumes from it: an answered question is never
asked again; a failed one is asked again on resume. When the run ends, OUT gets the answered
records in bank order (each bank record unchanged plus `response` and `ask`), ready for
`libra-edge batch`, and `OUT.meta.json` the provenance and every failure with its reason.
Each answered record is also marked: `refusal` (the refusal rules' decision and evidence,
`audit.refusal`) and, with a keyword library, `keyword_hits` (`audit.keywords`).

Retries: 429, 5xx, timeouts, refused connections and malformed replies are retried with
exponential backoff (a 429's Retry-After is honoured); 401/403/404 stop the run with one
line (nothing more can succeed); other 4xx fail that question. The API key is read from an
environment variable and sent as a bearer token; it is never printed or written.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from libra_edge import __version__
from libra_edge.audit.keywords import KeywordLibrary
from libra_edge.audit.refusal import RefusalRules
from libra_edge.errors import InputError, LibraError, NetworkError

ASK_VERSION = 1
MAX_BACKOFF_S = 30.0
EVIDENCE_SUFFIX = ".evidence.jsonl"
META_SUFFIX = ".meta.json"


def now() -> str:
    """UTC time with milliseconds, as every evidence timestamp is written."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class AskOptions:
    """Where and how to ask: endpoint, model, generation parameters, limits."""

    endpoint: str
    model: str
    max_tokens: int | None = 512
    temperature: float | None = 0.0
    top_p: float | None = None
    seed: int | None = None
    system: str | None = None
    concurrency: int = 4
    timeout_s: float = 120.0
    retries: int = 3
    backoff_s: float = 1.0
    api_key_env: str = "OPENAI_API_KEY"
    question_field: str = "question"

    @property
    def url(self) -> str:
        """The chat-completions URL: the endpoint as given when it names the route, else `/v1/...` added."""
        base = self.endpoint.rstrip("/")
        if base.endswith("/chat/completions"):
            return base
        return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")

    def parameters(self) -> dict[str, Any]:
        """The request parameters sent with every question (recorded as evidence; no key)."""
        params: dict[str, Any] = {"model": self.model}
        for name, value in (("max_tokens", self.max_tokens), ("temperature", self.temperature),
                            ("top_p", self.top_p), ("seed", self.seed)):
            if value is not None:
                params[name] = value
        if self.system is not None:
            params["system"] = self.system
        return params


@dataclass(frozen=True)
class Question:
    """One bank record to ask, with its stable key and where it came from."""

    key: str
    """sha256 of the record's canonical JSON, with `#n` for its n-th identical copy."""
    seq: int
    file: str
    line: int
    text: str
    record: dict[str, Any]


@dataclass(frozen=True)
class Marks:
    """What every answer is marked with in OUT: refusal (rules and evidence), keyword hits."""

    refusal: RefusalRules
    keywords: KeywordLibrary | None = None
    keywords_sha256: str | None = None

    def of(self, response: str) -> dict[str, Any]:
        """The marks of one answer: `refusal` always, `keyword_hits` with a library."""
        marks: dict[str, Any] = {"refusal": {**self.refusal.detect(response).evidence(), "rules": self.refusal.version}}
        if self.keywords is not None:
            marks["keyword_hits"] = [{"keyword": k.word, "risk": k.risk} for k in self.keywords.matches(response)]
        return marks


@dataclass
class AskSummary:
    """What a run did: counts, failures with reasons, and where it wrote."""

    total: int
    answered: int
    failed: list[dict[str, Any]]
    asked_now: int
    resumed: int
    output: Path
    evidence: Path
    meta: Path
    refused: int = 0
    """Answers the refusal rules mark refused."""
    keyword_answers: int | None = None
    """Answers containing at least one keyword (None without a library)."""


class ServiceError(NetworkError):
    """The service refuses every request (401/403/404): the run stops, answers so far are kept."""


def read_bank(inputs: Sequence[str | Path], question_field: str) -> tuple[list[Question], list[dict[str, Any]]]:
    """The bank's questions in order (keyed), and its files with their sha256."""
    from libra_edge.batch.readers import expand_inputs, read_records

    questions: list[Question] = []
    files: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for path in expand_inputs(list(inputs)):
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
        rows, issues = read_records(path)
        skipped = [str(i) for i in issues if i.kind == "skipped"]
        if skipped:
            raise InputError(skipped[0], hint=f"{len(skipped)} unreadable record(s) in {path}: fix them first")
        files.append({"path": str(path), "sha256": digest, "records": len(rows)})
        for line, record in rows:
            text = record.get(question_field)
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"{path}:{line}: no {question_field!r} text to ask",
                                 hint="name the field with --question-field")
            base = hashlib.sha256(json.dumps(record, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:24]
            seen[base] = seen.get(base, 0) + 1
            questions.append(Question(f"{base}#{seen[base]}", len(questions), str(path), line, text, record))
    if not questions:
        raise InputError("the bank holds no questions")
    return questions, files


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310 - the user's own endpoint
            return int(reply.status), reply.read(), dict(reply.headers.items())
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read() or b"", dict(exc.headers.items()) if exc.headers else {}


def _retry_after(headers: dict[str, str]) -> float | None:
    value = {k.lower(): v for k, v in headers.items()}.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class Asker:
    """Asks one question with retries; thread-safe (no shared state but the stop flag)."""

    def __init__(self, options: AskOptions, stop: threading.Event,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.options = options
        self.stop = stop
        self.sleep = sleep
        key = os.environ.get(options.api_key_env, "")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self.has_key = bool(key)

    def body(self, question: str) -> dict[str, Any]:
        """The request body for one question."""
        params = self.options.parameters()
        system = params.pop("system", None)
        messages = ([{"role": "system", "content": system}] if system is not None else []) + \
                   [{"role": "user", "content": question}]
        return {**params, "messages": messages, "stream": False}

    def ask(self, q: Question) -> dict[str, Any]:
        """The evidence record for one question: answered, or failed with its reason."""
        o = self.options
        body = json.dumps(self.body(q.text), ensure_ascii=False).encode("utf-8")
        attempts: list[dict[str, Any]] = []
        started = now()
        reason = ""
        for attempt in range(o.retries + 1):
            if self.stop.is_set():
                raise _Stopped()
            t0, at = time.monotonic(), now()
            wait_s = o.backoff_s * 2 ** attempt
            try:
                status, data, headers = _post(o.url, body, self._headers, o.timeout_s)
            except (socket.timeout, TimeoutError):
                reason = f"timed out after {o.timeout_s:g} s"
            except (urllib.error.URLError, ConnectionError, OSError) as exc:
                why = getattr(exc, "reason", exc)
                if isinstance(why, TimeoutError):  # urllib wraps a read timeout in URLError
                    reason = f"timed out after {o.timeout_s:g} s"
                else:
                    reason = f"cannot connect to {o.url}: {why}"
            else:
                latency = time.monotonic() - t0
                if status == 200:
                    outcome = _parse_reply(data)
                    if isinstance(outcome, dict):
                        attempts.append({"at": at, "latency_s": round(latency, 4), "status": 200})
                        return {**self._common(q, started, attempts), "status": "answered",
                                "latency_s": round(latency, 4), **outcome}
                    reason = outcome
                elif status in (401, 403):
                    hint = (f"the key in ${o.api_key_env} was refused" if self.has_key
                            else f"set the API key in ${o.api_key_env} (or name another variable with --api-key-env)")
                    raise ServiceError(f"{o.url}: HTTP {status} {_detail(data)}", hint=hint)
                elif status == 404:
                    raise ServiceError(f"{o.url}: HTTP 404 {_detail(data)}",
                                       hint=f"check --endpoint (the service's base URL) and --model {o.model!r}")
                elif status == 429 or status >= 500:
                    reason = f"HTTP {status} {_detail(data)}".strip()
                    wait_s = _retry_after(headers) or wait_s
                else:
                    attempts.append({"at": at, "latency_s": round(latency, 4), "status": status})
                    return {**self._common(q, started, attempts), "status": "failed",
                            "reason": f"HTTP {status} {_detail(data)}".strip()}
            attempts.append({"at": at, "latency_s": round(time.monotonic() - t0, 4), "error": reason})
            if attempt < o.retries:
                self.sleep(min(wait_s, MAX_BACKOFF_S))
        return {**self._common(q, started, attempts), "status": "failed",
                "reason": f"{reason} ({len(attempts)} attempt(s))"}

    def _common(self, q: Question, started: str, attempts: list[dict[str, Any]]) -> dict[str, Any]:
        return {"key": q.key, "seq": q.seq, "file": q.file, "line": q.line, "url": self.options.url,
                "request": self.options.parameters(), "started_at": started, "finished_at": now(),
                "attempts": attempts}


class _Stopped(Exception):
    """A worker saw the stop flag: its question stays unasked."""


def _detail(data: bytes) -> str:
    """A short, one-line excerpt of an error body."""
    text = data.decode("utf-8", "replace").strip().replace("\n", " ")
    return f"({text[:160]})" if text else ""


def _parse_reply(data: bytes) -> dict[str, Any] | str:
    """The answer, finish reason and usage of a chat-completions reply, or why it is malformed."""
    try:
        reply = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return f"malformed reply: not JSON ({data[:60]!r})"
    try:
        choice = reply["choices"][0]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return "malformed reply: no choices[0].message.content"
    if content is not None and not isinstance(content, str):
        return "malformed reply: choices[0].message.content is not text"
    return {"response": content or "", "finish_reason": choice.get("finish_reason"),
            "usage": reply.get("usage"), "reply_model": reply.get("model"), "raw": reply}


class EvidenceJournal:
    """The append-only evidence file: a header line, then one line per question's outcome."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def read(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The header and the outcomes so far; a last line cut by a kill is dropped from the file."""
        if not self.path.exists():
            return None, []
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a partial line: the write that a kill interrupted
            with self.path.open("r+b") as f:
                f.truncate(end)
            data = data[:end]
        lines = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
        if not lines or "libra_edge_ask" not in lines[0]:
            raise InputError(f"{self.path}: not an `audit ask` evidence file")
        return lines[0], lines[1:]

    def open(self) -> None:
        """Open for appending."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: dict[str, Any]) -> None:
        """Write one whole line and make it durable before the next question is counted done."""
        assert self._fd is not None
        os.write(self._fd, (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def evidence_path(output: Path) -> Path:
    """Where a run's evidence journal lives: `OUT.evidence.jsonl`."""
    return output.with_name(output.name + EVIDENCE_SUFFIX)


def meta_path(output: Path) -> Path:
    """Where a run's provenance sidecar lives: `OUT.meta.json`."""
    return output.with_name(output.name + META_SUFFIX)


def _header(options: AskOptions, files: list[dict[str, Any]]) -> dict[str, Any]:
    return {"libra_edge_ask": ASK_VERSION, "tool": f"libra-edge {__version__}", "created_at": now(),
            "url": options.url, "request": options.parameters(), "question_field": options.question_field,
            "bank": files}


def _check_resume(header: dict[str, Any], options: AskOptions, journal: Path) -> None:
    """A resumed run must ask the same service the same way, or its answers would not be one sample."""
    for name, ours in (("url", options.url), ("request", options.parameters())):
        if header.get(name) != ours:
            raise LibraError(f"{journal}: the earlier run used {name} {header.get(name)!r}, not {ours!r}",
                             hint="resume with the same --endpoint, --model and generation options, "
                                  "or choose another -o")


StartHook = Callable[[dict[str, Any], list[Question], dict[str, dict[str, Any]]], None]


def run_ask(inputs: Sequence[str | Path], output: Path, options: AskOptions, *, resume: bool = False,
            marks: Marks | None = None, on_progress: Callable[[int, int, dict[str, Any]], None] | None = None,
            on_answer: Callable[[Question, dict[str, Any]], None] | None = None,
            on_start: StartHook | None = None) -> AskSummary:
    """Ask every not-yet-answered question of the bank; write OUT and its sidecar when done.

    `on_start(header, questions, outcomes)` is called once the run's evidence header is
    known (the journal's first line: it identifies this run of asking, resumed or not) and
    before anything is asked, with the bank's questions and the outcomes journaled so far
    (by key); `on_answer(question, outcome)` after each new answer is journaled. `audit ask
    --judge` judges through these two (`audit.judge`).
    """
    if options.concurrency < 1:
        raise LibraError(f"--concurrency: at least 1, got {options.concurrency}")
    questions, files = read_bank(inputs, options.question_field)
    journal = EvidenceJournal(evidence_path(output))
    header, past = journal.read()
    if header is not None and not resume:
        raise LibraError(f"{journal.path} holds answers from an earlier run",
                         hint="add --resume to continue it (answered questions are not asked again), "
                              "or choose another -o")
    if header is not None:
        _check_resume(header, options, journal.path)
    outcomes: dict[str, dict[str, Any]] = {}
    for record in past:
        if record.get("status") == "answered" or record.get("key") not in outcomes:
            outcomes[record["key"]] = record
    answered_before = sum(o["status"] == "answered" for o in outcomes.values())
    todo = [q for q in questions if outcomes.get(q.key, {}).get("status") != "answered"]
    new = header is None
    header = header or _header(options, files)
    if on_start is not None:  # before the journal is written: a hook that fails leaves no trace
        on_start(header, questions, outcomes)
    journal.open()
    try:
        if new:
            journal.append(header)
        done = _ask_all(todo, options, journal, outcomes, len(questions), on_progress, on_answer)
    finally:
        journal.close()
    return _finish(questions, files, outcomes, output, journal.path, options, done, answered_before, marks)


def _ask_all(todo: list[Question], options: AskOptions, journal: EvidenceJournal, outcomes: dict[str, dict[str, Any]],
             total: int, on_progress: Callable[[int, int, dict[str, Any]], None] | None,
             on_answer: Callable[[Question, dict[str, Any]], None] | None) -> int:
    stop = threading.Event()
    asker = Asker(options, stop)
    asked = 0
    pending = iter(todo)
    running: dict[Future[dict[str, Any]], Question] = {}
    pool = ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="ask")
    try:
        # Only `concurrency` questions are in flight at a time, so a stop loses at most those.
        for q in _take(pending, options.concurrency):
            running[pool.submit(asker.ask, q)] = q
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                q = running.pop(future)
                try:
                    record = future.result()
                except ServiceError:
                    # Nothing more can succeed, but the answers already in flight are kept.
                    stop.set()
                    for other, oq in running.items():
                        try:
                            outcomes[oq.key] = kept = other.result()
                        except (ServiceError, _Stopped):
                            continue
                        journal.append(kept)
                    running.clear()
                    raise
                journal.append(record)
                outcomes[q.key] = record
                asked += 1
                if on_answer is not None and record["status"] == "answered":
                    on_answer(q, record)
                if on_progress is not None:
                    on_progress(sum(o["status"] == "answered" for o in outcomes.values()), total, record)
                for nxt in _take(pending, 1):
                    running[pool.submit(asker.ask, nxt)] = nxt
    except BaseException:
        stop.set()
        # Ctrl-C does not wait for the requests in flight: their questions stay unanswered.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return asked


def _take(items: Iterator[Question], n: int) -> list[Question]:
    out = []
    for _ in range(n):
        nxt = next(items, None)
        if nxt is None:
            break
        out.append(nxt)
    return out


def _finish(questions: list[Question], files: list[dict[str, Any]], outcomes: dict[str, dict[str, Any]], output: Path,
            journal: Path, options: AskOptions, asked_now: int, answered_before: int,
            marks: Marks | None) -> AskSummary:
    from libra_edge.report.stats import wilson

    marks = marks or Marks(_default_rules())
    lines: list[str] = []
    refused = with_keywords = 0
    failed: list[dict[str, Any]] = []
    for q in questions:
        outcome = outcomes.get(q.key)
        if outcome is None:
            failed.append({"key": q.key, "where": f"{q.file}:{q.line}", "reason": "not asked (the run stopped)"})
            continue
        if outcome["status"] != "answered":
            failed.append({"key": q.key, "where": f"{q.file}:{q.line}", "reason": outcome["reason"]})
            continue
        record = {**answered_record(q.record, outcome), **marks.of(outcome["response"])}
        refused += bool(record["refusal"]["refused"])
        with_keywords += bool(record.get("keyword_hits"))
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    data = "".join(lines).encode("utf-8")
    low, high = wilson(refused, len(lines)) if lines else (0.0, 1.0)
    meta = {"libra_edge_ask": ASK_VERSION, "tool": f"libra-edge {__version__}", "finished_at": now(),
            "url": options.url, "request": options.parameters(), "bank": files,
            "questions": len(questions), "answered": len(lines), "failed": failed,
            "evidence": {"path": str(journal)},
            "output": {"path": str(output), "sha256": hashlib.sha256(data).hexdigest()},
            "first_asked_at": min((o["started_at"] for o in outcomes.values()), default=None),
            "last_answered_at": max((o["finished_at"] for o in outcomes.values()), default=None),
            "refusal": {"rules": marks.refusal.version, "answered": len(lines), "refused": refused,
                        "rate": refused / len(lines) if lines else None, "wilson95": [low, high]}}
    if marks.keywords is not None:
        meta["keywords"] = {"library": marks.keywords.path, "sha256": marks.keywords_sha256,
                            "keywords": len(marks.keywords.keywords), "answers_with_hits": with_keywords}
    tmp = output.with_name(output.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, output)  # whole or not at all: a kill here leaves the journal to resume from
        meta_path(output).write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    except OSError as exc:
        raise LibraError(f"{output}: cannot write the answers: {exc.strerror or exc}") from None
    return AskSummary(len(questions), len(lines), failed, asked_now, answered_before, output, journal,
                      meta_path(output), refused, with_keywords if marks.keywords is not None else None)


def _default_rules() -> RefusalRules:
    from libra_edge.audit.refusal import load_rules

    return load_rules()


def answered_record(record: dict[str, Any], outcome: dict[str, Any]) -> dict[str, Any]:
    """The bank record as `batch` reads it: unchanged, plus `response` and the `ask` evidence (no raw reply)."""
    out = dict(record)
    if "response" in out:
        out["bank_response"] = out.pop("response")  # the bank's own reference answer is kept, renamed
    out["response"] = outcome["response"]
    out["ask"] = {k: outcome[k] for k in ("key", "url", "request", "started_at", "finished_at", "latency_s",
                                           "finish_reason", "usage", "reply_model") if k in outcome}
    out["ask"]["attempts"] = len(outcome.get("attempts", []))
    return out

