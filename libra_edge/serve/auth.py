"""Who may call the service: loopback binding by default, an API key checked in constant time."""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Paths a load balancer or probe may read without the key (no pair, no verdict in them).
OPEN_PATHS = frozenset({"/health"})


def is_loopback(host: str) -> bool:
    """Whether HOST (an address or a name) reaches this machine only: every address loopback."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key a request carries: `Authorization: Bearer KEY` (as OpenAI clients send) or `X-API-Key`."""
    for name, value in headers:
        lname = name.lower()
        if lname == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
        elif lname == b"x-api-key":
            return value.decode("latin-1").strip()
    return None


def key_matches(presented: str | None, expected: str) -> bool:
    """Constant-time comparison (the time taken says nothing about how much matched).

    An empty key never matches: an empty `expected` would otherwise open the door.
    """
    given = (presented or "").encode("utf-8")
    same = hmac.compare_digest(given, expected.encode("utf-8"))
    return same and bool(presented) and bool(expected)


class RequireKey:
    """ASGI middleware: every HTTP request but OPEN_PATHS needs the key, else 401."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if key_matches(presented_key(scope.get("headers", [])), self.key):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": {"message": "missing or wrong API key (send 'Authorization: Bearer KEY')",
                                     "type": "authentication_error", "code": 401}}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b'Bearer realm="libra-edge"')]})
        await send({"type": "http.response.body", "body": body})
