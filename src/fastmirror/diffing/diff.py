"""Response diffing, sans-I/O: did the shadow answer what the primary answered?

For one mirrored request this stage takes the responses other stages captured (the
primary's, a shadow's and optionally a secondary's: a second instance of the primary's
version) and says whether the shadow's differs, where, and whether that is noise:

- `parse_captured` turns one raw HTTP/1.1 response into a `Captured`.
- `compare` checks status, chosen headers and body under `DiffRules`: JSON bodies field
  by field (`$.a.b[3].c`), other bodies by bytes (length, sha256, excerpt). A difference
  the secondary shares with the primary (same path or an ancestor) is noise.
(`endpoints.EndpointNamer` names the endpoints results are grouped by; `diffstore`
keeps the results and shows them.)

It does not capture, pair, queue or schedule anything, reads no clock and does no I/O:
`comparator` owns the copies and the worker thread, admin and metrics read the store.
Work per comparison is bounded (`DiffRules.max_differences`, `DiffRules.max_nodes`).
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final

import orjson

from fastmirror.hotpath import ChunkedScanner, check_head, find_head_end, parse_response_head

__all__ = [
    "ABSENT", "MATCH", "MISMATCH", "NOISE", "OTHER", "OTHER_FIELDS", "Captured", "Comparison",
    "DiffRules", "Difference", "compare", "parse_captured",
]

MATCH: Final = "match"
MISMATCH: Final = "mismatch"
NOISE: Final = "noise"
RESULTS: Final = (MATCH, MISMATCH, NOISE)
OTHER: Final = "other"  # the endpoint name past EndpointNamer's cap
OTHER_FIELDS: Final = "<other fields>"  # the field path past DiffStore's max_fields


class _Absent(str):
    """The missing side of a difference. A str, so it serialises as "<absent>";
    tell it from a real "<absent>" string with `value is ABSENT`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent("<absent>")

# A Difference keeps strings up to _MAX_STR characters and containers up to
# _MAX_VALUE_BYTES serialised; longer ones are cut (a container becomes its cut JSON text).
_MAX_STR = 256
_MAX_VALUE_BYTES = 1024
# Python-level steps of one JSON walk. ~100k steps is ~20-30 ms of CPython on the diff
# thread at worst; past it, remaining subtrees are compared by canonical bytes only.
MAX_NODES: Final = 100_000
# The excerpt of a non-JSON body: 40 bytes, from 16 before the first differing byte.
_EXCERPT_BEFORE, _EXCERPT_AFTER = 16, 24
# h11's default limit on a head; a gzip body is decoded up to 8 MiB (the capture is
# 1 MiB; a typical JSON compresses 5-10x), else the encoded bytes are compared.
_MAX_HEAD = 16 * 1024
_MAX_DECODED = 8 << 20


@dataclass(frozen=True, slots=True)
class Captured:
    """One HTTP response as diffing sees it.

    `headers` may be given as a mapping or as (name, value) pairs, str or bytes; it is
    kept as a tuple of (lower-case name, value) str pairs in arrival order.
    `header(name)` is the value, repeated fields joined with ", ", or None.
    """

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    _index: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pairs = tuple(_header_pairs(self.headers))
        index: dict[str, str] = {}
        for name, value in pairs:
            index[name] = value if name not in index else f"{index[name]}, {value}"
        object.__setattr__(self, "headers", pairs)
        object.__setattr__(self, "_index", index)
        if type(self.body) is not bytes:
            object.__setattr__(self, "body", bytes(self.body))

    def header(self, name: str) -> str | None:
        """The field's value (repeated fields joined with ", "), or None when absent."""
        return self._index.get(name.lower())


def _header_pairs(headers: Any) -> Iterable[tuple[str, str]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if not isinstance(name, str):
            name = bytes(name).decode("latin-1")
        if not isinstance(value, str):
            value = bytes(value).decode("latin-1")
        yield name.lower(), value


@dataclass(frozen=True, slots=True)
class Difference:
    """One place where two responses differ: `status`, `header:<name>`, `body` or a
    JSON path (`$.a.b[3].c`, `$["odd key"]`). Values are JSON-able, long ones cut;
    ABSENT marks a side where the header, key or array item is missing."""

    path: str
    primary: Any
    shadow: Any


@dataclass(slots=True)
class Comparison:
    """The verdict on one shadow response: `result` is "match", "mismatch" or "noise".

    `differences` are the real ones (at most rules.max_differences; `truncated` when
    there were more), `noise` those the secondary shares (capped the same way).
    """

    result: str
    differences: list[Difference] = field(default_factory=list)
    noise: list[Difference] = field(default_factory=list)
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (orjson also serialises a Comparison as it is)."""
        return {"result": self.result, "truncated": self.truncated,
                "differences": [_diff_dict(d) for d in self.differences],
                "noise": [_diff_dict(d) for d in self.noise]}


def _diff_dict(d: Difference) -> dict[str, Any]:
    return {"path": d.path, "primary": d.primary, "shadow": d.shadow}


# -- rules and path patterns ------------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# One rendered path segment: `.key`, `["odd key"]` or `[3]`; what `*` matches.
_ANY_SEGMENT = r'(?:\.[A-Za-z_][A-Za-z0-9_]*|\[(?:\d+|"(?:[^"\\]|\\.)*")\])'
_PATTERN_TOKEN = re.compile(r'\.(\*|[^.\[\]]+)|\[(\*|\d+|"(?:[^"\\]|\\.)*")\]')


@lru_cache(maxsize=8192)
def _key_segment(key: str) -> str:
    """`.key` for identifier-like keys, else `["key"]` with JSON escapes."""
    return "." + key if _IDENT.match(key) else "[" + orjson.dumps(key).decode() + "]"


def _pattern_regex(pattern: str) -> str:
    """Regex source matching the rendered paths a `$...` pattern names (`*`: one segment)."""
    if not pattern.startswith("$"):
        raise ValueError(f"diff pattern {pattern!r}: expected status, body, header:NAME or a "
                         "JSON path starting with $ (e.g. $.meta.*)")
    parts, pos = [r"\$"], 1
    while pos < len(pattern):
        m = _PATTERN_TOKEN.match(pattern, pos)
        if m is None:
            raise ValueError(f"diff pattern {pattern!r}: cannot read it from offset {pos} "
                             '(segments are .key, ["key"], [N] or * / [*])')
        key, index = m.group(1), m.group(2)
        if key == "*" or index == "*":
            parts.append(_ANY_SEGMENT)
        elif key is not None:
            parts.append(re.escape(_key_segment(key)))
        elif index.startswith('"'):
            parts.append(re.escape(_key_segment(orjson.loads(index))))
        else:
            parts.append(re.escape(f"[{int(index)}]"))
        pos = m.end()
    return "".join(parts)


def _compile(patterns: Iterable[str], tail: str) -> re.Pattern[str] | None:
    sources = [f"(?:{_pattern_regex(p)})" for p in patterns]
    return re.compile(f"(?:{'|'.join(sources)}){tail}") if sources else None


@dataclass(frozen=True)
class DiffRules:
    """What compare() looks at. Patterns are compiled once, here; a bad one raises ValueError.

    Args:
        headers: header names compared (case-insensitive names, case-sensitive values).
        ignore: `status`, `body`, `header:NAME`, or JSON paths such as `$.meta.*`,
            `$.items[*].ts`, `$.id`, `$["odd key"]`: `*` is one key or index, and a
            pattern also covers everything below the path it matches.
        array_as_set: JSON paths (same syntax, matching the array's own path) whose
            arrays are compared as multisets; a difference there is reported once, at
            the array, as the items only the primary / only the shadow has.
        max_differences: real differences kept per comparison (noise: the same).
        max_nodes: JSON walk steps before the rest is compared by canonical hash.
    """

    headers: tuple[str, ...] = ("content-type",)
    ignore: tuple[str, ...] = ()
    array_as_set: tuple[str, ...] = ()
    max_differences: int = 20
    max_nodes: int = MAX_NODES
    _headers: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _ignore_status: bool = field(init=False, repr=False, compare=False)
    _ignore_body: bool = field(init=False, repr=False, compare=False)
    _ignore: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _as_set: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_differences < 1 or self.max_nodes < 1:
            raise ValueError("max_differences and max_nodes must be >= 1")
        ignore = tuple(p.strip() for p in self.ignore)
        ignored_headers = {p[7:].strip().lower() for p in ignore if p.lower().startswith("header:")}
        json_patterns = [p for p in ignore if p.startswith("$")]
        for p in ignore:
            if p not in ("status", "body") and not p.lower().startswith("header:"):
                _pattern_regex(p)  # raises on anything else
        headers = tuple(dict.fromkeys(h.strip().lower() for h in self.headers))
        set_ = object.__setattr__
        set_(self, "headers", headers)
        set_(self, "ignore", ignore)
        set_(self, "array_as_set", tuple(p.strip() for p in self.array_as_set))
        set_(self, "_headers", tuple(h for h in headers if h not in ignored_headers))
        set_(self, "_ignore_status", "status" in ignore)
        set_(self, "_ignore_body", "body" in ignore)
        # Covers the matched path and everything below it, not `$.idx` for `$.id`.
        set_(self, "_ignore", _compile(json_patterns, r"(?=[.\[]|\Z)"))
        set_(self, "_as_set", _compile(self.array_as_set, r"\Z"))


DEFAULT_RULES: Final = DiffRules()


# -- parsing a captured response --------------------------------------------------------

def parse_captured(raw: bytes, head_request: bool = False) -> Captured | None:
    """Parse one whole HTTP/1.1 response as received from an upstream.

    Framed by the core the proxy frames responses with (parse_response_head and the
    strict ChunkedScanner), about 10x cheaper than an h11 connection per response.

    Args:
        raw: the response bytes: head and a Content-Length, chunked or to-close body
            (anything after the end of the response is ignored). 1xx responses before
            the final one are skipped.
        head_request: the request was HEAD, so the response has no body.

    Returns:
        A Captured with the de-chunked body (gzip/deflate content-encoding decoded, up
        to 8 MiB), or None when the bytes are not one complete valid response.
    """
    raw = bytes(raw)
    pos = 0
    try:
        while True:
            end = find_head_end(raw, pos)
            if end < 0 or end - pos > _MAX_HEAD:
                return None
            head = raw[pos:end]
            status, _minor, length, chunked, _close, _cut = parse_response_head(head)
            if check_head(head):
                return None
            if status >= 200 or status == 101:
                break
            pos = end  # an interim 1xx response: the final one follows
        if head_request or status < 200 or status in (204, 304):
            body = b""
        elif chunked:
            body = _dechunk(raw, end)
        elif length >= 0:
            if len(raw) - end < length:
                return None  # cut short
            body = raw[end:end + length]
        else:
            body = raw[end:]  # to-close: the rest is the body
    except ValueError:  # includes ChunkedError
        return None
    captured = _trusted_captured(status, head, body)
    encoding = (captured.header("content-encoding") or "").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate") and body:
        decoded = _decode(body, encoding)
        if decoded is not None:
            captured = Captured(status, captured.headers, decoded)
    return captured


def _trusted_captured(status: int, head: bytes, body: bytes) -> Captured:
    """A Captured built in one pass over a head the core has validated.

    Skips __post_init__'s normalisation, which would walk the same fields again: on
    the diff path of every mirrored request that second walk cost as much as the parse.
    """
    pairs = _head_fields(head)
    index: dict[str, str] = {}
    for name, value in pairs:
        index[name] = value if name not in index else f"{index[name]}, {value}"
    captured = object.__new__(Captured)
    object.__setattr__(captured, "status", status)
    object.__setattr__(captured, "headers", pairs)
    object.__setattr__(captured, "body", body)
    object.__setattr__(captured, "_index", index)
    return captured


def _head_fields(head: bytes) -> tuple[tuple[str, str], ...]:
    """(lower-case name, value) of a head parse_response_head has already validated."""
    fields = []
    for line in head[:-4].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields.append((name.lower().decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return tuple(fields)


def _dechunk(raw: bytes, pos: int) -> bytes:
    scanner = ChunkedScanner()
    scanner.feed(raw, pos)
    if not scanner.done:
        raise ValueError("chunked body cut short")
    parts: list[bytes] = []  # the scanner vouched for the framing: size lines are `HEX[;ext]CRLF`
    while True:
        eol = raw.index(b"\r\n", pos)
        size = int(raw[pos:eol].partition(b";")[0], 16)
        if size == 0:
            return b"".join(parts)
        parts.append(raw[eol + 2:eol + 2 + size])
        pos = eol + 4 + size


def _decode(body: bytes, encoding: str) -> bytes | None:
    # wbits 47: zlib or gzip wrapper, detected; -15: the raw deflate some servers send.
    for wbits in (47, -15) if encoding == "deflate" else (47,):
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(body, _MAX_DECODED)
        except zlib.error:
            continue
        return out if not d.unconsumed_tail and d.eof else None
    return None


# -- comparing ---------------------------------------------------------------------------

class _Full(Exception):
    """rules.max_differences real differences are in: stop looking."""


_NOT_JSON: Final = object()
_MISSING: Final = object()
_CONTAINERS: Final = (dict, list)


def _canon(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _same(a: Any, b: Any) -> bool:
    """Strict JSON equality of two values already known to be `==`: Python's == also
    equates True with 1 and 1 with 1.0, which a typed client decodes differently."""
    t = type(a)
    if t is not type(b):
        return False
    if t is dict or t is list:
        try:
            return _canon(a) == _canon(b)
        except orjson.JSONEncodeError:  # deeper than orjson's 255 levels: let the walk decide
            return False
    return True


def _cut(value: Any) -> Any:
    t = type(value)
    if t is str:
        return value if len(value) <= _MAX_STR else value[:_MAX_STR] + "…"
    if t is dict or t is list:
        try:
            text = orjson.dumps(value)
        except orjson.JSONEncodeError:
            return "<nested too deep to show>"
        if len(text) > _MAX_VALUE_BYTES:
            return text[:_MAX_VALUE_BYTES].decode("utf-8", "ignore") + "…"
    return value


class _Walk:
    """One pass over a pair of responses. Collect mode gathers the differing paths only
    (primary vs secondary); otherwise differences are sorted into real and noise."""

    __slots__ = ("as_set", "budget", "found", "ignore", "limit", "noise", "noise_paths",
                 "paths", "truncated")

    def __init__(self, rules: DiffRules, noise_paths: set[str] | None, collect: bool) -> None:
        self.ignore = rules._ignore.match if rules._ignore is not None else None
        self.as_set = rules._as_set.match if rules._as_set is not None else None
        self.budget = rules.max_nodes
        self.limit = rules.max_differences
        self.noise_paths = noise_paths
        self.paths: set[str] | None = set() if collect else None
        self.found: list[Difference] = []
        self.noise: list[Difference] = []
        self.truncated = False

    def add(self, path: str, a: Any, b: Any, noisy: bool) -> None:
        self.budget -= 1  # in both modes, so both passes walk the same way
        if self.paths is not None:
            self.paths.add(path)
        elif noisy or (self.noise_paths is not None and path in self.noise_paths):
            if len(self.noise) < self.limit:
                self.noise.append(Difference(path, _cut(a), _cut(b)))
        elif len(self.found) < self.limit:
            self.found.append(Difference(path, _cut(a), _cut(b)))
        else:
            self.truncated = True
            raise _Full

    def absent(self, path: str, a: Any, b: Any, noisy: bool) -> None:
        if self.ignore is None or not self.ignore(path):
            self.add(path, a, b, noisy)

    def walk(self, a: Any, b: Any, path: str, noisy: bool) -> None:
        if self.ignore is not None and self.ignore(path):
            return
        if not noisy and self.noise_paths is not None and path in self.noise_paths:
            noisy = True
        t = type(a)
        if t is not type(b):
            self.add(path, a, b, noisy)  # type change: number vs string, object vs array...
        elif t is dict or t is list:
            if self.budget <= 0:
                if not _same(a, b):
                    self.add(path, a, b, noisy)
            elif t is dict:
                self.walk_dict(a, b, path, noisy)
            elif self.as_set is not None and self.as_set(path):
                self.walk_set(a, b, path, noisy)
            else:
                self.walk_list(a, b, path, noisy)
        elif a != b:
            self.add(path, a, b, noisy)

    def walk_dict(self, a: dict[str, Any], b: dict[str, Any], path: str, noisy: bool) -> None:
        self.budget -= len(a) + 1
        for key, va in a.items():
            vb = b.get(key, _MISSING)
            if vb is _MISSING:
                self.absent(path + _key_segment(key), va, ABSENT, noisy)
            elif not (va == vb and type(va) is type(vb)
                      and (type(va) not in _CONTAINERS or _same(va, vb))):
                self.walk(va, vb, path + _key_segment(key), noisy)
        for key, vb in b.items():
            if key not in a:
                self.absent(path + _key_segment(key), ABSENT, vb, noisy)

    def walk_list(self, a: list[Any], b: list[Any], path: str, noisy: bool) -> None:
        self.budget -= len(a) + 1
        common = min(len(a), len(b))
        for i in range(common):
            va, vb = a[i], b[i]
            if not (va == vb and type(va) is type(vb)
                    and (type(va) not in _CONTAINERS or _same(va, vb))):
                self.walk(va, vb, f"{path}[{i}]", noisy)
        for i in range(common, len(a)):
            self.absent(f"{path}[{i}]", a[i], ABSENT, noisy)
        for i in range(common, len(b)):
            self.absent(f"{path}[{i}]", ABSENT, b[i], noisy)

    def walk_set(self, a: list[Any], b: list[Any], path: str, noisy: bool) -> None:
        self.budget -= len(a) + len(b) + 1
        keys_a, keys_b = [_canon(x) for x in a], [_canon(x) for x in b]
        count_a, count_b = Counter(keys_a), Counter(keys_b)
        if count_a != count_b:
            self.add(path, _pick(a, keys_a, count_a - count_b),
                     _pick(b, keys_b, count_b - count_a), noisy)


def _pick(items: list[Any], keys: list[bytes], wanted: Counter[bytes]) -> list[Any]:
    out = []
    for item, key in zip(items, keys):
        if wanted[key] > 0:
            wanted[key] -= 1
            out.append(item)
    return out


@lru_cache(maxsize=256)
def _is_json_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _json_body(c: Captured, parsed: dict[int, Any]) -> Any:
    """The body parsed with orjson, once per Captured per compare() call, or _NOT_JSON."""
    key = id(c)
    if key not in parsed:
        value = _NOT_JSON
        if _is_json_type(c.header("content-type")):
            try:
                value = orjson.loads(c.body)
            except orjson.JSONDecodeError:
                pass
        parsed[key] = value
    return parsed[key]


def _first_difference(a: bytes, b: bytes) -> int:
    """Index of the first differing byte (the shorter length if one is a prefix)."""
    lo, hi = 0, min(len(a), len(b))  # a[:lo] == b[:lo]; the first difference is in [lo, hi]
    while hi - lo > 64:  # halve with memcmp-speed slice compares: O(n) bytes in all
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    while lo < hi and a[lo] == b[lo]:
        lo += 1
    return lo


def _body_side(body: bytes, at: int) -> dict[str, Any]:
    start = max(0, at - _EXCERPT_BEFORE)
    return {"length": len(body), "sha256": hashlib.sha256(body).hexdigest(), "offset": at,
            "excerpt": body[start:at + _EXCERPT_AFTER].decode("utf-8", "replace")}


def _quick_equal(a: Captured, b: Captured, rules: DiffRules) -> bool:
    """No difference at all, decided without parsing (the common case)."""
    if a.body != b.body and not rules._ignore_body:
        return False
    if a.status != b.status and not rules._ignore_status:
        return False
    return all(a.header(name) == b.header(name) for name in rules._headers)


def _diff(w: _Walk, a: Captured, b: Captured, rules: DiffRules, parsed: dict[int, Any]) -> None:
    if a.status != b.status and not rules._ignore_status:
        w.add("status", a.status, b.status, False)
    for name in rules._headers:
        va, vb = a.header(name), b.header(name)
        if va != vb:
            w.add("header:" + name, ABSENT if va is None else va, ABSENT if vb is None else vb,
                  False)
    if rules._ignore_body or a.body == b.body:
        return
    ja = jb = _NOT_JSON
    if _is_json_type(a.header("content-type")) and _is_json_type(b.header("content-type")):
        ja, jb = _json_body(a, parsed), _json_body(b, parsed)
    noise_paths = w.noise_paths or ()
    if ja is not _NOT_JSON and jb is not _NOT_JSON:
        try:
            # `body` is the root of the JSON paths when the other pass compared bytes.
            w.walk(ja, jb, "$", "body" in noise_paths)
            return
        except (RecursionError, orjson.JSONEncodeError):
            pass  # nested deeper than Python's stack or orjson's 255 levels: bytes, then
    at = _first_difference(a.body, b.body)
    w.add("body", _body_side(a.body, at), _body_side(b.body, at), "$" in noise_paths)


def compare(primary: Captured, shadow: Captured, secondary: Captured | None = None,
            rules: DiffRules = DEFAULT_RULES) -> Comparison:
    """Compare a shadow's response with the primary's for the same request.

    Args:
        primary: the primary's response.
        shadow: the shadow's response.
        secondary: the response of a second instance of the primary's version, or None.
            A shadow difference at a path where the secondary also differs from the
            primary (or at an ancestor of it) is noise.
        rules: what is compared and ignored (DiffRules).

    Returns:
        A Comparison: "match" (no difference), "noise" (only noise) or "mismatch".
        Never raises on any body bytes.
    """
    if _quick_equal(primary, shadow, rules):
        return Comparison(MATCH)
    parsed: dict[int, Any] = {}
    noise_paths = None
    if secondary is not None and not _quick_equal(primary, secondary, rules):
        collector = _Walk(rules, None, collect=True)
        _diff(collector, primary, secondary, rules, parsed)
        noise_paths = collector.paths
    w = _Walk(rules, noise_paths, collect=False)
    try:
        _diff(w, primary, shadow, rules, parsed)
    except _Full:
        pass
    result = MISMATCH if w.found else NOISE if w.noise else MATCH
    return Comparison(result, w.found, w.noise, w.truncated)
