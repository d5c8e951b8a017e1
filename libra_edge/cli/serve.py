"""`libra-edge serve`: run the guard as a local moderation service (HTTP, OpenAI-compatible)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from libra_edge.cli.common import add_command, add_model_options, engine_settings
from libra_edge.errors import ExitCode, LibraError

EXTRA_HINT = "`libra-edge serve` needs the serve extra: pip install 'libra-edge[serve]' (starlette and uvicorn)"

EPILOG = """\
examples:
  libra-edge serve -m guard.gguf                          http://127.0.0.1:8080, loopback only
  libra-edge serve -m guard.gguf --parallel 8 --log-results
  LIBRA_EDGE_API_KEY=s3cret libra-edge serve -m guard.gguf --host 0.0.0.0

  curl -s localhost:8080/v1/check -d '{"question": "怎么办？", "response": "别担心。", "analysis": false}'
  curl -s localhost:8080/v1/moderations -d '{"input": "回答", "question": "问题"}'
  curl -sN localhost:8080/v1/check -d '{"question": "q", "response": "r", "stream": true}'

endpoints:
  POST /v1/check        {"question", "response", "analysis": true, "threshold"?, "stream"?} -> the object
                        `check --json` prints; an array of such objects -> an array, judged together
  POST /v1/moderations  OpenAI's moderation request/response; the guard's P(unsafe) is the score of
                        the one category "libra-guard/unsafe"; "question" (ours) gives the question
  GET  /health          model loaded, queue depth (no key needed)
  GET  /metrics         Prometheus text: requests, latency histogram, queue depth, tokens/s
  GET  /v1/models       the loaded model

safety: binds 127.0.0.1 by default; any other --host needs an API key (clients send
`Authorization: Bearer KEY`); bodies over --max-body get 413; questions and responses over
--max-chars are cut head+tail (marked truncated); more than --queue pairs waiting get 429 with
Retry-After; a client that disconnects frees its place; SIGTERM or Ctrl-C finishes the requests
in flight (up to --drain seconds), then exits 0.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "serve", __doc__,
        description="Serve the guard over HTTP: /v1/check, OpenAI-compatible /v1/moderations, "
                    "/health, /metrics, /v1/models. The model is loaded once.",
        epilog=EPILOG)
    net = p.add_argument_group("service")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default: 127.0.0.1; a non-loopback one needs --api-key)")
    net.add_argument("--port", type=int, default=8080, help="TCP port (default: 8080; 0 = any free port)")
    net.add_argument("--api-key", metavar="KEY", default=None,
                     help="require `Authorization: Bearer KEY` (default: $LIBRA_EDGE_API_KEY; prefer the "
                     "variable: a flag shows in `ps`)")
    net.add_argument("--parallel", type=int, default=4, metavar="N",
                     help="sequences judged at once, each with --ctx tokens (default: 4)")
    net.add_argument("--queue", type=int, default=64, metavar="N",
                     help="pairs waiting or being judged at once; more get 429 (default: 64)")
    net.add_argument("--max-body", type=int, default=1 << 20, metavar="BYTES",
                     help="largest request body (default: 1048576)")
    net.add_argument("--max-chars", type=int, default=32_000, metavar="N",
                     help="longest question or response in characters; longer ones are cut head+tail "
                     "and marked truncated (default: 32000)")
    net.add_argument("--drain", type=float, default=60.0, metavar="SECONDS",
                     help="on SIGTERM, wait this long for requests in flight (default: 60)")
    net.add_argument("--log-results", action="store_true",
                     help="commit every verdict to the results database as a `serve` run")
    add_model_options(p)
    p.set_defaults(func=run)


def require_web_stack() -> None:
    """LibraError (exit 2) naming what to install when starlette or uvicorn is missing."""
    for name in ("starlette", "uvicorn"):
        try:
            importlib.import_module(name)
        except ImportError:
            raise LibraError(EXTRA_HINT) from None


def check_options(args: argparse.Namespace) -> str | None:
    """Usage errors before anything is loaded; returns the API key (flag, else environment)."""
    from libra_edge.serve.auth import is_loopback

    key = args.api_key if args.api_key is not None else os.environ.get("LIBRA_EDGE_API_KEY") or None
    if key is not None and not key.strip():
        raise LibraError("--api-key: the key is empty")
    if not is_loopback(args.host) and key is None:
        raise LibraError(f"--host {args.host} is not a loopback address: anyone on the network could call it",
                         hint="set LIBRA_EDGE_API_KEY (or --api-key), or keep the default 127.0.0.1")
    for name, value, low in (("--port", args.port, 0), ("--queue", args.queue, 1), ("--max-body", args.max_body, 64),
                             ("--max-chars", args.max_chars, 16)):
        if value < low:
            raise LibraError(f"{name}: must be at least {low}, got {value}")
    if args.port > 65535:
        raise LibraError(f"--port: must be at most 65535, got {args.port}")
    if args.drain < 0:
        raise LibraError(f"--drain: must be >= 0, got {args.drain}")
    return key


def run(args: argparse.Namespace) -> int:
    key = check_options(args)
    settings = engine_settings(args, parallel=args.parallel)  # usage errors before the imports
    require_web_stack()
    from libra_edge.engine import Guard
    from libra_edge.serve.app import ServeConfig, bind, make_app, run_server
    from libra_edge.serve.results import ResultLog

    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        raise LibraError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    host, port = sock.getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    with sock, Guard.load(args.model, settings) as guard:
        log = ResultLog.open(guard, url) if args.log_results else None
        config = ServeConfig(api_key=key, queue=args.queue, max_body=args.max_body, max_chars=args.max_chars)
        app = make_app(guard, config, log)
        note = f"; logging verdicts to run {log.run_id}" if log is not None else ""
        print(f"libra-edge serve: listening on {url} (model {guard.info.name}, parallel {args.parallel}, "
              f"queue {args.queue}{note}); Ctrl-C or SIGTERM drains and stops", file=sys.stderr, flush=True)
        try:
            seen = run_server(app, sock, drain_s=args.drain, verbose=args.verbose)
        finally:
            if log is not None:  # closed as `finished` by a drained shutdown; else the server failed
                log.close("interrupted", "the server stopped without draining")
    print(f"libra-edge serve: stopped{' after draining' if seen else ''}", file=sys.stderr, flush=True)
    return ExitCode.OK
