"""server.workers: how many processes serve the listeners, and what cannot be per process.

`check_workers` is called by policyd.config's validation (it takes the parts it needs, so this
module imports nothing of the schema); `resolve_workers` turns the value into a count.
"""

from __future__ import annotations

import os

from policyd.config.quotas import QuotasConfig
from policyd.config.tables import ConfigError


def resolve_workers(value: int | str) -> int:
    """The number of worker processes: the integer, or for "auto" the cores this process may
    run on (its CPU affinity, so a cgroup/taskset limit counts)."""
    if value == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    assert isinstance(value, int)
    return value


def check_workers(
    source: str, workers: int | str, metrics_enabled: bool, quotas: QuotasConfig
) -> None:
    """Raises ConfigError for a bad server.workers, or for what would be wrong with several
    processes: per-process metrics and per-process quota counters."""
    key = "server.workers"
    if isinstance(workers, str) and workers != "auto":
        raise ConfigError(source, key, f'must be an integer >= 1 or "auto", not {workers!r}')
    if isinstance(workers, int) and workers < 1:
        raise ConfigError(source, key, f'must be an integer >= 1 or "auto", not {workers}')
    if workers == 1:
        return
    if metrics_enabled:
        raise ConfigError(
            source,
            key,
            f"{workers!r} with metrics.enabled = true: each worker process counts only its "
            "own requests, and one metrics listener would report one worker's numbers as the "
            "whole; use server.workers = 1 with metrics (or run one policyd per port)",
        )
    if quotas.enabled and quotas.store == "none":
        raise ConfigError(
            source,
            key,
            f'{workers!r} with quotas.enabled = true and quotas.store = "none": each worker '
            "process would count in its own memory, so every limit would allow workers x "
            'its value; set quotas.store to a shared Valkey/Redis ("redis://...") or '
            "server.workers = 1",
        )
