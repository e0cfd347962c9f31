"""`/metrics` in the Prometheus text format (`prometheus-client`), summed over every process of one server.

What is measured, all without tenant data (no organization, user or token ids, no arguments: only names from
fixed sets, so the number of series is bounded):
- `flusia_tool_calls_total{tool,status}` and the `flusia_tool_call_duration_seconds{tool}` histogram: every call
  passes `ToolRunner.call`, which reports the tool (or "<unknown>" for a name that is not registered), the
  status (ok or the error code) and the duration to `observe_tool_call`;
- `flusia_auth_failures_total{reason}`: bearer tokens refused at /mcp and /crm (missing_token, invalid_token),
  OAuth client authentication and grants refused at /token and /revoke (invalid_client, invalid_grant), failed
  logins (login), and refused scrapes of this endpoint (metrics);
- `flusia_db_pool_*{pool}`: connections in use and idle, the configured maximum, requests waiting, and totals of
  requests, failed requests (pool timeouts) and time spent waiting, from psycopg_pool's `get_stats()` of the
  tool, projector and workflow pools, sampled every second in every process;
- `flusia_consumer_lag_events{consumer}`, `flusia_consumer_parked_events{consumer}`,
  `flusia_consumer_position{consumer}` and `flusia_event_store_head`: computed when scraped, from the database,
  as `flusia projections status` does (interfaces/health.py `consumer_report`).

Several processes (`flusia serve --workers N`): `serve` creates a directory for prometheus_client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set before any worker starts) and removes it when it stops; every
process writes its own values there and a scrape, answered by any worker, sums them. Counters and histograms of
a worker that died keep counting in the sum (as they should); its gauges are dropped at the next scrape.

Who may scrape: clients on the loopback interface (a request carrying X-Forwarded-For, Forwarded or X-Real-IP
counts as local only when a trusted proxy, FLUSIA_TRUSTED_PROXIES, resolved it to a loopback address), or any
client with `Authorization: Bearer <FLUSIA_METRICS_TOKEN>` when that is set.
"""

from __future__ import annotations

import glob
import hmac
import logging
import os
import threading
from collections.abc import Callable, Iterable
from ipaddress import ip_address
from typing import Any

import anyio
from litestar import Request, get
from litestar.response import Response
from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger("flusia.metrics")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
TOKEN_ENV = "FLUSIA_METRICS_TOKEN"
UNKNOWN_TOOL = "<unknown>"
AUTH_REASONS = frozenset({"missing_token", "invalid_token", "invalid_client", "invalid_grant", "login", "metrics"})
FORWARDING_HEADERS = {b"x-forwarded-for", b"forwarded", b"x-real-ip"}
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SAMPLE_SECONDS = 1.0

TOOL_CALLS = Counter("flusia_tool_calls", "Tool calls by tool and status (ok or the error code).", ["tool", "status"])
TOOL_DURATION = Histogram("flusia_tool_call_duration_seconds", "Duration of tool calls, whatever their status.",
                          ["tool"], buckets=DURATION_BUCKETS)
AUTH_FAILURES = Counter("flusia_auth_failures", "Refused credentials: bearer tokens, OAuth clients and grants, "
                        "logins, metrics scrapes.", ["reason"])
POOL_CONNECTIONS = Gauge("flusia_db_pool_connections", "Open pooled database connections by state.",
                         ["pool", "state"], multiprocess_mode="livesum")
POOL_MAX = Gauge("flusia_db_pool_max_connections", "Configured maximum connections of the pools.", ["pool"],
                 multiprocess_mode="livesum")
POOL_WAITING = Gauge("flusia_db_pool_waiting_requests", "Requests waiting for a pooled connection now.", ["pool"],
                     multiprocess_mode="livesum")
POOL_REQUESTS = Counter("flusia_db_pool_requests", "Connections requested from the pools.", ["pool"])
POOL_ERRORS = Counter("flusia_db_pool_request_errors", "Pool requests that failed (timed out waiting).", ["pool"])
POOL_WAIT = Counter("flusia_db_pool_wait_seconds", "Time requests spent waiting for a pooled connection.", ["pool"])


# -- what the application reports ---------------------------------------------------------------------------------
def observe_tool_call(tool: str, status: str, seconds: float) -> None:
    """The runner's hook (`ToolRunner.observe`): `tool` is a registered name or "<unknown>"."""
    TOOL_CALLS.labels(tool, status).inc()
    TOOL_DURATION.labels(tool).observe(seconds)


def auth_failure(reason: str) -> None:
    AUTH_FAILURES.labels(reason if reason in AUTH_REASONS else "other").inc()


# -- connection pools ----------------------------------------------------------------------------------------------
class PoolSampler:
    """Copies the pools' `get_stats()` into the gauges and counters about once a second, in a daemon thread of each
    process (so a scrape answered by one worker sums every worker's pools)."""

    def __init__(self, pools: Callable[[], dict[str, Any]]) -> None:
        self.pools = pools
        self._last: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def sample(self) -> None:
        with self._lock:
            for name, pool in self.pools().items():
                if pool is None:
                    continue
                try:
                    stats = pool.get_stats()
                except Exception:  # noqa: BLE001 - a closed pool has nothing to say
                    continue
                size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
                POOL_CONNECTIONS.labels(name, "idle").set(idle)
                POOL_CONNECTIONS.labels(name, "in_use").set(max(0, size - idle))
                POOL_MAX.labels(name).set(stats.get("pool_max", 0))
                POOL_WAITING.labels(name).set(stats.get("requests_waiting", 0))
                for counter, key, scale in ((POOL_REQUESTS, "requests_num", 1), (POOL_ERRORS, "requests_errors", 1),
                                            (POOL_WAIT, "requests_wait_ms", 1000)):
                    value = stats.get(key, 0)
                    delta = value - self._last.get((name, key), 0)
                    self._last[(name, key)] = value
                    if delta > 0:
                        counter.labels(name).inc(delta / scale)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="metrics-pools", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.sample()  # the last values, then this process's gauges stop counting (see `_drop_dead`)
        if multiprocess():
            for name in self.pools():
                for state in ("idle", "in_use"):
                    POOL_CONNECTIONS.labels(name, state).set(0)
                POOL_MAX.labels(name).set(0)
                POOL_WAITING.labels(name).set(0)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            try:
                self.sample()
            except Exception as e:  # noqa: BLE001 - never stop sampling
                log.warning("sampling pool statistics failed error=%s", type(e).__name__)


# -- consumers, from the database ------------------------------------------------------------------------------------
class ConsumerCollector:
    """Lag, position and parked events per consumer, read from the database when scraped."""

    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report

    def collect(self) -> Iterable[Any]:
        head = GaugeMetricFamily("flusia_event_store_head", "The event store's last notification id.")
        head.add_metric([], self.report["event_store_head"])
        lag = GaugeMetricFamily("flusia_consumer_lag_events", "Events in the store past the consumer's position.",
                                labels=["consumer"])
        position = GaugeMetricFamily("flusia_consumer_position", "The last notification id the consumer applied.",
                                     labels=["consumer"])
        parked = GaugeMetricFamily("flusia_consumer_parked_events", "Events the consumer set aside (one per "
                                   "organization blocked behind it).", labels=["consumer"])
        for name, c in self.report["consumers"].items():
            lag.add_metric([name], c["lag"])
            position.add_metric([name], c["position"])
            parked.add_metric([name], c["parked"])
        return [head, lag, position, parked]


# -- the endpoint ---------------------------------------------------------------------------------------------------
def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def _drop_dead(path: str) -> None:
    """Gauges of processes that are gone (a worker killed and replaced) must not count in the sums."""
    from prometheus_client import multiprocess as mp

    for f in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        pid = os.path.basename(f)[:-3].rsplit("_", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            mp.mark_process_dead(int(pid), path)
        except PermissionError:
            pass


def exposition(report: dict[str, Any] | None) -> bytes:
    """The text exposition: this process's (or every process's) metrics, then the consumers'."""
    if multiprocess():
        from prometheus_client import multiprocess as mp

        path = os.environ[MULTIPROC_ENV]
        _drop_dead(path)
        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry, path)
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    if report is not None:
        consumers = CollectorRegistry()
        consumers.register(ConsumerCollector(report))
        text += generate_latest(consumers)
    return text


def local_request(scope: Any, urls: Any) -> bool:
    """A loopback client, not forwarded by a proxy we do not trust (whose own address would be loopback)."""
    client = urls.client_address(scope)
    try:
        if not ip_address(client).is_loopback:
            return False
    except ValueError:
        return False
    forwarded = any(k.lower() in FORWARDING_HEADERS for k, _ in scope.get("headers", []))
    # forwarded: local only when the connection comes from a trusted proxy (client_address then followed the header)
    return not forwarded or urls._is_trusted(urls._peer(scope))  # noqa: SLF001


def token_ok(scope: Any) -> bool | None:
    """True/False when FLUSIA_METRICS_TOKEN is set and the request's bearer matches it or not; None when unset."""
    expected = os.environ.get(TOKEN_ENV, "")
    if not expected:
        return None
    for k, v in scope.get("headers", []):
        if k.lower() == b"authorization":
            scheme, _, token = v.decode("latin-1").partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode())
    return False


def metrics_route(runtime: Any, urls: Any) -> Any:
    from interfaces.health import consumer_report

    @get("/metrics")
    async def metrics(request: Request[Any, Any, Any]) -> Response[Any]:
        allowed = token_ok(request.scope)
        if not allowed and not local_request(request.scope, urls):
            auth_failure("metrics")
            hint = f"Authorization: Bearer <{TOKEN_ENV}>" if allowed is not None else f"set {TOKEN_ENV} to scrape from elsewhere"
            return Response({"error": "forbidden", "error_description":
                             f"/metrics answers loopback clients only; {hint}"},
                            status_code=401 if allowed is not None else 403)

        def build() -> bytes:
            report = None
            try:
                with runtime.pool.connection() as conn:
                    report = consumer_report(conn)
            except Exception as e:  # noqa: BLE001 - the process's own metrics still answer
                log.error("metrics: consumer positions unavailable error=%s", type(e).__name__)
            return exposition(report)

        body = await anyio.to_thread.run_sync(build, limiter=runtime.runner.limiter)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return metrics
