"""Login throttling against real PostgreSQL: the counter behind the progressive delay is atomic.

Seen before (issue 8): 60 parallel wrong passwords were all checked against a limit of 10, because each request
counted the failures, then checked the password, then recorded its own failure.
"""

from __future__ import annotations

import threading
import uuid

import pytest

from application import oauth
from interfaces.oauth.store import OAuthStore


@pytest.fixture
def store(runtime):
    return OAuthStore(runtime.pool, oauth.Settings(login_window=900))


def test_parallel_attempts_are_counted_one_after_the_other(store):
    bucket = oauth.account_bucket(f"parallel-{uuid.uuid4().hex}@example.com")
    results: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(60)

    def attempt() -> None:
        start.wait()
        failures_before = store.login_attempt(bucket)
        with lock:
            results.append(failures_before)

    threads = [threading.Thread(target=attempt) for _ in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # every attempt saw a different count: the delays they get are 0, 0, 0, 1, 2, 4, ... never 60 zeros
    assert sorted(results) == list(range(60))
    delays = sorted(oauth.login_delay(n, 3, 1.0, 30.0) for n in results)
    assert delays.count(0.0) == 3 and delays[3:8] == [1.0, 2.0, 4.0, 8.0, 16.0] and set(delays[8:]) == {30.0}


def test_a_success_takes_its_failure_back_and_quiet_windows_forget(store, db):
    bucket = oauth.account_bucket(f"window-{uuid.uuid4().hex}@example.com")
    assert [store.login_attempt(bucket) for _ in range(3)] == [0, 1, 2]
    store.login_succeeded([bucket])
    assert store.login_attempt(bucket) == 2
    db.execute("UPDATE oauth_login_throttle SET last_failure_at = now() - interval '16 minutes' WHERE bucket = %s",
               (bucket,))
    assert store.login_attempt(bucket) == 0


def test_delay_schedule_and_buckets():
    assert [oauth.login_delay(n, 3, 1.0, 30.0) for n in range(10)] == [0, 0, 0, 1, 2, 4, 8, 16, 30, 30]
    assert oauth.login_delay(10**9, 0, 1.0, 30.0) == 30.0
    # e-mails are bucketed by digest (case-insensitive), never stored in the clear
    assert oauth.account_bucket("Mario@Example.com ") == oauth.account_bucket("mario@example.com")
    assert "example" not in oauth.account_bucket("mario@example.com")
    # an IPv6 client is bucketed by its /64, so rotating addresses inside it does not escape the delay
    assert oauth.address_bucket("2001:db8:1:2::1") == oauth.address_bucket("2001:db8:1:2:ffff::9") == "addr:2001:db8:1:2::/64"
    assert oauth.address_bucket("192.0.2.7") == "addr:192.0.2.7"


def test_registration_limit_counts_parallel_requests_atomically(store, db):
    bucket = f"register:test-{uuid.uuid4().hex}"
    allowed: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(30)

    def hit() -> None:
        start.wait()
        ok = store.hit(bucket, 10, 3600)
        with lock:
            allowed.append(ok)

    threads = [threading.Thread(target=hit) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert allowed.count(True) == 10
    db.execute("DELETE FROM oauth_rate_events WHERE bucket = %s", (bucket,))


def test_login_form_token_is_bound_to_its_nonce_and_expires():
    key = b"k" * 32
    token = oauth.login_form_token(key, "nonce-a", 1_000_000)
    assert oauth.login_form_token_valid(key, "nonce-a", token, 1_000_100, 3600)
    assert not oauth.login_form_token_valid(key, "nonce-b", token, 1_000_100, 3600)  # another browser
    assert not oauth.login_form_token_valid(b"x" * 32, "nonce-a", token, 1_000_100, 3600)  # another key
    assert not oauth.login_form_token_valid(key, "nonce-a", token, 1_000_000 + 3601, 3600)  # expired
    assert not oauth.login_form_token_valid(key, "nonce-a", token, 1_000_000 - 61, 3600)  # from the future
    for bad in ("", ".", "abc.def", "1000000.", "01000000." + token.partition(".")[2], "x" * 500):
        assert not oauth.login_form_token_valid(key, "nonce-a", bad, 1_000_100, 3600)
