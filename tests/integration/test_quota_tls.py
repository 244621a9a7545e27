"""The shared quota store over TLS (`rediss://`), against a real redis-server (or valkey-server)
listening only on a TLS port with a test CA (tests/servers/redis.py, tests/servers/slapd.py's
PKI): both of policyd's connections (the scripts' pipe, redis-py's for the admin commands)
verify the certificate and the name, trust only `ssl_ca_certs` when the URL names it, and show
a client certificate (`ssl_certfile`, `ssl_keyfile`) to a server that wants one. A store that
fails verification is unavailable: the guard counts in memory, nothing is sent in clear."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from policyd.config.quotas import QuotasConfig
from policyd.quotas.guard import GuardedStore
from policyd.quotas.store import Charge, QuotaStoreError
from tests.servers.redis import RedisServer, server_binary
from tests.servers.requirements import require_binaries
from tests.servers.slapd import Pki, binary, make_pki

pytestmark = pytest.mark.timeout(60)

WHY = "TLS quota store tests need a Valkey/Redis server and openssl (Debian: redis-server)"
ONE = [Charge("messages_per_hour", 100, 3600.0, 1)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    require_binaries(server_binary(), "openssl", why=WHY)
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_server(tmp: Path, pki: Pki, **kw: Any) -> Iterator[RedisServer]:
    server = RedisServer(tmp, tls=pki, bind=("127.0.0.1", "127.0.0.2"), **kw).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tls_redis(tmp_path: Path, pki: Pki) -> Iterator[RedisServer]:
    yield from tls_server(tmp_path / "redis", pki)


@pytest.fixture
def mtls_redis(tmp_path: Path, pki: Pki) -> Iterator[RedisServer]:
    yield from tls_server(tmp_path / "redis", pki, tls_auth_clients=True)


def client_cert(pki: Pki) -> tuple[Path, Path]:
    """A client certificate (extendedKeyUsage clientAuth) signed by the test CA."""
    d = pki.dir
    key, csr, crt, ext = (d / f"client.{x}" for x in ("key", "csr", "crt", "ext"))
    if crt.exists():
        return crt, key
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = [binary("openssl"), "req", "-new", *ec, "-keyout", str(key), "-out", str(csr)]
    subprocess.run([*run, "-subj", "/CN=policyd"], check=True, capture_output=True)
    ext.write_text("basicConstraints=critical,CA:FALSE\nextendedKeyUsage=clientAuth\n")
    sign = [binary("openssl"), "x509", "-req", "-in", str(csr), "-CA", str(pki.ca_cert)]
    sign += ["-CAkey", str(pki.ca_key), "-CAcreateserial", "-out", str(crt), "-days", "2"]
    subprocess.run([*sign, "-extfile", str(ext)], check=True, capture_output=True)
    return crt, key


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


def store(url: str) -> Any:
    from policyd.quotas.redis_store import RedisStore

    return RedisStore(url, 2.0)


def test_both_connections_work_over_tls(tls_redis: RedisServer) -> None:
    assert tls_redis.url.startswith("rediss://127.0.0.1:")

    async def body() -> None:
        s = store(tls_redis.url)
        try:
            assert (await s.charge("alice", ONE, True)).allowed  # the scripts' pipe
            assert [u.used for u in await s.usage("alice", ONE)] == [1]
            await s.suspend("alice", "test")  # redis-py
            assert await s.suspension("alice") == "test"
            out = await s.charge("alice", ONE, True)
            assert not out.allowed and out.suspended == "test"
        finally:
            await s.close()

    run(body)


def test_the_wrong_ca_is_refused_by_both_connections(tls_redis: RedisServer, pki: Pki) -> None:
    url = tls_redis.url.replace(str(pki.ca_cert), str(pki.wrong_ca_cert))

    async def body() -> None:
        s = store(url)
        try:
            with pytest.raises(QuotaStoreError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
                await s.charge("alice", ONE, True)
            with pytest.raises(QuotaStoreError):
                await s.suspension("alice")
        finally:
            await s.close()

    run(body)


def test_a_name_the_certificate_does_not_carry_is_refused(tls_redis: RedisServer) -> None:
    # (the server also listens on 127.0.0.2, which its certificate does not name)
    url = tls_redis.url.replace("rediss://127.0.0.1:", "rediss://127.0.0.2:")

    async def body() -> None:
        s = store(url)
        try:
            with pytest.raises(QuotaStoreError, match="match|hostname|IP address"):
                await s.charge("alice", ONE, True)
            with pytest.raises(QuotaStoreError):
                await s.suspend("alice", "x")
        finally:
            await s.close()

    run(body)


def test_an_unverifiable_store_is_unavailable_and_the_guard_counts_in_memory(
    tls_redis: RedisServer, pki: Pki
) -> None:
    url = tls_redis.url.replace(str(pki.ca_cert), str(pki.wrong_ca_cert))

    async def body() -> None:
        guarded = GuardedStore(store(url), QuotasConfig(enabled=True, store=url))
        try:
            limit = [Charge("messages_per_hour", 2, 3600.0, 1)]
            assert (await guarded.charge("alice", limit, True)).allowed
            assert guarded.unavailable
            assert (await guarded.charge("alice", limit, True)).allowed
            assert not (await guarded.charge("alice", limit, True)).allowed  # counted, in memory
        finally:
            await guarded.close()

    run(body)


def test_a_client_certificate_when_the_server_asks_for_one(
    mtls_redis: RedisServer, pki: Pki
) -> None:
    crt, key = client_cert(pki)

    async def body() -> None:
        without = store(mtls_redis.url)
        try:
            with pytest.raises(QuotaStoreError):
                await without.charge("alice", ONE, True)
            with pytest.raises(QuotaStoreError):
                await without.suspension("alice")
        finally:
            await without.close()
        s = store(f"{mtls_redis.url}&ssl_certfile={crt}&ssl_keyfile={key}")
        try:
            assert (await s.charge("alice", ONE, True)).allowed
            assert await s.suspension("alice") is None
        finally:
            await s.close()

    run(body)
