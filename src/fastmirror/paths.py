"""The path a route's prefix is matched against, as the back ends behind a proxy read it.

Pure; shared by config (which prefixes can never match) and proxy.router (which route a
request takes). Only the match uses it: the bytes sent upstream never change.

A route with `shadow = []` keeps requests from the shadows (`/payments`): a spelling of
the path that the primary reads as /payments but the match does not would leak them.
So the match reads the path the way the most lenient common back end would:

- `%XX` decoded once (nginx, every framework), `%5C` and `\\` as `/` (WHATWG URL
  parsers: Node, Deno, Bun; IIS),
- `;params` cut from every segment (Tomcat and Spring: `/x/..;/payments`),
- `.` and `..` segments resolved, never above the root, and runs of `/` merged (nginx),
- the query cut at the first `?`; a `#` is kept as a path byte (RFC 9112 allows none in
  a request target; kept, `/x#/../payments` still reads as /payments).

Case is left alone here: routes that are never mirrored compare in any case
(RouteTable), since IIS and ASP.NET Core route without it.
"""

from __future__ import annotations

_NEEDS_WORK = (b"%", b"/.", b"//", b"\\", b";")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def route_path(target: bytes) -> bytes:
    """The target's path, normalised for matching (see the module docstring)."""
    if target[:1] != b"/":  # absolute-form (http://host/path) or "*"
        at = target.find(b"://")
        if at < 0:
            return target
        slash = target.find(b"/", at + 3)
        target = target[slash:] if slash >= 0 else b"/"
    query = target.find(b"?")
    path = target if query < 0 else target[:query]
    for marker in _NEEDS_WORK:
        if marker in path:
            return _normalise(path)
    return path


def _normalise(path: bytes) -> bytes:
    decoded = _percent_decoded(path).replace(b"\\", b"/")
    out: list[bytes] = []
    segments = decoded.split(b"/")
    for segment in segments:
        segment = segment.split(b";", 1)[0]
        if segment in (b"", b"."):
            continue
        if segment == b"..":
            if out:
                out.pop()
            continue
        out.append(segment)
    last = segments[-1].split(b";", 1)[0]
    trailing = last in (b"", b".", b"..") and bool(out)
    return b"/" + b"/".join(out) + (b"/" if trailing else b"")


def _percent_decoded(path: bytes) -> bytes:
    if b"%" not in path:
        return path
    out = bytearray()
    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c == 0x25 and i + 3 <= n and path[i + 1] in _HEX and path[i + 2] in _HEX:
            out.append(int(path[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)
