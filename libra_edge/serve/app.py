"""The service's ASGI app (Starlette routes) and its uvicorn server; a client of the engine's public API."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from libra_edge import __version__
from libra_edge.engine import Guard, Verdict
from libra_edge.serve.auth import RequireKey
from libra_edge.serve.jobs import Admission, QueueFull, submit
from libra_edge.serve.metrics import Metrics, TimeRequests
from libra_edge.serve.results import ResultLog, model_name
from libra_edge.serve.schema import (
    Pair,
    RequestError,
    moderation_response,
    parse_check,
    parse_moderation,
    shaped,
)


@dataclass(frozen=True)
class ServeConfig:
    """How the service takes requests (the model's own settings live in the Guard)."""

    api_key: str | None = None
    queue: int = 64  # pairs waiting or being judged at once; more are refused with 429
    max_body: int = 1 << 20  # bytes in one request body; more is refused with 413
    max_chars: int = 32_000  # characters per question/response; longer ones are cut head+tail


class ClientGone(Exception):
    """The client closed the connection before its verdicts were ready."""


class Service:
    """What the routes share: the guard, the bounded queue, the metrics and the result log."""

    def __init__(self, guard: Guard, config: ServeConfig, log: ResultLog | None = None) -> None:
        self.guard = guard
        self.config = config
        self.log = log
        self.admission = Admission(config.queue, guard.settings.parallel)
        self.metrics = Metrics()

    @property
    def queue_depth(self) -> int:
        """Pairs waiting or being judged: the engine's own count."""
        return self.guard.queue_depth

    def start(self, pairs: list[Pair], analysis: bool,
              on_text: Callable[[str], None] | None = None) -> list[Future[Verdict]]:
        """Admit the pairs (QueueFull if there is no room) and hand them to the guard."""
        self.admission.admit(len(pairs))
        futures: list[Future[Verdict]] = []
        try:
            for pair in pairs:
                t0 = time.perf_counter()
                future = submit(self.guard, pair.question, pair.response, analysis=analysis, on_text=on_text)
                future.add_done_callback(functools.partial(self._done, t0=t0))
                futures.append(future)
        except BaseException:
            for _ in range(len(pairs) - len(futures)):
                self.admission.release()
            for future in futures:
                future.cancel()
            raise
        return futures

    def _done(self, future: Future[Verdict], *, t0: float) -> None:
        ok = not future.cancelled() and future.exception() is None
        self.admission.release(time.perf_counter() - t0 if ok else None)

    async def finish(self, pairs: list[Pair], verdicts: list[Verdict], threshold: float | None,
                     endpoint: str) -> list[dict[str, Any]]:
        """The verdicts as answered (relabelled at the request's threshold), logged when asked."""
        out = [shaped(v.to_dict(), pair, threshold) for pair, v in zip(pairs, verdicts)]
        for record in out:
            self.metrics.observe_verdict(record)
        if self.log is not None:
            log = self.log
            fields = {"endpoint": endpoint, "threshold": threshold}
            await asyncio.to_thread(
                lambda: [log.add(p.question, p.response, r, fields) for p, r in zip(pairs, out)])
        return out


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error answer, OpenAI-shaped: {"error": {"message", "type", "code"}}."""
    kind = {401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large", 422: "invalid_request_error",
            429: "rate_limit_error"}.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status, headers=headers)


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON; RequestError 413 past `limit` bytes, 422 when malformed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body of {int(declared)} bytes; at most {limit} (--max-body)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body over {limit} bytes (--max-body)")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except UnicodeDecodeError:
        raise RequestError(422, "malformed JSON: the body is not UTF-8") from None
    except ValueError as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise RequestError(422, f"malformed JSON: {reason}{where}") from None


async def until_disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body must have been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def judged(request: Request, futures: list[Future[Verdict]], metrics: Metrics) -> list[Verdict]:
    """The verdicts, or ClientGone (every future cancelled) if the client leaves first."""
    results = asyncio.ensure_future(asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))
    watcher = asyncio.ensure_future(until_disconnected(request))
    waiting: set[asyncio.Future[Any]] = {results, watcher}
    try:
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not results.done():
        left = sum(not f.done() for f in futures)
        for f in futures:
            f.cancel()
        results.cancel()
        metrics.count_cancelled(left)
        raise ClientGone
    return list(results.result())


def make_app(guard: Guard, config: ServeConfig, log: ResultLog | None = None) -> Callable[..., Awaitable[None]]:
    """The ASGI app: routes, the API-key check (when a key is set) and request metrics."""
    service = Service(guard, config, log)

    async def answer(handler: Callable[[Request], Awaitable[Response]], request: Request) -> Response:
        try:
            return await handler(request)
        except RequestError as exc:
            return error(exc.status, exc.message)
        except QueueFull as exc:
            service.metrics.count_rejected()
            return error(429, str(exc), {"Retry-After": str(exc.retry_after_s)})
        except ClientGone:
            return Response(status_code=499)
        except Exception as exc:  # the engine failed on a pair: one line, no traceback
            return error(500, f"check failed: {exc}" if str(exc) else f"check failed: {type(exc).__name__}")

    async def check(request: Request) -> Response:
        req = parse_check(await read_json(request, config.max_body), max_chars=config.max_chars,
                          max_pairs=config.queue)
        if req.stream:
            return stream(req.pairs[0], req.threshold)
        futures = service.start(req.pairs, req.analysis)
        verdicts = await judged(request, futures, service.metrics)
        out = await service.finish(req.pairs, verdicts, req.threshold, "/v1/check")
        return JSONResponse(out if req.many else out[0])

    def stream(pair: Pair, threshold: float | None) -> Response:
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str] = asyncio.Queue()

        def on_text(piece: str) -> None:  # called on the engine's thread
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

        future = service.start([pair], True, on_text)[0]
        verdict = asyncio.wrap_future(future)

        async def events() -> AsyncIterator[str]:
            try:
                while True:
                    get = asyncio.ensure_future(pieces.get())
                    waiting: set[asyncio.Future[Any]] = {get, verdict}
                    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    if get.done():
                        yield sse({"type": "text", "text": get.result()})
                        continue
                    get.cancel()
                    break
                while not pieces.empty():
                    yield sse({"type": "text", "text": pieces.get_nowait()})
                try:
                    out = (await service.finish([pair], [verdict.result()], threshold, "/v1/check"))[0]
                except Exception as exc:
                    yield sse({"type": "error", "error": {"message": f"check failed: {exc}", "code": 500}})
                else:
                    yield sse({"type": "verdict", "verdict": out})
                yield "data: [DONE]\n\n"
            finally:
                if not future.done():  # the client went away mid-stream
                    future.cancel()
                    service.metrics.count_cancelled(1)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def moderations(request: Request) -> Response:
        req = parse_moderation(await read_json(request, config.max_body), max_chars=config.max_chars,
                               max_pairs=config.queue)
        futures = service.start(req.pairs, req.analysis)
        verdicts = await judged(request, futures, service.metrics)
        out = await service.finish(req.pairs, verdicts, req.threshold, "/v1/moderations")
        return JSONResponse(moderation_response(out, model_name(guard)))

    async def health(request: Request) -> Response:
        return JSONResponse({
            "status": "ok", "model_loaded": True, "model": model_name(guard),
            "queue_depth": service.queue_depth, "in_flight": service.admission.held,
            "queue_capacity": config.queue, "parallel": guard.settings.parallel, "version": __version__,
        })

    async def metrics(request: Request) -> Response:
        text = service.metrics.render(queue_depth=service.queue_depth, in_flight=service.admission.held,
                                      capacity=config.queue, model=model_name(guard))
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def models(request: Request) -> Response:
        info = guard.info
        return JSONResponse({"object": "list", "data": [{
            "id": info.name, "object": "model", "created": 0, "owned_by": "libra-edge",
            "quant": getattr(info, "quant", None), "sha256": guard.model_sha256,
            "threshold": guard.settings.threshold, "max_new_tokens": guard.settings.max_new_tokens,
        }]})

    def route(path: str, handler: Callable[[Request], Awaitable[Response]], method: str) -> Route:
        async def endpoint(request: Request) -> Response:
            return await answer(handler, request)
        return Route(path, endpoint, methods=[method])

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if log is not None:  # after uvicorn drained the in-flight requests
            await asyncio.to_thread(log.close, "finished")

    async def not_found(request: Request, exc: Exception) -> Response:
        return error(404, f"no endpoint {request.url.path} (see `libra-edge serve --help`)")

    async def wrong_method(request: Request, exc: Exception) -> Response:
        return error(405, f"{request.method} is not allowed on {request.url.path}")

    app = Starlette(routes=[
        route("/v1/check", check, "POST"),
        route("/v1/moderations", moderations, "POST"),
        route("/health", health, "GET"),
        route("/metrics", metrics, "GET"),
        route("/v1/models", models, "GET"),
    ], lifespan=lifespan, exception_handlers={404: not_found, 405: wrong_method})
    wrapped: Any = app if config.api_key is None else RequireKey(app, config.api_key)
    return TimeRequests(wrapped, service.metrics)


def sse(obj: dict[str, Any]) -> str:
    """One server-sent event carrying a JSON object."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on HOST:PORT (port 0: any free one), or OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    infos = socket.getaddrinfo(host.strip("[]"), port, family, socket.SOCK_STREAM)
    sock = socket.socket(infos[0][0], socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(infos[0][4])
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def run_server(app: Callable[..., Awaitable[None]], sock: socket.socket, *, drain_s: float,
               verbose: bool = False) -> list[int]:
    """Serve until SIGINT/SIGTERM, then drain in-flight requests (up to `drain_s`); the signals seen."""
    import uvicorn

    config = uvicorn.Config(app, log_level="info" if verbose else "warning", access_log=verbose, lifespan="on",
                            timeout_graceful_shutdown=int(drain_s + 0.999), server_header=False)
    server = uvicorn.Server(config)
    seen: list[int] = []
    # uvicorn re-raises the signal that stopped it once it has drained; handlers of our
    # own receive it, so a drained SIGTERM ends the command normally.
    previous = {s: signal.signal(s, lambda n, _f: seen.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return seen
