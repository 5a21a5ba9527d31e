"""paths.route_path and router.RouteTable: a `shadow = []` route cannot be dodged by a
spelling the back end reads as its path (issue 10, review findings)."""

from __future__ import annotations

import pytest

from fastmirror.paths import route_path
from fastmirror.proxy.router import RouteTable


@pytest.mark.parametrize("target", [
    b"/payments", b"/payments/x?q=1", b"/api/../payments", b"/pay%6Dents", b"//payments",
    b"/x#/../payments", b"/x\\..\\payments", b"/x%5C..%5Cpayments", b"/x/..;/payments",
    b"/;x/payments", b"/\\payments", b"/%2e%2e/payments", b"/./payments", b"/../../payments",
    b"/payments;jsessionid=1", b"http://shop.test/payments", b"HTTP://shop.test//payments",
])  # fmt: skip
def test_every_spelling_of_payments_reads_as_payments(target):
    assert route_path(target).startswith(b"/payments"), route_path(target)


@pytest.mark.parametrize(("target", "path"), [
    (b"/a/b?x=1", b"/a/b"), (b"/a/./b/", b"/a/b/"), (b"/a/b/..", b"/a/"), (b"/x%zz", b"/x%zz"),
    (b"/x%4", b"/x%4"), (b"*", b"*"), (b"http://h", b"/"), (b"/", b"/"), (b"/a?b#c", b"/a"),
])  # fmt: skip
def test_other_paths(target, path):
    assert route_path(target) == path


def test_a_never_mirrored_route_matches_in_any_case_the_others_do_not():
    table = RouteTable([b"/search", b"/payments"], [None, None], [False, True])
    assert table.match(b"/PAYMENTS/1", b"GET") == 1 and table.match(b"/Pay%6Dents", b"GET") == 1
    assert table.match(b"/SEARCH", b"GET") == -1 and table.match(b"/search?q", b"GET") == 0


def test_first_match_with_methods_and_normalised_prefixes():
    table = RouteTable([b"/api//items", b"/api"], [frozenset({b"POST"}), None])
    assert table.match(b"/api/items/1", b"POST") == 0  # the prefix normalised too
    assert table.match(b"/api/items/1", b"GET") == 1  # methods: falls through to the next
    assert table.match(b"/other", b"GET") == -1
