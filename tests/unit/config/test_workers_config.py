"""server.workers (issue 29): the values it takes, and what several processes cannot share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from policyd.config import Config, ConfigError, load_config
from policyd.config.workers import resolve_workers


def load(tmp_path: Path, text: str) -> Config:
    (tmp_path / "senders.txt").write_text("alice: alice@example.org\n")
    p = tmp_path / "policyd.toml"
    p.write_text(text)
    return load_config(p)


def test_default_is_one_process(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    assert cfg.server.workers == 1
    assert resolve_workers(cfg.server.workers) == 1


@pytest.mark.parametrize("value", [1, 2, 16])
def test_an_integer(tmp_path: Path, value: int) -> None:
    cfg = load(tmp_path, f"[server]\nworkers = {value}\n")
    assert resolve_workers(cfg.server.workers) == value


def test_auto_is_the_usable_cores(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[server]\nworkers = "auto"\n')
    assert cfg.server.workers == "auto"
    assert resolve_workers(cfg.server.workers) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("0", 'must be an integer >= 1 or "auto", not 0'),
        ("-2", 'must be an integer >= 1 or "auto", not -2'),
        ('"many"', "must be an integer >= 1 or \"auto\", not 'many'"),
        ('"2"', "must be an integer >= 1 or \"auto\", not '2'"),
        ("2.5", "must be an integer, not a number"),
        ("true", "must be an integer, not a boolean"),
        ("[2]", "must be an integer, not a list"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, value: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, f"[server]\nworkers = {value}\n")
    assert e.value.key == "server.workers"
    assert e.value.why == why
    assert e.value.source == str(tmp_path / "policyd.toml")


@pytest.mark.parametrize("workers", ["2", '"auto"'])
def test_metrics_with_workers_is_refused(tmp_path: Path, workers: str) -> None:
    """One metrics listener in one worker would report that worker's counters as the whole."""
    with pytest.raises(ConfigError) as e:
        load(tmp_path, f"[server]\nworkers = {workers}\n[metrics]\nenabled = true\n")
    assert e.value.key == "server.workers"
    assert "metrics.enabled = true" in e.value.why
    assert "one worker's numbers as the whole" in e.value.why


def test_metrics_with_one_worker_is_fine(tmp_path: Path) -> None:
    assert load(tmp_path, "[server]\nworkers = 1\n[metrics]\nenabled = true\n").metrics.enabled


def test_in_memory_quotas_with_workers_are_refused(tmp_path: Path) -> None:
    """Counters in each process's memory would multiply every limit by the workers."""
    with pytest.raises(ConfigError) as e:
        load(tmp_path, "[server]\nworkers = 2\n[quotas]\nenabled = true\n")
    assert e.value.key == "server.workers"
    assert 'quotas.store = "none"' in e.value.why and "quotas.enabled = true" in e.value.why


def test_quotas_with_a_shared_store_and_workers_are_fine(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[server]\nworkers = 2\n[quotas]\nenabled = true\nstore = "redis://127.0.0.1:6379/0"\n',
    )
    assert cfg.server.workers == 2


def test_quotas_off_with_workers_are_fine(tmp_path: Path) -> None:
    assert load(tmp_path, "[server]\nworkers = 3\n[quotas]\nenabled = false\n").server.workers == 3
