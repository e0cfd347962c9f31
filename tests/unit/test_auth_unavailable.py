"""A token that cannot be checked because PostgreSQL is restarting is a 503 to try again, never a 500 or a 401."""

from types import SimpleNamespace

import anyio
import psycopg
import pytest

from interfaces.http import AuthUnavailable, BearerAuth


class UnreachablePool:
    def connection(self):
        raise psycopg.OperationalError("server closed the connection unexpectedly")


def scope_with(token: str) -> dict:
    return {"type": "http", "headers": [(b"authorization", f"Bearer {token}".encode())]}


def test_a_lost_database_while_checking_a_token_is_unavailable_not_an_error():
    auth = BearerAuth(SimpleNamespace(pool=UnreachablePool(), runner=SimpleNamespace(limiter=None)))
    with pytest.raises(AuthUnavailable) as info:
        anyio.run(auth, scope_with("flusia_abc"))
    assert info.value.headers == {"Retry-After": "1"} and info.value.body["error"] == "unavailable"


def test_other_failures_are_not_hidden_as_unavailable():
    def verifier(token: str):
        raise ValueError("a bug")

    auth = BearerAuth(SimpleNamespace(pool=UnreachablePool(), runner=SimpleNamespace(limiter=None)))
    auth.verifiers.append(verifier)
    with pytest.raises(ValueError):
        anyio.run(auth, scope_with("oauth-access-token"))
    assert anyio.run(auth, {"type": "http", "headers": []}) is None  # no token: nothing to check
