"""The HTTP API's token settings (file, environment, masking) and where a worker may listen."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.auth import authorization, check_can_serve, is_authorised, is_loopback
from streams.config import Settings, load_settings
from streams.errors import ConfigurationError
from streams.worker import start_line

TOKEN = "s3cret-token-for-the-unit-tests"


def test_the_token_comes_from_the_environment() -> None:
    settings = load_settings(environ={"ORCHESTRATOR_API_TOKEN": TOKEN})
    assert settings.api_token == TOKEN


def test_the_token_file_is_read_with_its_trailing_newline_stripped(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    settings = load_settings(environ={"ORCHESTRATOR_API_TOKEN_FILE": str(path)})
    assert settings.api_token == TOKEN


@pytest.mark.parametrize("content", ["", "\n"])
def test_an_empty_token_file_is_refused_by_name(tmp_path: Path, content: str) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=f"api_token_file: {path} holds no token"):
        load_settings(overrides={"api_token_file": str(path)}, environ={})


def test_an_unreadable_token_file_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "missing"
    with pytest.raises(ConfigurationError, match=f"api_token_file: cannot read {path}"):
        load_settings(overrides={"api_token_file": str(path)}, environ={})


def test_a_token_and_a_token_file_together_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    with pytest.raises(ConfigurationError, match="not both"):
        load_settings(overrides={"api_token_file": str(path), "api_token": TOKEN}, environ={})


@pytest.mark.parametrize("token", [f"{TOKEN} with spaces", f"{TOKEN}\u00e9", 12345678])
def test_a_bad_token_is_refused_without_showing_it(token: object) -> None:
    with pytest.raises(ConfigurationError, match="api_token must be") as caught:
        load_settings(overrides={"api_token": token}, environ={})
    assert str(token) not in str(caught.value)


def test_no_repr_or_start_line_shows_the_token() -> None:
    settings = Settings(api_token=TOKEN)
    assert TOKEN not in repr(settings) and TOKEN not in str(settings)
    assert "api_token=<set>" in repr(settings)
    assert "api_token=<unset>" in repr(Settings())
    message, fields = start_line(settings, [])
    assert TOKEN not in message % fields
    assert "bearer token required" in message % fields


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("128.0.0.1", False),
        ("worker-1.internal", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_worker_on_a_public_address_needs_a_token() -> None:
    check_can_serve(Settings(web_host="127.0.0.1"))
    check_can_serve(Settings(web_host="10.0.0.5", api_token=TOKEN))
    with pytest.raises(ConfigurationError, match=r"web_host '10\.0\.0\.5' is not a loopback"):
        check_can_serve(Settings(web_host="10.0.0.5"))


def test_a_worker_on_a_wildcard_address_needs_an_advertised_url() -> None:
    with pytest.raises(ConfigurationError, match="set advertised_url"):
        check_can_serve(Settings(web_host="0.0.0.0", api_token=TOKEN))
    check_can_serve(
        Settings(web_host="0.0.0.0", api_token=TOKEN, advertised_url="http://10.0.0.5:6066")
    )


def test_the_advertised_url_defaults_to_the_bound_address_and_is_checked() -> None:
    assert Settings(web_host="10.0.0.5", web_port=7000).canonical_url == "http://10.0.0.5:7000"
    settings = load_settings(overrides={"advertised_url": "https://w1.example:443"}, environ={})
    assert settings.canonical_url == "https://w1.example:443"
    with pytest.raises(ConfigurationError, match="advertised_url must be an http"):
        load_settings(overrides={"advertised_url": "w1:6066"}, environ={})


def test_the_bearer_header_is_checked_exactly() -> None:
    header = authorization(TOKEN)["Authorization"]
    assert is_authorised(header, TOKEN)
    assert is_authorised(f"bearer {TOKEN}", TOKEN)
    assert not is_authorised(None, TOKEN)
    assert not is_authorised(f"Bearer {TOKEN}x", TOKEN)
    assert not is_authorised(f"Basic {TOKEN}", TOKEN)
    assert not is_authorised("Bearer ", TOKEN)
    assert authorization("") == {}
