"""TLS of the workers' HTTP API: the context a worker serves HTTPS with, and the one every
caller (clients, the CLI, the workers asking each other) verifies a worker's certificate with.

A worker with ``web_certfile`` and ``web_keyfile`` serves HTTPS only. Its callers trust the CA
bundle of ``api_cafile`` (empty: the system's store) and check the host name against the
certificate, always: there is no setting that turns verification off. TLS encrypts; the bearer
token (:mod:`streams.auth`) still says who may read, and a worker on a non-loopback address
needs one with or without TLS.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from streams.errors import ConfigurationError, UntrustedCertificateError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _EncryptedKeyError(Exception):
    """The key file asks for a password: the worker has none to give (and must not prompt)."""


def _no_password() -> str:
    raise _EncryptedKeyError


def server_context(certfile: str, keyfile: str) -> ssl.SSLContext | None:
    """The context a worker serves HTTPS with (None: both empty, plain HTTP).

    Raises:
        ConfigurationError: the files cannot be loaded as a PEM certificate chain and its
            unencrypted private key; the message names the keys and files, never the key.
    """
    if not certfile and not keyfile:
        return None
    if not certfile or not keyfile:
        raise ConfigurationError(
            "set web_certfile and web_keyfile together (the worker then serves HTTPS)"
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        # a password callback, so an encrypted key is refused instead of prompting on a tty
        context.load_cert_chain(certfile, keyfile, password=_no_password)
    except _EncryptedKeyError:
        raise ConfigurationError(
            f"web_keyfile: {keyfile} is encrypted; the worker needs an unencrypted PEM key"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or "not PEM"
        raise ConfigurationError(
            f"web_certfile, web_keyfile: cannot load {certfile} and {keyfile} as a PEM"
            f" certificate chain and its private key ({reason}; do they match?)"
        ) from None
    return context


def client_context(cafile: str) -> ssl.SSLContext:
    """The context a caller verifies a worker's certificate with: the CAs of ``cafile``, or
    the system's store when it is empty.

    Raises:
        ConfigurationError: ``cafile`` cannot be read or holds no PEM certificate.
    """
    try:
        return ssl.create_default_context(cafile=cafile or None)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or "it holds no PEM certificate"
        raise ConfigurationError(f"api_cafile: cannot load {cafile}: {reason}") from None


def connector(cafile: str) -> aiohttp.TCPConnector:
    """A connector for an ``aiohttp.ClientSession`` calling workers: an ``https://`` URL is
    verified with :func:`client_context` (an ``http://`` one uses no TLS). Call it inside the
    event loop the session runs in."""
    return aiohttp.TCPConnector(ssl=client_context(cafile))


def http_client_factory(cafile: str) -> Callable[[], aiohttp.ClientSession]:
    """What faust's ``HttpClient`` setting takes: it makes the worker's ``app.http_client``
    (faust's router forwarding a read to a task's owner, and a worker asking the others) when
    first used, inside the worker's loop, and closes it when the app stops."""
    context = client_context(cafile)  # loaded (and checked) once, when the app is made

    def http_client() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))

    return http_client


def untrusted(url: str, exc: aiohttp.ClientConnectorCertificateError) -> UntrustedCertificateError:
    """The error a caller raises when the worker at ``url`` presented a certificate it does
    not trust (not retried: only a configuration change helps)."""
    cause = exc.certificate_error
    return UntrustedCertificateError(url, getattr(cause, "verify_message", None) or str(cause))


@web.middleware
async def refuse_untrusted_peers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer 502 with why, instead of aiohttp's bare 500, when this worker could not verify
    the certificate of the worker it forwarded a read to (faust's router raises it): the
    caller's error then says which worker's ``api_cafile`` to fix, at once."""
    try:
        return await handler(request)
    except aiohttp.ClientConnectorCertificateError as exc:
        peer = f"https://{exc.host}:{exc.port}"
        detail = f"this worker could not forward the request: {untrusted(peer, exc)}"
        return web.json_response({"error": "bad_gateway", "detail": detail}, status=502)
