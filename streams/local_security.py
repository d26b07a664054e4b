"""The secure local broker (``orchestrator kafka up --secure``): TLS, SCRAM users and ACLs.

For one data directory, made once and kept (the SCRAM users live in the formatted log, so
their passwords must outlive a restart), in ``<data_dir>/secure/``:

- ``ca.pem``: a certificate authority made for this broker (its key is thrown away once the
  broker's certificate is signed: nothing else is ever issued);
- ``broker.pem``: the broker's key and certificate chain (a PEM key store, mode 0600), for
  127.0.0.1 and localhost;
- ``<principal>.password``: a random password per principal (mode 0600): ``admin`` (super
  user: ``kafka up`` itself and operators), ``worker``, ``producer``, ``consumer``, and
  ``controller`` (the broker's own login to its controller listener);
- ``<principal>.json``: a ready-to-use config file (``--config`` or
  ``load_settings(file=...)``) that logs in as that principal with ``sasl_password_file``.

The client listener is ``SASL_SSL`` with ``SCRAM-SHA-512``. The controller listener, on
127.0.0.1, is ``SASL_PLAINTEXT`` with ``PLAIN`` (KRaft cannot check SCRAM there: the SCRAM
credentials are in the metadata that listener serves) and knows only the ``controller`` user:
nothing on the broker answers without a login. ACLs are checked by KRaft's
``StandardAuthorizer``; ``admin`` and ``controller`` are its super users, everyone else gets
only what :mod:`streams.acls` grants.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka.protocol.admin import CreateAclsRequest_v1, CreateAclsResponse_v1
from aiokafka.protocol.api import Request

from streams.acls import Acl
from streams.errors import LocalBrokerError
from streams.kafka_clients import KafkaConnection

MECHANISM = "SCRAM-SHA-512"
PROTOCOL = "SASL_SSL"
ADMIN = "admin"
CONTROLLER = "controller"
CLIENT_PRINCIPALS = ("worker", "producer", "consumer")
"""The principals that get a config file besides the admin (see :mod:`streams.acls`)."""
SCRAM_USERS = (ADMIN, *CLIENT_PRINCIPALS)
DIRECTORY = "secure"
CERT_DAYS = 825
ALLOW = 3  # Kafka's AclPermissionType.ALLOW


@dataclass(frozen=True)
class LocalSecurity:
    """The secure setup of one data directory (see the module docstring)."""

    directory: Path

    @classmethod
    def of(cls, data_dir: Path) -> LocalSecurity:
        """The setup of ``data_dir`` (made or not)."""
        return cls(data_dir / DIRECTORY)

    @property
    def ca_file(self) -> Path:
        """The CA certificate clients trust (``ssl_cafile``)."""
        return self.directory / "ca.pem"

    @property
    def keystore(self) -> Path:
        """The broker's key and certificate chain."""
        return self.directory / "broker.pem"

    def password_file(self, principal: str) -> Path:
        """Where ``principal``'s password is."""
        return self.directory / f"{principal}.password"

    def config_file(self, principal: str) -> Path:
        """The config file that logs in as ``principal``."""
        return self.directory / f"{principal}.json"

    def exists(self) -> bool:
        """Whether the setup was made (every file is there)."""
        names = (*SCRAM_USERS, CONTROLLER)
        files = [self.ca_file, self.keystore, *map(self.password_file, names)]
        return all(path.is_file() for path in files)

    def prepare(self) -> None:
        """Make the CA, the broker's certificate and the passwords, unless made already."""
        if self.exists():
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        ca_pem, chain_and_key = _certificates()
        write_private(self.keystore, chain_and_key)
        self.ca_file.write_bytes(ca_pem)
        for name in (*SCRAM_USERS, CONTROLLER):
            write_private(self.password_file(name), secrets.token_urlsafe(24).encode() + b"\n")

    def password(self, principal: str) -> str:
        """``principal``'s password (never to be printed)."""
        return self.password_file(principal).read_text().strip()

    def passwords(self) -> list[str]:
        """Every password of the setup: what must appear in no output."""
        return [self.password(name) for name in (*SCRAM_USERS, CONTROLLER)]

    def server_properties(self, base: str, port: int, controller_port: int) -> str:
        """``base`` (the plain broker's properties) with its listeners made secure."""
        admin, controller = self.password(ADMIN), self.password(CONTROLLER)
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
        plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
        secure = {
            "listeners": f"SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
            "inter.broker.listener.name": "SASL_SSL",
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": (
                f'{scram} required username="{ADMIN}" password="{admin}";'
            ),
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": (
                f'{plain} required username="{CONTROLLER}" password="{controller}" '
                f'user_{CONTROLLER}="{controller}";'
            ),
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca_file),
            "ssl.endpoint.identification.algorithm": "https",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN};User:{CONTROLLER}",
            "allow.everyone.if.no.acl.found": "false",
        }
        lines = [line for line in base.splitlines() if line.partition("=")[0].strip() not in secure]
        return "\n".join([*lines, *(f"{key}={value}" for key, value in secure.items())]) + "\n"

    def format_arguments(self) -> list[str]:
        """``kafka-storage format``'s ``--add-scram`` arguments: the SCRAM users, with their
        passwords (for an argument file, never a command line)."""
        arguments = []
        for name in SCRAM_USERS:
            arguments += [
                "--add-scram",
                f"{MECHANISM}=[name={name},password={self.password(name)}]",
            ]
        return arguments

    def client_config(self, principal: str, bootstrap_servers: str) -> dict[str, Any]:
        """The settings that log in to the broker as ``principal``."""
        return {
            "bootstrap_servers": bootstrap_servers,
            "security_protocol": PROTOCOL,
            "sasl_mechanism": MECHANISM,
            "sasl_username": principal,
            "sasl_password_file": str(self.password_file(principal)),
            "ssl_cafile": str(self.ca_file),
        }

    def write_config_files(self, bootstrap_servers: str) -> None:
        """One config file per principal (admin, worker, producer, consumer)."""
        for name in SCRAM_USERS:
            document = json.dumps(self.client_config(name, bootstrap_servers), indent=2) + "\n"
            write_private(self.config_file(name), document.encode())

    def connection(self, principal: str, bootstrap_servers: str) -> KafkaConnection:
        """A connection that logs in as ``principal``."""
        return KafkaConnection(
            bootstrap_servers,
            security_protocol=PROTOCOL,
            sasl_mechanism=MECHANISM,
            sasl_username=principal,
            sasl_password=self.password(principal),
            ssl_cafile=str(self.ca_file),
        )

    def redact(self, text: str) -> str:
        """``text`` with every password of the setup replaced by ``***``."""
        for password in self.passwords():
            text = text.replace(password, "***")
        return text


class _CreateAcls(Request[CreateAclsRequest_v1]):  # type: ignore[misc]  # untyped base
    """Many ACL bindings in one request (aiokafka's own takes one)."""

    API_KEY = 30

    def __init__(self, acls: list[Acl]) -> None:
        self._acls = acls

    def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
        return request_struct_class(
            [
                (
                    int(acl.resource_type),
                    acl.resource_name,
                    int(acl.pattern_type),
                    acl.principal,
                    "*",
                    int(acl.operation),
                    ALLOW,
                )
                for acl in self._acls
            ]
        )


async def apply_acls(admin_connection: KafkaConnection, acls: list[Acl]) -> None:
    """Create ``acls`` on the cluster (as a super user); those already there stay as they are.

    Raises:
        LocalBrokerError: the broker refused a binding (its reason is in the message).
    """
    admin = admin_connection.admin(request_timeout_ms=15_000)
    try:
        await admin.start()
        response = await admin._send_request(_CreateAcls(acls))
    finally:
        await admin.close()
    assert isinstance(response, CreateAclsResponse_v1)
    refused = [
        f"{acl}: {message or code}"
        for acl, (code, message) in zip(acls, response.creation_responses, strict=True)
        if code
    ]
    if refused:
        raise LocalBrokerError("the broker refused ACLs: " + "; ".join(refused))


def _certificates() -> tuple[bytes, bytes]:
    """A new CA's certificate, and a broker key with its chain (key, leaf, CA) in PEM."""
    from streams.certificates import new_authority, new_leaf

    valid = datetime.timedelta(days=CERT_DAYS)
    authority = new_authority("orchestrator local Kafka CA", valid)
    broker = new_leaf(authority, ("localhost", "127.0.0.1"), valid, client_auth=True)
    ca_pem = authority.certificate_pem()
    return ca_pem, broker.key_pem() + broker.certificate_pem() + ca_pem


def write_private(path: Path, data: bytes | str) -> None:
    """Write ``path`` readable by its owner only (created so: never readable by others)."""
    if isinstance(data, str):
        data = data.encode()
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.unlink(missing_ok=True)
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    scratch.replace(path)
