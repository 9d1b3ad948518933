"""TLS: a local redis-server with a self-signed certificate. Verification fails by default;
with the CA configured, the sync adapter (TLS socket path) and the asyncio adapter (its
take-over of a TLS transport) work."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from bantai import create_async_redis_storage, create_redis_storage
from bantai.testing import LocalRedisServer, free_port
from tests.models import Counter, increment


@pytest.fixture
def tls_server(
    tmp_path: Path, own_redis_server: Callable[..., LocalRedisServer]
) -> Iterator[tuple[int, str]]:
    if shutil.which("openssl") is None:
        pytest.fail(
            "openssl is needed for the TLS tests: apt-get install -y openssl", pytrace=False
        )
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    tls_port = free_port()
    own_redis_server(
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(cert),
        "--tls-auth-clients",
        "no",
    )
    yield tls_port, str(cert)


def test_untrusted_certificate_is_refused(tls_server: tuple[int, str]) -> None:
    port, _ = tls_server
    storage = create_redis_storage({"url": f"rediss://127.0.0.1:{port}/0"}, Counter)
    with pytest.raises(redis.exceptions.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        storage.get("c")
    storage.close()


def test_sync_adapter_over_tls(tls_server: tuple[int, str]) -> None:
    port, cert = tls_server
    client = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=cert)
    storage = create_redis_storage(
        {"client": client}, Counter, {"prefix": "tls:", "busy_poll_us": 200}
    )
    storage.set("big", {"count": 1})
    assert storage.update("c", increment) == Counter(count=1)
    storage.set_many({f"k{i}": {"count": i} for i in range(300)})
    assert storage.get_many([f"k{i}" for i in range(300)])["k299"] == Counter(count=299)
    storage.close()
    client.close()


def test_async_adapter_over_tls(tls_server: tuple[int, str]) -> None:
    port, cert = tls_server

    async def main() -> None:
        client = redis.asyncio.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=cert)
        storage = create_async_redis_storage({"client": client}, Counter, {"prefix": "tls:"})
        await storage.set_many({f"k{i}": {"count": i} for i in range(200)})
        got = await asyncio.gather(*(storage.get(f"k{i}") for i in range(200)))
        assert got == [Counter(count=i) for i in range(200)]
        assert await storage.update("c", increment) == Counter(count=1)
        await storage.close()
        await client.aclose()

    asyncio.run(main())
