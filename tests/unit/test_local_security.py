"""The secure local broker's files and properties (streams.local_security), without a broker."""

from __future__ import annotations

import json
import ssl
import stat
from pathlib import Path

from streams.config import load_settings
from streams.local_security import CONTROLLER, SCRAM_USERS, LocalSecurity
from streams.localbroker import render_server_properties


def _made(tmp_path: Path) -> LocalSecurity:
    security = LocalSecurity.of(tmp_path)
    security.prepare()
    return security


def test_secrets_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    security = _made(tmp_path)
    private = [security.keystore, *(security.password_file(n) for n in (*SCRAM_USERS, CONTROLLER))]
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert len(set(security.passwords())) == len(SCRAM_USERS) + 1, "a password per principal"


def test_prepare_keeps_what_it_made(tmp_path: Path) -> None:
    first = _made(tmp_path).passwords()
    assert _made(tmp_path).passwords() == first, "the SCRAM users in the log keep them"


def test_the_ca_verifies_the_brokers_certificate(tmp_path: Path) -> None:
    security = _made(tmp_path)
    context = ssl.create_default_context(cafile=str(security.ca_file))
    context.load_cert_chain(security.keystore)  # key and chain in one PEM, as Kafka reads it
    assert context.get_ca_certs()[0]["subject"] == (
        (("commonName", "orchestrator local Kafka CA"),),
    )


def test_no_listener_answers_without_a_login(tmp_path: Path) -> None:
    security = _made(tmp_path)
    base = render_server_properties(9093, 9094, tmp_path / "log")
    props = dict(
        line.split("=", 1) for line in security.server_properties(base, 9093, 9094).splitlines()
    )
    assert props["listeners"] == "SASL_SSL://127.0.0.1:9093,CONTROLLER://127.0.0.1:9094"
    assert "PLAINTEXT:PLAINTEXT" not in props["listener.security.protocol.map"]
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT"
    assert props["super.users"] == "User:admin;User:controller"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["log.dirs"] == str(tmp_path / "log"), "the rest of the base is kept"


def test_each_config_file_loads_as_its_principal(tmp_path: Path) -> None:
    security = _made(tmp_path)
    security.write_config_files("127.0.0.1:9093")
    for name in SCRAM_USERS:
        path = security.config_file(name)
        assert "password" not in json.loads(path.read_text()).keys() - {"sasl_password_file"}
        settings = load_settings(file=path)
        assert settings.kafka.principal == f"User:{name}"
        assert settings.sasl_password == security.password(name)
        assert security.password(name) not in path.read_text()


def test_format_arguments_add_every_scram_user_and_redact_hides_them(tmp_path: Path) -> None:
    security = _made(tmp_path)
    arguments = security.format_arguments()
    assert arguments[::2] == ["--add-scram"] * len(SCRAM_USERS)
    for name, argument in zip(SCRAM_USERS, arguments[1::2], strict=True):
        assert argument == f"SCRAM-SHA-512=[name={name},password={security.password(name)}]"
    assert security.redact(" ".join(arguments)).count("***") == len(SCRAM_USERS)
