"""The HTTP API's bearer token: who may read, and where a worker may listen without one.

With ``api_token`` set, every request needs ``Authorization: Bearer <token>`` except those of
:data:`OPEN_ROUTES`: ``GET /health`` and ``GET /metrics`` (probes and Prometheus scrape without
secrets) and the dashboard's static files (the page and its scripts: code, no data; every
read the page makes carries the token). A worker listening on any address but a loopback one
must have a token (:func:`check_can_serve`), whether or not it serves TLS
(:mod:`streams.api_tls`): TLS encrypts the requests, the token says who may make them.

The token is compared in constant time and never logged, echoed or put in an error.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from streams.config import Settings
from streams.errors import ConfigurationError

log = logging.getLogger(__name__)

OPEN_ROUTES = frozenset({"/health", "/metrics", "/dashboard", "/dashboard/{name}"})
"""The routes (as registered) served without the token, to GET and HEAD only."""
_OPEN_METHODS = frozenset({"GET", "HEAD"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address: 127.0.0.0/8, ``::1`` or ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_can_serve(settings: Settings) -> None:
    """Refuse a worker's HTTP settings that would expose it, or that no other worker can use.

    Raises:
        ConfigurationError: ``web_host`` is not a loopback address and there is no
            ``api_token``; or ``web_host`` is a wildcard and there is no ``advertised_url``.
    """
    host = settings.web_host
    if not is_loopback(host) and not settings.api_token:
        raise ConfigurationError(
            f"web_host {host!r} is not a loopback address: set api_token (env"
            " ORCHESTRATOR_API_TOKEN) or api_token_file, or bind web_host to 127.0.0.1"
        )
    if host in WILDCARD_HOSTS and not settings.advertised_url:
        raise ConfigurationError(
            f"web_host {host!r} binds every address: set advertised_url (env"
            " ORCHESTRATOR_ADVERTISED_URL) to the URL other workers reach this one at"
        )


def authorization(token: str) -> dict[str, str]:
    """The request headers that carry ``token`` (none when there is no token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def is_authorised(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (compared in constant time)."""
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(token: str) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """An aiohttp middleware answering 401 to any request without ``token`` but those of
    :data:`OPEN_ROUTES`."""

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        path = route.canonical if route is not None else None
        if request.method in _OPEN_METHODS and path in OPEN_ROUTES:
            return await handler(request)
        header = request.headers.get("Authorization")
        if is_authorised(header, token):
            return await handler(request)
        detail = (
            "this worker requires Authorization: Bearer <api_token>"
            if header is None
            else "the bearer token is not this worker's api_token"
        )
        return web.json_response(
            {"error": "unauthorized", "detail": detail},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="orchestrator"'},
        )

    return require_token
