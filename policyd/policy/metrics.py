"""Prometheus metrics (optional: `[metrics] enabled = true`, needs prometheus-client).

Imported only when metrics are enabled. Two kinds of metrics:

- per request, updated by the decision hook (cached label children: cheap, see bench/RESULTS.md):
  ``policyd_decisions_total{verdict,reason,profile}`` and
  ``policyd_request_duration_seconds``; per directory call (LookupRunner.observer):
  ``policyd_directory_lookup_duration_seconds{result}``.
- read at scrape time from counters policyd keeps anyway (no cost per request): connections,
  requests in flight, refused connections, cache hits/misses/stale answers, lookup errors,
  ranges loaded, reloads and reload failures.

Every metric is listed, with its meaning, in README.md ("Metrics"). The endpoint serves
/metrics on `metrics.listen` from a daemon thread (prometheus_client's own HTTP server).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from policyd import __version__
from policyd.config.listen import parse_listen
from policyd.core.decision import Decision
from policyd.core.request import Request

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from policyd.policy.server import PolicyServer
    from policyd.runtime import Runtime


class Observed(Protocol):
    """What the scrape-time metrics read (the App; typed here so metrics imports no App)."""

    reloads: int
    reload_failures: int
    loaded_at: float

    @property
    def server(self) -> PolicyServer: ...

    @property
    def runtime(self) -> Runtime: ...


__all__ = ["Metrics"]

#: Request latency: a cached or range decision takes microseconds, an LDAP lookup milliseconds,
#: and the lookup deadline (3 s) bounds the rest.
REQUEST_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
LOOKUP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.decisions = Counter(
            "policyd_decisions",
            "Decisions made, by verdict (accept, dunno, reject, defer), reason and profile.",
            ["verdict", "reason", "profile"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "policyd_request_duration_seconds",
            "Seconds from a complete request to its reply (includes directory lookups).",
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.lookup_seconds = Histogram(
            "policyd_directory_lookup_duration_seconds",
            "Seconds per call to the (LDAP) directory, cache misses only; result ok or error.",
            ["result"],
            buckets=LOOKUP_BUCKETS,
            registry=r,
        )
        self._lookup_ok = self.lookup_seconds.labels("ok")
        self._lookup_error = self.lookup_seconds.labels("error")
        self._observe_request = self.request_seconds.observe
        self._children: dict[tuple[str, str, str], Counter] = {}
        self.app: Observed | None = None
        self._collector = _AppCollector(self)
        r.register(self._collector)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.address = ""

    # hot path ----------------------------------------------------------------------------

    def on_decision(self, req: Request, profile: str, decision: Decision, seconds: float) -> None:
        """PolicyServer decision hook: one call per answered request."""
        # (keyed by the enums' values: an Enum member is hashed by Python code, Enum.__hash__)
        key = (decision.verdict._value_, decision.reason._value_, profile)
        child = self._children.get(key)
        if child is None:
            child = self.decisions.labels(*key)
            self._children[key] = child
        child.inc()
        self._observe_request(seconds)

    def observe_lookup(self, seconds: float, ok: bool) -> None:
        """LookupRunner.observer: one call per directory call."""
        (self._lookup_ok if ok else self._lookup_error).observe(seconds)

    # wiring ------------------------------------------------------------------------------

    def bind(self, app: Observed) -> None:
        """Read the scrape-time metrics from this app (its server, runtime and counters)."""
        self.app = app

    def attach(self, runtime: Runtime) -> None:
        """Observe the lookups of a (new) runtime."""
        if runtime.lookups.runner is not None:
            runtime.lookups.runner.observer = self.observe_lookup

    def start(self, listen: str) -> str:
        """Serve /metrics on HOST:PORT ([V6]:PORT). Returns the bound address; raises OSError
        naming the address."""
        kind, host, port = parse_listen(listen)
        if kind != "tcp" or host is None or port is None:
            raise OSError(f"metrics.listen = {listen!r}: the metrics endpoint needs HOST:PORT")
        try:
            self._http, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise OSError(e.errno, f"cannot listen on {listen} (metrics): {e.strerror}") from e
        bound = self._http.server_address
        h, p = str(bound[0]), int(bound[1])
        self.address = f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
        return self.address

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _AppCollector(Collector):
    """Scrape-time metrics: read from the app in the HTTP thread (plain attribute reads)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.started = time.time()

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily("policyd_info", "policyd version.", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        app = self.metrics.app
        if app is None:
            return
        server = app.server
        rt = app.runtime
        yield GaugeMetricFamily(
            "policyd_connections_open",
            "Client connections open now.",
            value=server.open_connections,
        )
        yield GaugeMetricFamily(
            "policyd_requests_in_flight",
            "Requests read and not yet answered (waiting for the directory).",
            value=server.pending_requests,
        )
        yield CounterMetricFamily(
            "policyd_connections_refused",
            "Connections closed unanswered because server.max_connections were open.",
            value=server.refused,
        )
        yield GaugeMetricFamily(
            "policyd_ranges_loaded",
            "Allocated ranges loaded (lines of the range files).",
            value=len(rt.networks),
        )
        yield GaugeMetricFamily(
            "policyd_range_exclusions_loaded",
            "Exclusions (!PATTERN lines) loaded.",
            value=rt.networks.exclusions,
        )
        yield CounterMetricFamily(
            "policyd_reloads", "Successful reloads (SIGHUP).", value=app.reloads
        )
        yield CounterMetricFamily(
            "policyd_reload_failures",
            "Reloads that failed; the running config was kept.",
            value=app.reload_failures,
        )
        yield GaugeMetricFamily(
            "policyd_config_loaded_timestamp_seconds",
            "Unix time the running config was loaded (start or last successful reload).",
            value=app.loaded_at,
        )
        lookups = rt.lookups
        stats = lookups.stats
        for name, doc, attr in (
            ("policyd_directory_cache_hits", "Directory answers served from the cache.", "hits"),
            ("policyd_directory_cache_misses", "Lookups that went to the directory.", "misses"),
            (
                "policyd_directory_cache_stale_answers",
                "Answers from expired cache entries while the directory was unavailable.",
                "stale",
            ),
            (
                "policyd_directory_cache_coalesced",
                "Lookups that waited for the same key's lookup already in flight.",
                "coalesced",
            ),
            (
                "policyd_directory_lookup_errors",
                "Directory lookups that failed (unavailable or past the deadline).",
                "errors",
            ),
        ):
            yield CounterMetricFamily(name, doc, value=getattr(stats, attr) if stats else 0)
        yield GaugeMetricFamily(
            "policyd_directory_cache_entries",
            "Entries in the directory cache.",
            value=len(lookups),
        )
        yield from _quota_metrics(getattr(getattr(app, "service", None), "quotas", None))


def _quota_metrics(quotas: Any) -> Iterable[Metric]:
    """[quotas] (policyd.quotas): counters by limit and result, never by login."""
    svc = getattr(quotas, "service", None)
    if svc is None:
        return
    checks = CounterMetricFamily(
        "policyd_quota",
        "Quota results by limit (messages_per_hour, ..., recipients_per_message, suspended, "
        "store; all: every message counted) and result (counted, refused, early_refused, "
        "held, deferred).",
        labels=["limit", "result"],
    )
    for (limit, result), n in sorted(svc.stats.counts.items()):
        checks.add_metric([limit, result], n)
    yield checks
    store = svc.store
    yield GaugeMetricFamily(
        "policyd_quota_store_unavailable",
        "1 while the shared quota store is unavailable (circuit breaker open), else 0.",
        value=1.0 if getattr(store, "unavailable", False) else 0.0,
    )
    yield CounterMetricFamily(
        "policyd_quota_store_errors",
        "Calls to the shared quota store that failed or timed out.",
        value=getattr(store, "errors", 0),
    )
    detector = svc.detector
    yield CounterMetricFamily(
        "policyd_quota_suspensions",
        "Logins this instance suspended on compromise signals.",
        value=detector.suspended if detector is not None else 0,
    )
