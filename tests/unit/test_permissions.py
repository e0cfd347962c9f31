"""Effective permission = role grants ∩ token grants."""

import pytest

from application import permissions as p


def test_token_grants_narrow_the_role():
    assert p.intersect(p.BUILT_IN_ROLES["sales"], {"clients": "rwd", "deals": "r"}) == {"clients": "rw", "deals": "r"}


def test_a_token_without_grants_inherits_the_role():
    assert p.intersect(p.BUILT_IN_ROLES["viewer"], None) == p.BUILT_IN_ROLES["viewer"]


def test_built_in_roles():
    assert all(v == "rwd" for v in p.BUILT_IN_ROLES["admin"].values())
    assert p.BUILT_IN_ROLES["sales"]["clients"] == "rw" and p.BUILT_IN_ROLES["sales"]["settings"] == "r"
    assert set(p.BUILT_IN_ROLES["viewer"].values()) == {"r"}


def test_parse_permissions_merges_and_orders_flags():
    assert p.parse_permissions(["clients:r", "tasks:wr", "clients:d"]) == {"clients": "rd", "tasks": "rw"}


@pytest.mark.parametrize("bad", ["clients", "nope:r", "clients:x", "clients:"])
def test_bad_permissions_are_refused(bad):
    with pytest.raises(p.InvalidPermission):
        p.parse_permission(bad)
