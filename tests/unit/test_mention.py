"""What counts as a listener's id in a logged context (docs/decisions.md 64)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.serving.erasure import mention


@pytest.mark.parametrize(
    ("context", "user", "where"),
    [
        ({"page": "/users/alice/home"}, "alice", ".page"),
        ({"u": "Alice"}, "alice", ".u"),
        ({"uid": 42}, "42", ".uid"),
        ({"uid": 42.0}, "42", ".uid"),
        ({"q": "user=ALICE&x=1"}, "alice", ".q"),
        ({"who": "alice@example.com"}, "alice", ".who"),
        ({"nested": [{"deep": "by alice:1"}]}, "alice", ".nested[0].deep"),
        ({"Alice": True}, "alice", ""),
        ({"x": {"owner_alice": 1}}, "alice", ".x"),
        ({"mail": "Person-7@Example.com"}, "person-7@example.com", ".mail"),
        ({"ref": "id:user-1;"}, "user-1", ".ref"),
    ],
)
def test_the_id_is_found_wherever_it_stands_as_a_token(
    context: dict[str, Any], user: str, where: str
) -> None:
    assert mention(context, [user]) == where


@pytest.mark.parametrize(
    ("context", "user"),
    [
        ({"mode": "always"}, "al"),  # a short id inside a word
        ({"n": "x420"}, "42"),
        ({"n": 420}, "42"),
        ({"sport": "bobsleigh"}, "bob"),
        ({"flag": True}, "1"),  # a boolean is not the number 1
        ({"device": "phone", "hour": 21}, "alice"),
        ({"tags": [None, 3.5]}, "alice"),
    ],
)
def test_innocent_contexts_pass(context: dict[str, Any], user: str) -> None:
    assert mention(context, [user]) is None


def test_any_member_of_a_blend_counts() -> None:
    assert mention({"host": "Bob"}, ["alice", "bob"]) == ".host"
    assert mention({"host": "carol"}, ["alice", "bob"]) is None
