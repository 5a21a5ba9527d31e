"""Endpoint names for diff results, sans-I/O: `GET /users/123?x=1` -> `GET /users/{id}`.

Configured templates win; otherwise ids (numbers, UUIDs, long hex or mixed
alphanumeric tokens) collapse to `{id}` and the query is dropped. Past a cap of
distinct names, new ones fold into `other`, so metric labels stay bounded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fastmirror.diffing.diff import OTHER

__all__ = ["EndpointNamer"]


# Segments that name one item rather than a route: all digits, a UUID, 16+ hex digits,
# or a 16+ character alphanumeric token with a digit in it. All become `{id}`.
_ID_SEGMENT = re.compile(
    r"(?:\d+|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{16,}"
    r"|(?=[a-z]*\d)[a-z0-9]{16,})\Z", re.IGNORECASE | re.ASCII)
_ABSOLUTE_FORM = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


class EndpointNamer:
    """Names a request's endpoint `METHOD /path/template`, with bounded cardinality.

    Args:
        templates: path templates like `/users/{user}/orders/{order}`, tried first in
            order; `{x}` matches any one segment, other segments match literally.
        max_endpoints: distinct names handed out; past it, new names become "other"
            (names already handed out keep working). Bounds metric label cardinality.
        cache_size: (method, path) results kept; the cache is emptied when full.

    Otherwise segments that are all digits, UUIDs, hex strings of 16+ characters, or
    alphanumeric tokens of 16+ characters with a digit, become `{id}` (one scheme for
    every kind of id). The query and fragment are dropped. Used from one thread.
    """

    def __init__(self, templates: Iterable[str] = (), max_endpoints: int = 100,
                 cache_size: int = 4096) -> None:
        self._templates: dict[int, list[tuple[str, tuple[str | None, ...]]]] = {}
        for template in templates:
            if not template.startswith("/"):
                raise ValueError(f"endpoint template {template!r} must start with /")
            segments = tuple(None if s.startswith("{") and s.endswith("}") else s
                             for s in template.split("/")[1:])
            self._templates.setdefault(len(segments), []).append((template, segments))
        self.max_endpoints = max_endpoints
        self._names: set[str] = set()
        self._cache: dict[tuple[str, str], str] = {}
        self._cache_size = cache_size

    def name(self, method: str | bytes, target: str | bytes) -> str:
        """The endpoint name of a request, e.g. `GET /users/{id}/orders`, or "other".

        Args:
            method: the request method (str, or bytes decoded as latin-1).
            target: the request target: origin-form with the query, absolute-form or `*`.

        Returns:
            `METHOD TEMPLATE`, or "other" once max_endpoints names exist.
        """
        if not isinstance(method, str):
            method = bytes(method).decode("latin-1")
        if not isinstance(target, str):
            target = bytes(target).decode("latin-1")
        path = target.partition("?")[0].partition("#")[0]
        key = (method, path)
        found = self._cache.get(key)
        if found is None:
            found = self._name(method, path)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[key] = found
        return found

    def _name(self, method: str, path: str) -> str:
        if not path.startswith("/") and path != "*":
            m = _ABSOLUTE_FORM.match(path)
            path = "/" + (path[m.end():] if m else path).lstrip("/")
        segments = path.split("/")[1:]
        template = None
        for candidate, pattern in self._templates.get(len(segments), ()):
            if all(p is None or p == s for p, s in zip(pattern, segments)):
                template = candidate
                break
        if template is None:
            template = path if path == "*" else "/" + "/".join(
                "{id}" if _ID_SEGMENT.match(s) else s for s in segments)
        name = f"{method} {template}"
        if name not in self._names:
            if len(self._names) >= self.max_endpoints:
                return OTHER
            self._names.add(name)
        return name
