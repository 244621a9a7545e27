"""pytest fixtures for a private Valkey/Redis server (registered in tests/conftest.py).

- `redis_server` (function) a fresh redis-server (or valkey-server) on a free loopback port,
                            stopped by PID at teardown. Skips on a laptop without one, fails
                            under CI=true.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.redis import RedisServer, server_binary
from tests.servers.requirements import require_binaries

WHY = "quota store tests need a Valkey/Redis server (Debian: apt-get install redis-server)"


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_binaries(server_binary(), why=WHY)
    try:
        import redis  # noqa: F401
    except ImportError:
        from tests.servers.requirements import in_ci

        msg = "quota store tests need redis-py (Debian: python3-redis)"
        if in_ci():
            pytest.fail(msg + " [CI=true: a missing tier is a failure]")
        pytest.skip(msg)
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
