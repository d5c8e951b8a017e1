"""The service's Prometheus metrics, kept by hand (no client library) and rendered as text."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from libra_edge.serve.auth import ASGIApp, Message, Receive, Scope, Send

# Request latency buckets (seconds), from a fast check on a small model to a long analysis on
# a large one (the README's benchmarks have the measured times, with their commands).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ENDPOINTS = ("/v1/check", "/v1/moderations", "/v1/models", "/health", "/metrics")
TOKENS_WINDOW_S = 60.0


class Metrics:
    """Counters, a latency histogram per endpoint and a token rate; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.requests: dict[tuple[str, int], int] = {}
        self.histograms: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}
        self.verdicts: dict[str, int] = {}
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.rejected = 0
        self.cancelled = 0
        self._recent: deque[tuple[float, int]] = deque()

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """One HTTP request answered."""
        with self._lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1
            counts = self.histograms.setdefault(endpoint, [0] * (len(BUCKETS) + 1))
            counts[next((i for i, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))] += 1
            self.sums[endpoint] = self.sums.get(endpoint, 0.0) + seconds

    def observe_verdict(self, verdict: dict[str, Any]) -> None:
        """One pair judged: its label and the tokens it ran through the model."""
        timings = verdict.get("timings") or {}
        evaluated = int(timings.get("evaluated_tokens", 0))
        generated = int(timings.get("generated_tokens", 0))
        now = time.monotonic()
        with self._lock:
            label = str(verdict.get("label"))
            self.verdicts[label] = self.verdicts.get(label, 0) + 1
            self.prompt_tokens += evaluated
            self.generated_tokens += generated
            self._recent.append((now, evaluated + generated))
            self._trim(now)

    def count_rejected(self) -> None:
        """A request refused because the queue was full (429)."""
        with self._lock:
            self.rejected += 1

    def count_cancelled(self, n: int) -> None:
        """Pairs given up because their client went away."""
        with self._lock:
            self.cancelled += n

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - TOKENS_WINDOW_S:
            self._recent.popleft()

    def tokens_per_second(self) -> float:
        """Tokens evaluated and generated per second over the last minute (or the uptime)."""
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            total = sum(n for _, n in self._recent)
        window = min(TOKENS_WINDOW_S, max(1e-9, now - self.started))
        return total / window

    def render(self, *, queue_depth: int, in_flight: int, capacity: int, model: str) -> str:
        """Prometheus text exposition format (version 0.0.4)."""
        rate = self.tokens_per_second()
        with self._lock:
            lines = [
                "# HELP libra_edge_info The model this service judges with.",
                "# TYPE libra_edge_info gauge",
                f'libra_edge_info{{model="{_escape(model)}"}} 1',
                "# HELP libra_edge_requests_total HTTP requests answered, by endpoint and status code.",
                "# TYPE libra_edge_requests_total counter",
            ]
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(f'libra_edge_requests_total{{endpoint="{endpoint}",code="{status}"}} {n}')
            lines += ["# HELP libra_edge_request_duration_seconds Time from request to full response.",
                      "# TYPE libra_edge_request_duration_seconds histogram"]
            for endpoint, counts in sorted(self.histograms.items()):
                running = 0
                for bound, count in zip((*BUCKETS, float("inf")), counts):
                    running += count
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    lines.append(f'libra_edge_request_duration_seconds_bucket{{endpoint="{endpoint}",le="{le}"}} {running}')
                lines.append(f'libra_edge_request_duration_seconds_sum{{endpoint="{endpoint}"}} {self.sums[endpoint]!r}')
                lines.append(f'libra_edge_request_duration_seconds_count{{endpoint="{endpoint}"}} {running}')
            lines += ["# HELP libra_edge_verdicts_total Pairs judged, by label.",
                      "# TYPE libra_edge_verdicts_total counter"]
            for label, n in sorted(self.verdicts.items()):
                lines.append(f'libra_edge_verdicts_total{{label="{_escape(label)}"}} {n}')
            lines += [
                "# HELP libra_edge_queue_depth Pairs waiting or being judged.",
                "# TYPE libra_edge_queue_depth gauge",
                f"libra_edge_queue_depth {queue_depth}",
                "# HELP libra_edge_in_flight Pairs admitted and not yet answered (bounded by --queue).",
                "# TYPE libra_edge_in_flight gauge",
                f"libra_edge_in_flight {in_flight}",
                "# HELP libra_edge_queue_capacity Pairs the queue admits at once (--queue).",
                "# TYPE libra_edge_queue_capacity gauge",
                f"libra_edge_queue_capacity {capacity}",
                "# HELP libra_edge_rejected_total Requests refused with 429 because the queue was full.",
                "# TYPE libra_edge_rejected_total counter",
                f"libra_edge_rejected_total {self.rejected}",
                "# HELP libra_edge_cancelled_total Pairs given up because their client disconnected.",
                "# TYPE libra_edge_cancelled_total counter",
                f"libra_edge_cancelled_total {self.cancelled}",
                "# HELP libra_edge_prompt_tokens_total Prompt tokens run through the model (reused ones not counted).",
                "# TYPE libra_edge_prompt_tokens_total counter",
                f"libra_edge_prompt_tokens_total {self.prompt_tokens}",
                "# HELP libra_edge_generated_tokens_total Output tokens generated.",
                "# TYPE libra_edge_generated_tokens_total counter",
                f"libra_edge_generated_tokens_total {self.generated_tokens}",
                "# HELP libra_edge_tokens_per_second Prompt and output tokens per second over the last minute.",
                "# TYPE libra_edge_tokens_per_second gauge",
                f"libra_edge_tokens_per_second {rate:.3f}",
            ]
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class TimeRequests:
    """ASGI middleware: the status and latency of every HTTP request go to `metrics`."""

    def __init__(self, app: ASGIApp, metrics: Metrics, clock: Callable[[], float] = time.perf_counter) -> None:
        self.app = app
        self.metrics = metrics
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = 500
        t0 = self.clock()

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            self.metrics.observe_request(endpoint, status, self.clock() - t0)
