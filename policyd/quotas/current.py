"""The quotas of the running config: the QuotaService kept across reloads (`Quotas`, held by
PolicyService), and the milter's side (`milter_rejected`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from policyd.addresses import AddressRules
from policyd.config.quotas import QuotasConfig
from policyd.quotas.backend import create_store
from policyd.quotas.service import QuotaService
from policyd.quotas.store import QuotaStore, QuotaStoreError

if TYPE_CHECKING:
    from policyd.config import Config
    from policyd.quotas.compromise import Detector, Notify

log: Final = logging.getLogger("policyd.quotas")


async def milter_rejected(store: QuotaStore, login: str, queue_id: str) -> None:
    """The header From: milter refused this message of `login` (canonical): it is not
    counted (taken back, or never counted). Logged, never raised."""
    try:
        refunded = await store.rejected(login, queue_id)
    except QuotaStoreError as e:
        log.warning("quota store unavailable: %s; the refused message stays counted", str(e))
        return
    log.info(
        "quota not counted: message refused by the milter queue_id=%s login=%s%s",
        queue_id,
        login,
        " (taken back)" if refunded else "",
    )


class Quotas:
    """The QuotaService of the running config, kept across reloads: the same store (and the
    in-memory counters) while [quotas] store is unchanged."""

    def __init__(self) -> None:
        self.service: QuotaService | None = None
        #: set before the first request: check only (`policyd check`)
        self.read_only = False
        self._config: QuotasConfig | None = None
        self._retired: list[QuotaService] = []

    def current(self, full: Config, rules: AddressRules) -> QuotaService | None:
        config = full.quotas
        if config is self._config:
            return self.service
        old = self.service
        self._config = config
        notify = _notifier(full)
        if not config.enabled:
            self.service = None
        elif old is not None and old.config.store == config.store:
            self.service = QuotaService(
                config, old.store, rules, _detector(config, notify), notify, self.read_only
            )
            self.service.stats = old.stats
            self.service._rcpts = old._rcpts
            self.service._tasks = old._tasks
            if old.detector is not None and self.service.detector is not None:
                self.service.detector.suspended = old.detector.suspended
            return self.service
        else:
            self.service = QuotaService(
                config,
                create_store(config),
                rules,
                _detector(config, notify),
                notify,
                self.read_only,
            )
        if old is not None:
            self._retired.append(old)
        return self.service

    async def close(self) -> None:
        for svc in [*self._retired, *([self.service] if self.service else [])]:
            await svc.close()
        self._retired.clear()
        self.service = None
        self._config = None


def _detector(config: QuotasConfig, notify: Notify | None) -> Detector | None:
    if not config.compromise.enabled:
        return None
    from policyd.quotas.compromise import Detector

    return Detector(config, notify)


def _notifier(full: Config) -> Notify | None:
    if not full.quotas.enabled or not (full.quotas.notify or full.quotas.notify_user):
        return None
    from policyd.quotas.notify import Notifier

    return Notifier(full)
