"""Who may read /metrics, and what a tool call adds to it (this process's registry, no database)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from interfaces import metrics
from interfaces.public_url import PublicUrls, parse_networks

LOCAL = PublicUrls(configured=None, listen="http://127.0.0.1:8000", trusted=())
BEHIND_PROXY = PublicUrls(configured=None, listen="http://127.0.0.1:8000", trusted=parse_networks("127.0.0.1"))


def scope(peer: str, **headers: str) -> dict:
    return {"client": (peer, 50000), "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]}


def test_loopback_clients_may_scrape_others_may_not():
    assert metrics.local_request(scope("127.0.0.1"), LOCAL)
    assert metrics.local_request(scope("::1"), LOCAL)
    assert metrics.local_request(scope("::ffff:127.0.0.1"), LOCAL)
    assert not metrics.local_request(scope("10.0.0.8"), LOCAL)
    assert not metrics.local_request(scope("203.0.113.9"), LOCAL)


def test_a_request_forwarded_by_a_proxy_on_this_host_is_not_local_unless_the_proxy_is_trusted():
    for header in ("x_forwarded_for", "forwarded", "x_real_ip"):
        assert not metrics.local_request(scope("127.0.0.1", **{header: "203.0.113.9"}), LOCAL), header
        assert not metrics.local_request(scope("::ffff:127.0.0.1", **{header: "203.0.113.9"}), LOCAL), header
    assert not metrics.local_request(scope("127.0.0.1", x_forwarded_for="203.0.113.9"), BEHIND_PROXY)
    assert metrics.local_request(scope("127.0.0.1", x_forwarded_for="127.0.0.1"), BEHIND_PROXY)


def test_the_metrics_token(monkeypatch):
    monkeypatch.delenv(metrics.TOKEN_ENV, raising=False)
    assert metrics.token_ok(scope("203.0.113.9", authorization="Bearer anything")) is None
    monkeypatch.setenv(metrics.TOKEN_ENV, "s3cret-metrics")
    assert metrics.token_ok(scope("203.0.113.9", authorization="Bearer s3cret-metrics")) is True
    assert metrics.token_ok(scope("203.0.113.9", authorization="bearer s3cret-metrics")) is True
    assert metrics.token_ok(scope("203.0.113.9", authorization="Bearer s3cret")) is False
    assert metrics.token_ok(scope("203.0.113.9", authorization="Basic s3cret-metrics")) is False
    assert metrics.token_ok(scope("203.0.113.9")) is False


def test_a_tool_call_counts_once_with_its_duration_and_reasons_stay_a_fixed_set():
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = sample("flusia_tool_calls_total", tool="crm_clients_get", status="not_found")
    count = sample("flusia_tool_call_duration_seconds_count", tool="crm_clients_get")
    metrics.observe_tool_call("crm_clients_get", "not_found", 0.004)
    assert sample("flusia_tool_calls_total", tool="crm_clients_get", status="not_found") == before + 1
    assert sample("flusia_tool_call_duration_seconds_count", tool="crm_clients_get") == count + 1
    assert sample("flusia_tool_call_duration_seconds_bucket", tool="crm_clients_get", le="0.005") >= 1

    other = sample("flusia_auth_failures_total", reason="other")
    metrics.auth_failure("org-1234 said no")  # never a free-form label value
    assert sample("flusia_auth_failures_total", reason="other") == other + 1
    assert REGISTRY.get_sample_value("flusia_auth_failures_total", {"reason": "org-1234 said no"}) is None
