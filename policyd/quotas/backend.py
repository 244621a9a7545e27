"""The one place a quota store's backend is chosen (store.py would import its own wrappers)."""

from __future__ import annotations

from policyd.config.quotas import QuotasConfig
from policyd.quotas.guard import GuardedStore
from policyd.quotas.redis_store import RedisStore
from policyd.quotas.store import MemoryStore, QuotaStore


def create_store(config: QuotasConfig) -> QuotaStore:
    """The configured store: "none" -> MemoryStore; a Valkey/Redis URL -> RedisStore behind
    the guard (timeout, circuit breaker, per-instance fallback). The one place a backend is
    chosen."""
    if config.store == "none":
        return MemoryStore()
    return GuardedStore(RedisStore(config.store, config.store_timeout), config)
