"""What sudo-api's metrics tell of the host (sudo_api.monitor) and of the provisioner's socket
(sudo_core.provisioner_client), which sudo-observability's alert rules read."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import uuid
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ports import free_port
from prometheus_client import REGISTRY
from provisioner_socket import serving

from sudo_api import monitor
from sudo_core import config
from sudo_core.provisioner_client import ProvisionerClient, ProvisionerError, RuntimeView


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def certificate(tmp_path: Path, name: str, issued: datetime.datetime, days: int) -> ssl.SSLContext:
    """A server context holding a self-signed certificate for `name`, valid from `issued`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(issued)
        .not_valid_after(issued + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return context


async def test_the_certificate_dates_are_those_the_site_serves(tmp_path: Path):
    issued = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    server_context = certificate(tmp_path, "sudo.lan", issued, days=90)
    port = free_port()
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port, ssl=server_context)
    try:
        settings = config.Settings(web=config.WebSettings(domain="sudo.lan", https_port=port))
        await monitor.Monitor(settings, None, None).certificates()  # type: ignore[arg-type]
    finally:
        server.close()
        await server.wait_closed()
    assert sample("sudo_web_certificate_issued_timestamp_seconds", domain="sudo.lan") == issued.timestamp()
    expires = issued + datetime.timedelta(days=90)
    assert sample("sudo_web_certificate_expiry_timestamp_seconds", domain="sudo.lan") == expires.timestamp()

    # Nothing listening (Caddy stopped): the last dates stay, and go on counting towards expiry.
    await monitor.Monitor(settings, None, None).certificates()  # type: ignore[arg-type]
    assert sample("sudo_web_certificate_expiry_timestamp_seconds", domain="sudo.lan") == expires.timestamp()


class Provisioner:
    def __init__(self, runtimes: list[RuntimeView] | Exception) -> None:
        self.runtimes = runtimes

    async def list(self, stats: bool = False) -> list[RuntimeView]:
        assert stats
        if isinstance(self.runtimes, Exception):
            raise self.runtimes
        return self.runtimes


async def test_each_running_runtimes_memory_with_its_limit_until_the_provisioner_fails():
    family, exited = uuid.uuid4(), uuid.uuid4()
    settings = config.Settings(runtime=config.RuntimeSettings(memory="1g"))
    url = "http://10.213.0.5:8642"
    runtimes = [
        RuntimeView(
            family, "hermes-a", "running", url, url, url, "sudo-hermes", "h", 1.0, memory_bytes=300_000_000
        ),
        RuntimeView(exited, "hermes-b", "exited", None, None, None, "sudo-hermes", "h", 1.0),
    ]
    await monitor.Monitor(settings, None, Provisioner(runtimes)).runtimes()  # type: ignore[arg-type]
    assert sample("sudo_runtime_memory_bytes", family=str(family)) == 300_000_000
    assert sample("sudo_runtime_memory_limit_bytes", family=str(family)) == 2**30
    assert sample("sudo_runtime_memory_bytes", family=str(exited)) is None

    failing = Provisioner(ProvisionerError(500, {"error": "internal error"}))
    await monitor.Monitor(settings, None, failing).runtimes()  # type: ignore[arg-type]
    assert sample("sudo_runtime_memory_bytes", family=str(family)) is None


async def test_the_client_tells_whether_the_socket_answers_and_counts_failed_spawns(tmp_path: Path):
    socket = tmp_path / "provisioner.sock"
    family = uuid.uuid4()
    failures = sample("sudo_runtime_spawn_failures_total") or 0
    async with ProvisionerClient(socket) as client:
        with pytest.raises(OSError):  # no socket: aiohttp's ClientConnectorError is an OSError
            await client.ensure(family)
        assert sample("sudo_provisioner_socket_up", socket=str(socket)) == 0

        async def spawn_failed(request: web.Request) -> web.Response:
            return web.json_response({"error": "the runtime exited while starting"}, status=502)

        app = web.Application()
        app.router.add_post("/v1/runtimes/{family}/ensure", spawn_failed)
        async with serving(app, socket):
            with pytest.raises(ProvisionerError):
                await client.ensure(family)
    assert sample("sudo_provisioner_socket_up", socket=str(socket)) == 1
    assert sample("sudo_runtime_spawn_failures_total") == failures + 1
