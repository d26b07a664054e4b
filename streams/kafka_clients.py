"""The one place that builds Kafka clients: every producer, consumer and admin client of the
project (the worker's agents, faust's own, the client, the CLI, the replay, the example
consumer) gets its address and its security options from a :class:`KafkaConnection`.

A test (``tests/unit/test_kafka_clients.py``) fails if an aiokafka client is constructed
anywhere else, so a new client cannot forget the credentials.

Security follows Kafka's own client settings: ``security_protocol`` (PLAINTEXT, SSL,
SASL_PLAINTEXT, SASL_SSL), ``sasl_mechanism`` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) with a
username and password, and for TLS a CA file and optionally a client certificate and key. The
password never appears in a repr, a log line or an error message.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from streams.errors import KafkaLoginError

if TYPE_CHECKING:
    import faust.auth

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaConnection:
    """Where Kafka is and how to log in to it.

    Attributes:
        bootstrap_servers: ``HOST:PORT[,HOST:PORT...]``.
        security_protocol: one of :data:`PROTOCOLS`.
        sasl_mechanism: one of :data:`MECHANISMS` (SASL protocols only).
        sasl_username: the principal's name (SASL protocols only).
        sasl_password: its password; never shown.
        ssl_cafile: PEM file of the certificate authorities to trust (TLS protocols; empty:
            the system's).
        ssl_certfile: PEM client certificate (mutual TLS), with ``ssl_keyfile``.
        ssl_keyfile: PEM private key of ``ssl_certfile``.
    """

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""

    @property
    def uses_sasl(self) -> bool:
        """Whether the protocol logs in with SASL."""
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        """Whether the protocol encrypts with TLS."""
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def principal(self) -> str:
        """Who this connection logs in as, for messages: ``User:name`` or ``ANONYMOUS``."""
        return f"User:{self.sasl_username}" if self.uses_sasl else "ANONYMOUS"

    def describe(self) -> str:
        """One line for logs and errors: the address, protocol and principal, no secret."""
        if self.uses_sasl:
            return (
                f"{self.bootstrap_servers} ({self.security_protocol}, {self.sasl_mechanism} "
                f"as {self.sasl_username!r})"
            )
        if self.security_protocol != "PLAINTEXT":
            return f"{self.bootstrap_servers} ({self.security_protocol})"
        return self.bootstrap_servers

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of the TLS protocols (None for the others)."""
        if not self.uses_tls:
            return None
        context: ssl.SSLContext = create_ssl_context(
            cafile=self.ssl_cafile or None,
            certfile=self.ssl_certfile or None,
            keyfile=self.ssl_keyfile or None,
        )
        return context

    def options(self) -> dict[str, Any]:
        """The keyword arguments every aiokafka client takes: address and security."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        return options

    def producer(self, **options: Any) -> AIOKafkaProducer:
        """An aiokafka producer (not started) with ``options`` on top of the connection's."""
        return AIOKafkaProducer(**self.options(), **options)

    def consumer(self, *topics: str, **options: Any) -> AIOKafkaConsumer:
        """An aiokafka consumer (not started) of ``topics`` with ``options`` on top."""
        return AIOKafkaConsumer(*topics, **self.options(), **options)

    def admin(self, **options: Any) -> AIOKafkaAdminClient:
        """An aiokafka admin client (not started) with ``options`` on top."""
        return AIOKafkaAdminClient(**self.options(), **options)

    def faust_credentials(self) -> faust.auth.Credentials | None:
        """faust's ``broker_credentials`` for the same login (None for PLAINTEXT)."""
        import faust.auth

        if self.uses_sasl:
            return faust.auth.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password,
                mechanism=self.sasl_mechanism,
                ssl_context=self.ssl_context(),
            )
        if self.uses_tls:
            return faust.auth.SSLCredentials(self.ssl_context())
        return None

    async def check_login(self, timeout_s: float = 10.0) -> None:
        """Log in to the first reachable bootstrap server once, so that a refused login is one
        clear error instead of aiokafka's endless "Unable to bootstrap" retries.

        A server that cannot be reached is skipped: reaching Kafka is the clients' own
        business (with their deadlines). Only the broker's answer to the login is judged.

        Raises:
            KafkaLoginError: the broker refused the login or the TLS handshake; the message
                names the server, protocol, mechanism and principal, never the password.
        """
        if self.security_protocol == "PLAINTEXT":
            return
        options = self.options()
        options.pop("bootstrap_servers")
        options.pop("security_protocol")
        for server in self.bootstrap_servers.split(","):
            host, _, port = server.strip().rpartition(":")
            try:
                conn = await asyncio.wait_for(
                    create_conn(
                        host,
                        int(port),
                        security_protocol=self.security_protocol,
                        request_timeout_ms=int(timeout_s * 1000),
                        **options,
                    ),
                    timeout_s,
                )
            except (
                SaslAuthenticationFailed,
                IllegalSaslStateError,
                UnsupportedSaslMechanismError,
                TopicAuthorizationFailedError,
            ) as exc:
                raise KafkaLoginError(self._refused(server, exc)) from None
            except ssl.SSLError as exc:
                raise KafkaLoginError(
                    f"the TLS handshake with Kafka at {server.strip()} failed "
                    f"({self.security_protocol}, ssl_cafile={self.ssl_cafile or 'system'}): "
                    f"{exc.reason or exc}"
                ) from None
            except (OSError, TimeoutError, KafkaError):
                continue  # not reachable (yet): the clients' retries and deadlines handle that
            conn.close()
            return

    def _refused(self, server: str, exc: Exception) -> str:
        said = str(exc).replace(self.sasl_password, "***") if self.sasl_password else str(exc)
        return (
            f"Kafka at {server.strip()} refused the login of {self.principal} with "
            f"{self.security_protocol} {self.sasl_mechanism}: wrong username or password, or "
            f"a mechanism the broker does not enable ({said.strip() or type(exc).__name__})"
        )


def connection(kafka: KafkaConnection | str) -> KafkaConnection:
    """``kafka`` as a connection: a bare ``HOST:PORT[,...]`` string is a PLAINTEXT one."""
    return kafka if isinstance(kafka, KafkaConnection) else KafkaConnection(kafka)
