"""A certificate authority and server certificates made in a test, for the workers' HTTPS.

Elliptic-curve keys (P-256): made in milliseconds, so each test module has its own CA.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from streams.certificates import Issued, new_authority, new_leaf

VALID = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate (the bundle callers trust) and its key, in memory and on disk."""

    cafile: Path
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class ServerFiles:
    """A server's PEM certificate and unencrypted key, as ``web_certfile`` and ``web_keyfile``."""

    certfile: Path
    keyfile: Path


def make_authority(directory: Path, name: str = "test CA") -> Authority:
    """A self-signed CA, its certificate written to ``directory/<name>.pem``."""
    made = new_authority(name, VALID)
    directory.mkdir(parents=True, exist_ok=True)
    cafile = directory / f"{name.replace(' ', '-')}.pem"
    cafile.write_bytes(made.certificate_pem())
    return Authority(cafile, made.certificate, made.key)


def make_server(
    authority: Authority,
    directory: Path,
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    password: bytes | None = None,
) -> ServerFiles:
    """A server certificate for ``hosts`` (IP addresses and DNS names), signed by
    ``authority``; its key encrypted with ``password`` if one is given."""
    server = new_leaf(Issued(authority.certificate, authority.key), hosts, VALID)
    directory.mkdir(parents=True, exist_ok=True)
    certfile, keyfile = directory / "server.pem", directory / "server.key"
    certfile.write_bytes(server.certificate_pem())
    keyfile.write_bytes(server.key_pem(password))
    keyfile.chmod(0o600)
    return ServerFiles(certfile, keyfile)
