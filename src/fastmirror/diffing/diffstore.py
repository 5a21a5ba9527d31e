"""Diff results, sans-I/O: counts per (upstream, endpoint) with bounded examples, and views.

`DiffStore` is written by the comparator and read by the admin endpoint (under one
lock); `snapshot()` is the JSON behind `/diffs`, `merge_snapshots` adds up workers',
`render_text` and `render_html` show a snapshot to people.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from fastmirror.diffing.diff import ABSENT, OTHER, OTHER_FIELDS, RESULTS, Comparison, Difference

__all__ = ["DiffStore", "render_html", "render_text"]


# A stored field path is cut to this many characters (JSON keys can be any length).
_MAX_PATH = 512


class _Endpoint:
    __slots__ = ("compared", "fields", "match", "mismatch", "noise", "noise_fields", "skipped")

    def __init__(self) -> None:
        self.compared = self.match = self.mismatch = self.noise = 0
        self.skipped: dict[str, int] = {}
        self.fields: dict[str, list[Any]] = {}  # path -> [count, example]
        self.noise_fields: dict[str, list[Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        return {"compared": self.compared, "match": self.match, "mismatch": self.mismatch,
                "noise": self.noise, "skipped": dict(self.skipped),
                "fields": _field_list(self.fields), "noise_fields": _field_list(self.noise_fields)}


def _field_list(fields: dict[str, list[Any]]) -> list[dict[str, Any]]:
    rows = [{"path": p, "count": c, "example": dict(ex)} for p, (c, ex) in fields.items()]
    rows.sort(key=lambda r: (-r["count"], r["path"]))
    return rows


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("latin-1")
    return str(value)


def _capped(value: Any, max_bytes: int) -> Any:
    """`value` as JSON-able data, or its JSON text cut to max_bytes and marked with "…"."""
    text = orjson.dumps(value, default=_json_default)
    if len(text) <= max_bytes:
        return orjson.loads(text)
    return text[:max_bytes].decode("utf-8", "ignore") + "…"


class DiffStore:
    """Comparison results per (upstream, endpoint), with one bounded example per field.

    Written by the diff thread and read by the event loop: every method takes a lock.

    Args:
        max_fields: differing field paths kept per endpoint (and as many noise paths);
            later paths are counted under "<other fields>", whose example has a "path".
        max_examples_bytes: each example value (request id, target, primary, shadow) is
            cut to this many bytes of JSON.
        max_endpoints: (upstream, endpoint) pairs kept; later ones count as endpoint
            "other" (EndpointNamer's cap normally keeps well below this).

    Memory is at most max_endpoints x 2 x (max_fields + 1) examples of 4 x
    max_examples_bytes.
    """

    def __init__(self, max_fields: int = 50, max_examples_bytes: int = 2048,
                 max_endpoints: int = 1000) -> None:
        self.max_fields = max_fields
        self.max_examples_bytes = max_examples_bytes
        self.max_endpoints = max_endpoints
        self._upstreams: dict[str, dict[str, _Endpoint]] = {}
        self._size = 0
        self._lock = threading.Lock()

    def _endpoint(self, upstream: str, endpoint: str) -> _Endpoint:
        endpoints = self._upstreams.setdefault(upstream, {})
        stats = endpoints.get(endpoint)
        if stats is None:
            if self._size >= self.max_endpoints and endpoint != OTHER:
                return self._endpoint(upstream, OTHER)
            stats = endpoints[endpoint] = _Endpoint()
            self._size += 1
        return stats

    def record(self, upstream: str, endpoint: str, comparison: Comparison,
               request_id: str = "", target: str = "") -> None:
        """Count one comparison, and each differing (and noise) field path in it.

        Args:
            upstream: the shadow, `host:port`.
            endpoint: EndpointNamer's name for the request.
            comparison: what compare() returned.
            request_id, target: kept in the example of a field seen for the first time.
        """
        if comparison.result not in RESULTS:
            raise ValueError(f"unknown comparison result {comparison.result!r}")
        with self._lock:
            stats = self._endpoint(upstream, endpoint)
            stats.compared += 1
            setattr(stats, comparison.result, getattr(stats, comparison.result) + 1)
            for d in comparison.differences:
                self._count(stats.fields, d, request_id, target)
            for d in comparison.noise:
                self._count(stats.noise_fields, d, request_id, target)

    def _count(self, fields: dict[str, list[Any]], d: Difference, request_id: str,
               target: str) -> None:
        path = d.path if len(d.path) <= _MAX_PATH else d.path[:_MAX_PATH] + "…"
        if path not in fields and len(fields) >= self.max_fields:
            path = OTHER_FIELDS
        entry = fields.get(path)
        if entry is not None:
            entry[0] += 1
            return
        cap = self.max_examples_bytes
        example = {"request_id": _capped(request_id, cap), "target": _capped(target, cap),
                   "primary": _capped(d.primary, cap), "shadow": _capped(d.shadow, cap)}
        if path == OTHER_FIELDS:
            example["path"] = _capped(d.path, cap)
        fields[path] = [1, example]

    def record_skipped(self, upstream: str, endpoint: str, reason: str) -> None:
        """Count a request that was not compared (too large, overload, unparseable...)."""
        with self._lock:
            skipped = self._endpoint(upstream, endpoint).skipped
            skipped[reason] = skipped.get(reason, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy of the store:

        `{"upstreams": {UPSTREAM: {"endpoints": {ENDPOINT: {"compared": n, "match": n,
        "mismatch": n, "noise": n, "skipped": {REASON: n}, "fields": [FIELD...],
        "noise_fields": [FIELD...]}}}}}`, FIELD being `{"path": p, "count": n, "example":
        {"request_id", "target", "primary", "shadow"}}`, sorted by count (desc), then path.
        `compared` = match + mismatch + noise; skipped requests are not in it.
        """
        with self._lock:
            return {"upstreams": {
                upstream: {"endpoints": {name: stats.to_dict() for name, stats in eps.items()}}
                for upstream, eps in self._upstreams.items()}}

    def counts(self) -> list[tuple[str, str, str, int]]:
        """(upstream, endpoint, result, n) for each result "match", "mismatch", "noise"."""
        with self._lock:
            return [(upstream, name, result, getattr(stats, result))
                    for upstream, eps in self._upstreams.items()
                    for name, stats in eps.items() for result in RESULTS]

    @staticmethod
    def merge_snapshots(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Sum several snapshots (one per worker) into one of the same shape.

        Args:
            snapshots: DiffStore.snapshot() results.

        Returns:
            A snapshot with counts summed per upstream, endpoint, skip reason and field
            path; each field keeps the first example seen.
        """
        merged: dict[str, dict[str, dict[str, Any]]] = {}
        for snap in snapshots:
            for upstream, up in snap.get("upstreams", {}).items():
                eps = merged.setdefault(upstream, {})
                for name, ep in up.get("endpoints", {}).items():
                    acc = eps.setdefault(name, {
                        "compared": 0, "match": 0, "mismatch": 0, "noise": 0, "skipped": {},
                        "fields": {}, "noise_fields": {}})
                    for key in ("compared", *RESULTS):
                        acc[key] += ep.get(key, 0)
                    for reason, n in ep.get("skipped", {}).items():
                        acc["skipped"][reason] = acc["skipped"].get(reason, 0) + n
                    for kind in ("fields", "noise_fields"):
                        for row in ep.get(kind, ()):
                            entry = acc[kind].setdefault(row["path"], [0, row.get("example", {})])
                            entry[0] += row["count"]
        for eps in merged.values():
            for acc in eps.values():
                acc["fields"] = _field_list(acc["fields"])
                acc["noise_fields"] = _field_list(acc["noise_fields"])
        return {"upstreams": {u: {"endpoints": eps} for u, eps in merged.items()}}


# -- rendering ---------------------------------------------------------------------------

def _show(value: Any, width: int = 60) -> str:
    """One value as it reads in a report line: JSON, "<absent>" bare, bodies summarised."""
    if value == ABSENT:
        return "<absent>"
    if isinstance(value, dict) and "sha256" in value and "excerpt" in value:
        text = (f"{value.get('length')} bytes sha256:{str(value['sha256'])[:12]} "
                f"@{value.get('offset')} {orjson.dumps(value['excerpt']).decode()}")
    else:
        text = orjson.dumps(value, default=_json_default).decode()
    return text if len(text) <= width else text[:width - 1] + "…"


def _endpoints_by_mismatch(upstream: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return sorted(upstream.get("endpoints", {}).items(),
                  key=lambda item: (-item[1].get("mismatch", 0), item[0]))


def _rate(ep: Mapping[str, Any]) -> str:
    compared = ep.get("compared", 0)
    return f"{100.0 * ep.get('mismatch', 0) / compared:.1f}%" if compared else "-"


def _skipped(ep: Mapping[str, Any]) -> str:
    return ", ".join(f"{r} {n}" for r, n in sorted(ep.get("skipped", {}).items()))


def render_text(snapshot: Mapping[str, Any], top: int = 10) -> str:
    """A readable summary of a snapshot, per shadow (upstream).

    Args:
        snapshot: DiffStore.snapshot() or merge_snapshots() output.
        top: differing fields shown per endpoint.

    Returns:
        Text: endpoints sorted by mismatch count with compared / match / mismatch /
        noise / mismatch rate, and under each its top fields, one line each:
        `$.price  412x  primary: 4.99  shadow: "4.99"`.
    """
    upstreams = snapshot.get("upstreams", {})
    if not upstreams:
        return "no responses compared yet\n"
    lines = []
    for upstream_name in sorted(upstreams):
        eps = _endpoints_by_mismatch(upstreams[upstream_name])
        total = {k: sum(ep.get(k, 0) for _, ep in eps) for k in ("compared", *RESULTS)}
        lines.append(f"shadow {upstream_name}: {total['compared']} compared, "
                     f"{total['match']} match, {total['mismatch']} mismatch "
                     f"({_rate(total)}), {total['noise']} noise")
        for name, ep in eps:
            skipped = _skipped(ep)
            lines.append(f"  {name}: {ep.get('compared', 0)} compared, {ep.get('match', 0)} "
                         f"match, {ep.get('mismatch', 0)} mismatch ({_rate(ep)}), "
                         f"{ep.get('noise', 0)} noise" + (f"; skipped: {skipped}" if skipped else ""))
            fields = ep.get("fields", [])
            for row in fields[:top]:
                ex = row.get("example", {})
                lines.append(f"    {row['path']}  {row['count']}x  primary: "
                             f"{_show(ex.get('primary'))}  shadow: {_show(ex.get('shadow'))}")
            if len(fields) > top:
                lines.append(f"    ... {len(fields) - top} more fields")
            noise = ep.get("noise_fields", [])
            if noise:
                lines.append("    noise: " + ", ".join(
                    f"{row['path']} {row['count']}x" for row in noise[:top]))
    return "\n".join(lines) + "\n"


_CSS = ("body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;color:#222}"
        "table{border-collapse:collapse;margin:.4em 0 1.2em}"
        "th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}"
        "th{background:#f2f2f2}td.n{text-align:right}.bad{color:#b00020;font-weight:600}"
        "code{font:12px ui-monospace,monospace;white-space:pre-wrap;word-break:break-all}")


def _cells(values: Iterable[Any], numeric: int = 0) -> str:
    out = []
    for i, v in enumerate(values):
        cls = ' class="n"' if i >= 1 and i <= numeric else ""
        out.append(f"<td{cls}>{v}</td>")
    return "<tr>" + "".join(out) + "</tr>"


def render_html(snapshot: Mapping[str, Any], top: int = 10) -> str:
    """A self-contained HTML page (inline CSS, escaped values) with render_text's content.

    Args:
        snapshot: DiffStore.snapshot() or merge_snapshots() output.
        top: differing fields shown per endpoint.

    Returns:
        The page, as str.
    """
    esc = html.escape
    body = ["<h1>fastmirror response diffs</h1>"]
    upstreams = snapshot.get("upstreams", {})
    if not upstreams:
        body.append("<p>No responses compared yet.</p>")
    for upstream_name in sorted(upstreams):
        eps = _endpoints_by_mismatch(upstreams[upstream_name])
        body.append(f"<h2>shadow {esc(upstream_name)}</h2><table><tr><th>endpoint</th>"
                    "<th>compared</th><th>match</th><th>mismatch</th><th>noise</th>"
                    "<th>mismatch rate</th><th>skipped</th></tr>")
        for name, ep in eps:
            bad = ' class="bad"' if ep.get("mismatch", 0) else ""
            body.append(_cells([f"<code>{esc(name)}</code>", ep.get("compared", 0),
                                ep.get("match", 0), f"<span{bad}>{ep.get('mismatch', 0)}</span>",
                                ep.get("noise", 0), _rate(ep), esc(_skipped(ep))], numeric=5))
        body.append("</table>")
        for name, ep in eps:
            fields, noise = ep.get("fields", [])[:top], ep.get("noise_fields", [])[:top]
            if not fields and not noise:
                continue
            body.append(f"<h3><code>{esc(name)}</code></h3><table><tr><th>field</th>"
                        "<th>count</th><th>primary</th><th>shadow</th><th>example request</th></tr>")
            for row in fields:
                ex = row.get("example", {})
                body.append(_cells([
                    f"<code>{esc(row['path'])}</code>", row["count"],
                    f"<code>{esc(_show(ex.get('primary'), 200))}</code>",
                    f"<code>{esc(_show(ex.get('shadow'), 200))}</code>",
                    (f"<code>{esc(str(ex.get('target', '')))}</code> "
                     f"{esc(str(ex.get('request_id', '')))}")], numeric=1))
            for row in noise:
                body.append(_cells([f"<code>{esc(row['path'])}</code> (noise)", row["count"],
                                    "", "", ""], numeric=1))
            body.append("</table>")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
            "<title>fastmirror diffs</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")
