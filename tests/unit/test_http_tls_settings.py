"""The HTTP API's TLS settings: web_certfile and web_keyfile (the worker serves HTTPS),
api_cafile (what callers trust), and how they are checked when the settings are loaded; and a
worker's answer when it cannot verify the peer it forwards a read to."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from streams import api_tls
from streams.auth import check_can_serve
from streams.config import load_settings
from streams.errors import ConfigurationError
from streams.worker import start_line
from tests.http_certificates import ServerFiles, make_authority, make_server


@pytest.fixture
def server(tmp_path: Path) -> ServerFiles:
    return make_server(make_authority(tmp_path / "ca"), tmp_path / "server")


def tls(server: ServerFiles, **more: object) -> dict[str, object]:
    return {"web_certfile": str(server.certfile), "web_keyfile": str(server.keyfile), **more}


def test_the_files_come_from_the_environment(server: ServerFiles, tmp_path: Path) -> None:
    cafile = make_authority(tmp_path / "other").cafile
    settings = load_settings(
        environ={
            "ORCHESTRATOR_WEB_CERTFILE": str(server.certfile),
            "ORCHESTRATOR_WEB_KEYFILE": str(server.keyfile),
            "ORCHESTRATOR_API_CAFILE": str(cafile),
        }
    )
    assert settings.web_certfile == str(server.certfile)
    assert settings.web_keyfile == str(server.keyfile)
    assert settings.api_cafile == str(cafile)


def test_a_worker_serving_tls_derives_an_https_canonical_url(server: ServerFiles) -> None:
    settings = load_settings(overrides=tls(server, web_port=7443), environ={})
    assert settings.serves_https
    assert settings.canonical_url == "https://127.0.0.1:7443"
    assert load_settings(overrides={"web_port": 7443}, environ={}).canonical_url == (
        "http://127.0.0.1:7443"
    )


def test_an_https_advertised_url_is_taken_and_an_http_one_refused(server: ServerFiles) -> None:
    taken = load_settings(overrides=tls(server, advertised_url="https://w1:7443"), environ={})
    assert taken.canonical_url == "https://w1:7443"
    with pytest.raises(ConfigurationError) as caught:
        load_settings(overrides=tls(server, advertised_url="http://w1:7443"), environ={})
    assert str(caught.value) == (
        "advertised_url 'http://w1:7443' must be an https:// URL: web_certfile and"
        " web_keyfile make this worker serve HTTPS only"
    )


@pytest.mark.parametrize("given", ["web_certfile", "web_keyfile"])
def test_the_certificate_and_key_are_set_together(server: ServerFiles, given: str) -> None:
    with pytest.raises(ConfigurationError, match="set web_certfile and web_keyfile together"):
        load_settings(overrides={given: tls(server)[given]}, environ={})


@pytest.mark.parametrize("key", ["web_certfile", "web_keyfile", "api_cafile"])
def test_an_unreadable_file_is_refused_by_its_key(
    server: ServerFiles, tmp_path: Path, key: str
) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigurationError, match=f"^{key}: cannot read {re.escape(str(missing))}$"):
        load_settings(overrides={**tls(server), key: str(missing)}, environ={})


def test_a_key_that_is_not_the_certificates_is_refused_without_showing_it(
    server: ServerFiles, tmp_path: Path
) -> None:
    other = make_server(make_authority(tmp_path / "ca2"), tmp_path / "other")
    with pytest.raises(ConfigurationError) as caught:
        load_settings(overrides=tls(server, web_keyfile=str(other.keyfile)), environ={})
    message = str(caught.value)
    assert message.startswith("web_certfile, web_keyfile: cannot load ")
    assert "do they match?" in message
    assert "PRIVATE KEY" not in message and other.keyfile.read_text()[40:80] not in message


def test_an_encrypted_key_is_refused_without_asking_for_a_password(
    server: ServerFiles, tmp_path: Path
) -> None:
    encrypted = make_server(make_authority(tmp_path / "ca3"), tmp_path / "enc", password=b"pw")
    with pytest.raises(ConfigurationError) as caught:
        load_settings(
            overrides={
                "web_certfile": str(encrypted.certfile),
                "web_keyfile": str(encrypted.keyfile),
            },
            environ={},
        )
    assert str(caught.value) == (
        f"web_keyfile: {encrypted.keyfile} is encrypted; the worker needs an unencrypted PEM key"
    )


def test_a_ca_bundle_without_a_certificate_is_refused(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(
        ConfigurationError, match=f"^api_cafile: cannot load {re.escape(str(not_pem))}"
    ):
        load_settings(overrides={"api_cafile": str(not_pem)}, environ={})


def test_a_tls_worker_on_a_public_address_still_needs_the_token(server: ServerFiles) -> None:
    # TLS encrypts; the token says who may read: one does not replace the other
    settings = load_settings(
        overrides=tls(server, web_host="10.0.0.5", advertised_url="https://10.0.0.5:6066"),
        environ={},
    )
    with pytest.raises(ConfigurationError, match="is not a loopback address: set api_token"):
        check_can_serve(settings)
    check_can_serve(dataclasses.replace(settings, api_token="t0ken"))


def test_the_start_line_says_https(server: ServerFiles) -> None:
    settings = load_settings(overrides=tls(server, web_port=7443), environ={})
    message, fields = start_line(settings, [])
    assert (message % fields).count("HTTP https://127.0.0.1:7443") == 1
    key_text = server.keyfile.read_text()
    assert key_text not in repr(settings) and key_text not in message % fields


async def test_a_request_a_worker_cannot_forward_to_an_untrusted_peer_answers_502(
    server: ServerFiles,
) -> None:
    # a real HTTPS peer whose CA the forwarding side does not trust (the system's store)
    async def owner(request: web.Request) -> web.StreamResponse:
        return web.json_response({"task_id": "t1"})

    peer = web.Application()
    peer.router.add_get("/tasks/t1", owner)
    peer_runner = web.AppRunner(peer)
    await peer_runner.setup()
    context = api_tls.server_context(str(server.certfile), str(server.keyfile))
    await web.TCPSite(peer_runner, "127.0.0.1", 0, ssl_context=context).start()
    peer_url = f"https://127.0.0.1:{peer_runner.addresses[0][1]}"

    async def forward(request: web.Request) -> web.StreamResponse:
        async with (
            aiohttp.ClientSession(connector=api_tls.connector("")) as http,
            http.get(f"{peer_url}/tasks/t1") as response,
        ):
            return web.json_response(await response.json())

    forwarder = web.Application(middlewares=[api_tls.refuse_untrusted_peers])
    forwarder.router.add_get("/tasks/t1", forward)
    try:
        async with TestClient(TestServer(forwarder)) as client:
            response = await client.get("/tasks/t1")
            assert response.status == 502
            document = await response.json()
        assert document["error"] == "bad_gateway"
        assert document["detail"].startswith(
            f"this worker could not forward the request: certificate verify failed for the"
            f" worker at {peer_url}: "
        )
        assert "api_cafile" in document["detail"]
    finally:
        await peer_runner.cleanup()
