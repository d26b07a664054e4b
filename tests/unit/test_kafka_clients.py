"""Every Kafka client is built in one place, with the security settings; secrets stay unsaid."""

from __future__ import annotations

import ast
import ssl
from pathlib import Path

import pytest

from streams.config import load_settings
from streams.errors import ConfigurationError
from streams.kafka_clients import KafkaConnection

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"}
THE_PLACE = ROOT / "streams" / "kafka_clients.py"
PASSWORD = "s3cret-Pa55"


def _calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def test_no_kafka_client_is_built_outside_kafka_clients() -> None:
    built_elsewhere = [
        f"{path.relative_to(ROOT)}:{call.lineno}"
        for folder in ("streams", "projections", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != THE_PLACE
        for call in _calls(path)
        if _name(call) in CLIENTS
    ]
    assert built_elsewhere == [], (
        "build Kafka clients with KafkaConnection.producer/consumer/admin "
        f"(streams/kafka_clients.py), so they get the security settings: {built_elsewhere}"
    )


def test_the_example_consumer_passes_its_security_options_to_its_client() -> None:
    # the example imports nothing of the orchestrator (its contract is the schema alone), so
    # it builds its own client, with the security options of its command line
    example = ROOT / "examples" / "task_completed_consumer.py"
    clients = [call for call in _calls(example) if _name(call) in CLIENTS]
    assert clients, "the example builds no Kafka client any more: update this test"
    for call in clients:
        spread = [k for k in call.keywords if k.arg is None]
        assert spread, f"{example.name}:{call.lineno} builds a client without **security"


def test_fausts_app_gets_the_same_credentials() -> None:
    apps = [
        call
        for path in sorted((ROOT / "streams").rglob("*.py"))
        for call in _calls(path)
        if isinstance(call.func, ast.Attribute)
        and call.func.attr == "App"
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id == "faust"
    ]
    assert len(apps) == 1
    assert "broker_credentials" in {k.arg for k in apps[0].keywords}


def _secure(**extra: str) -> dict[str, str]:
    return {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "worker",
        **extra,
    }


def test_sasl_ssl_options_carry_the_login_and_a_tls_context() -> None:
    settings = load_settings(overrides=_secure(sasl_password=PASSWORD))
    options = settings.kafka.options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "worker"
    assert options["sasl_plain_password"] == PASSWORD
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    credentials = settings.kafka.faust_credentials()
    assert credentials is not None
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512"


def test_plaintext_options_are_the_address_alone() -> None:
    kafka = load_settings(overrides={"bootstrap_servers": "h1:9092,h2:9092"}).kafka
    assert kafka.options() == {
        "bootstrap_servers": "h1:9092,h2:9092",
        "security_protocol": "PLAINTEXT",
    }
    assert kafka.faust_credentials() is None
    assert kafka.describe() == "h1:9092,h2:9092"


def test_the_password_is_in_no_repr_description_or_settings_repr() -> None:
    settings = load_settings(overrides=_secure(sasl_password=PASSWORD))
    for text in (repr(settings), repr(settings.kafka), settings.kafka.describe(), str(settings)):
        assert PASSWORD not in text
    assert "sasl_password=<set>" in repr(settings)
    assert "'worker'" in settings.kafka.describe()
    assert PASSWORD not in repr(settings.kafka.faust_credentials())


def test_the_password_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    from_env = load_settings(overrides=_secure(), environ={"ORCHESTRATOR_SASL_PASSWORD": PASSWORD})
    assert from_env.sasl_password == PASSWORD
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    from_file = load_settings(overrides=_secure(sasl_password_file=str(secret)), environ={})
    assert from_file.sasl_password == PASSWORD


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"security_protocol": "TLS"}, "security_protocol must be one of"),
        (
            {"security_protocol": "SASL_SSL", "sasl_username": "w", "sasl_password": "p"},
            "needs sasl_mechanism",
        ),
        ({**_secure(), "sasl_mechanism": "GSSAPI", "sasl_password": "p"}, "needs sasl_mechanism"),
        (_secure(), "needs sasl_username and sasl_password"),
        ({"sasl_mechanism": "PLAIN"}, "need a SASL security_protocol"),
        ({"ssl_cafile": "/etc/hostname"}, "need a TLS security_protocol"),
        ({"security_protocol": "SSL", "ssl_certfile": "/etc/hostname"}, "together"),
        ({"security_protocol": "SSL", "ssl_cafile": "/no/such/ca.pem"}, "ssl_cafile: cannot read"),
        (_secure(sasl_password="p", sasl_password_file="/etc/hostname"), "not both"),
        (_secure(sasl_password_file="/no/such/file"), "sasl_password_file: cannot read"),
    ],
)
def test_security_settings_that_do_not_fit_are_refused_by_name(
    overrides: dict[str, str], says: str
) -> None:
    with pytest.raises(ConfigurationError, match=says) as refused:
        load_settings(overrides=overrides, environ={})
    assert "s3cret" not in str(refused.value)


def test_a_password_that_is_not_a_string_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigurationError) as refused:
        load_settings(overrides={**_secure(), "sasl_password": 123456789}, environ={})
    assert "123456789" not in str(refused.value)


def test_the_lowercase_protocol_and_mechanism_are_taken() -> None:
    settings = load_settings(
        overrides={
            **_secure(sasl_password="p"),
            "security_protocol": "sasl_ssl",
            "sasl_mechanism": "scram-sha-512",
        },
        environ={},
    )
    assert (settings.security_protocol, settings.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")


def test_a_connection_pickles_for_the_replays_processes() -> None:
    import pickle

    kafka = KafkaConnection("h:1", "SASL_PLAINTEXT", "PLAIN", "u", PASSWORD)
    assert pickle.loads(pickle.dumps(kafka)) == kafka
