"""Report: per shadow, is it as fast, as healthy and as correct as the primary? And a verdict.

admin ``/metrics`` + ``/diffs`` ─▶ ``build_report`` ─▶ a JSON-able dict ─▶ ``render_report_text``.
``fastmirror report`` (cli.py) and ``GET /report`` (admin.py) fetch or render the two
inputs and hand them here; this module fetches nothing, keeps no state and imports
neither asyncio nor socket.  The verdict is what a deploy pipeline gates on
(mirror → canary → promote): "pass" only when every threshold the user gave holds
for every shadow and each shadow answered at least ``min_requests`` mirrored requests.

Figures per shadow upstream:

- ``requests``: the shadow's responses (``fastmirror_responses_total{role="shadow"}``,
  every code including ``error``), i.e. the mirrored requests that finished.
- ``primary`` / ``shadow``: P50 and P99 in ms from ``fastmirror_request_duration_seconds``
  (bucket interpolation, as PromQL ``histogram_quantile``; both sides share the buckets,
  so their ratio is fair) and the error rate, (5xx + no response) / responses.  The
  primary's figures cover all its requests, of which the mirrored ones are a sample.
- ``p50_ratio``, ``p99_ratio`` (shadow / primary), ``error_rate_diff`` (shadow − primary).
- ``mirror``: sent, dropped, skipped, failed copies.
- ``diff`` and ``endpoints``: compared, match, mismatch, noise, skipped and the
  mismatch rate, in total and per endpoint with its top differing fields.

A threshold that cannot be evaluated (no latency data, nothing compared because
diffing is off) fails its check: a gate must not pass what it could not see.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from fastmirror.ops.scrape import DURATION, MIRROR, RESPONSES, quantile, read_metrics

__all__ = [
    "ThresholdError",
    "Thresholds",
    "build_report",
    "parse_fraction",
    "render_report_text",
]

TOP_FIELDS = 5  # differing fields shown per endpoint
_EXAMPLE_WIDTH = 60  # characters of each side of an example in the text rendering


class ThresholdError(ValueError):
    """A bad threshold value; ``key`` is the threshold's name (``max_p99_ratio``, ...)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def parse_fraction(text: str | float) -> float:
    """A share as a fraction in [0, 1]: ``"0.1%"`` → 0.001, ``"0.02"`` or 0.02 → 0.02.

    Raises:
        ValueError: not a number, negative, or above 1 (100%); ``"5"`` is refused
            rather than read as 500% or guessed to mean 5%.
    """
    problem = f"must be a fraction from 0 to 1 or a percentage such as 0.1%, got {text!r}"
    if isinstance(text, bool):
        raise ValueError(problem)
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        raw = str(text).strip()
        percent = raw.endswith("%")
        try:
            number = Decimal(raw.removesuffix("%").strip())
        except InvalidOperation:
            raise ValueError(problem) from None
        value = float(number / 100 if percent else number)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(problem)
    return value


def _ratio_limit(text: str | float) -> float:
    raw = text.strip().removesuffix("x") if isinstance(text, str) else text
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(text, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a ratio > 0 such as 1.2, got {text!r}")
    return value


def _count(text: str | float) -> int:
    try:
        value = int(text) if not isinstance(text, (bool, float)) else -1
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"must be an integer >= 0, got {text!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """What the shadow must meet; None = not checked.

    ``max_mismatch`` and ``max_error_rate_diff`` are fractions (0.001 = 0.1%);
    ``min_requests`` mirrored requests per shadow are needed for a pass at all.
    """

    max_p99_ratio: float | None = None
    max_p50_ratio: float | None = None
    max_mismatch: float | None = None
    max_error_rate_diff: float | None = None
    min_requests: int = 1

    @classmethod
    def parse(cls, values: Mapping[str, str | float]) -> Thresholds:
        """From flag or query-string text, keyed by field name; absent keys keep defaults.

        Raises:
            ThresholdError: an unknown key or a bad value, naming the key.
        """
        parsed: dict[str, Any] = {}
        for key, text in values.items():
            parse = _PARSERS.get(key)
            if parse is None:
                raise ThresholdError(key, "unknown threshold (one of " + ", ".join(_PARSERS) + ")")
            try:
                parsed[key] = parse(text)
            except ValueError as exc:
                raise ThresholdError(key, str(exc)) from None
        return cls(**parsed)


_PARSERS: dict[str, Callable[[Any], float | int]] = {
    "max_p99_ratio": _ratio_limit,
    "max_p50_ratio": _ratio_limit,
    "max_mismatch": parse_fraction,
    "max_error_rate_diff": parse_fraction,
    "min_requests": _count,
}


# -- reading the inputs ----------------------------------------------------------------


@dataclass
class _Scrape:
    """What the report needs of one /metrics text."""

    latency: dict[tuple[str, str], list[tuple[float, float]]]  # (role, upstream) -> buckets
    codes: dict[tuple[str, str], dict[str, float]]  # (role, upstream) -> code -> n
    mirror: dict[str, dict[str, float]]  # shadow upstream -> outcome -> n


def _read_metrics(text: str | bytes) -> _Scrape:
    scrape = read_metrics(text)
    codes: dict[tuple[str, str], dict[str, float]] = {}
    for (role, upstream, code), n in scrape.sum_by(RESPONSES, "role", "upstream", "code").items():
        codes.setdefault((role, upstream), {})[code] = n
    mirror: dict[str, dict[str, float]] = {}
    for s in scrape.series(MIRROR):
        mirror.setdefault(s.labels["upstream"], {})[s.labels["outcome"]] = s.value
    histograms = scrape.buckets_by(DURATION, "role", "upstream")
    latency = {(role, upstream): buckets for (role, upstream), buckets in histograms.items()}
    return _Scrape(latency, codes, mirror)


def _summed(series: Iterable[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """Cumulative buckets of several series added up (the primary may have changed on SIGHUP)."""
    total: dict[float, float] = {}
    for buckets in series:
        for bound, count in buckets:
            total[bound] = total.get(bound, 0.0) + count
    return sorted(total.items())


def _side(buckets: list[tuple[float, float]], codes: Mapping[str, float]) -> dict[str, Any]:
    """P50, P99 (ms) and error rate of one side."""
    out: dict[str, Any] = {}
    for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99)):
        value = quantile(buckets, q) if buckets else math.nan
        out[name] = None if math.isnan(value) else round(value * 1000, 4)
    total = sum(codes.values())
    bad = codes.get("5xx", 0) + codes.get("error", 0)
    out["responses"] = int(total)
    out["error_rate"] = round(bad / total, 6) if total else None
    return out


def _div(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def _endpoint(data: Mapping[str, Any]) -> dict[str, Any]:
    match, mismatch, noise = (int(data.get(k, 0)) for k in ("match", "mismatch", "noise"))
    compared = int(data.get("compared", match + mismatch + noise))
    skipped = data.get("skipped", 0)
    fields = sorted(data.get("fields", ()), key=lambda f: -int(f.get("count", 0)))[:TOP_FIELDS]
    return {
        "compared": compared, "match": match, "mismatch": mismatch, "noise": noise,
        "mismatch_rate": _rate(mismatch, compared),
        "skipped": int(sum(skipped.values()) if isinstance(skipped, Mapping) else skipped),
        "fields": [{"path": f.get("path"), "count": f.get("count", 0), "example": f.get("example")}
                   for f in fields],
    }  # fmt: skip


def _diff_figures(upstream: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(totals, endpoints worst first) of one upstream of a DiffStore snapshot."""
    endpoints = {name: _endpoint(d) for name, d in upstream.get("endpoints", {}).items()}
    ordered = dict(sorted(endpoints.items(), key=lambda kv: (-kv[1]["mismatch"], -kv[1]["compared"], kv[0])))
    totals = {k: sum(e[k] for e in endpoints.values()) for k in ("compared", "match", "mismatch", "noise", "skipped")}
    totals["mismatch_rate"] = _rate(totals["mismatch"], totals["compared"])
    return totals, ordered


# -- checks ----------------------------------------------------------------------------

# (check name, Thresholds field, the shadow figure it limits, comparison that must hold)
_CHECKS: tuple[tuple[str, str, Callable[[dict[str, Any]], Any], str], ...] = (
    ("requests", "min_requests", lambda s: s["requests"], ">="),
    ("p50_ratio", "max_p50_ratio", lambda s: s["p50_ratio"], "<="),
    ("p99_ratio", "max_p99_ratio", lambda s: s["p99_ratio"], "<="),
    ("mismatch_rate", "max_mismatch", lambda s: s["diff"]["mismatch_rate"], "<="),
    ("error_rate_diff", "max_error_rate_diff", lambda s: s["error_rate_diff"], "<="),
)
_BROKEN = {"<=": ">", ">=": "<"}  # how a failed check reads
_UNKNOWN = {
    "p50_ratio": "no latency data",
    "p99_ratio": "no latency data",
    "mismatch_rate": "no responses compared; is --diff on?",
    "error_rate_diff": "no responses",
}


def _checks(upstream: str, shadow: dict[str, Any], thresholds: Thresholds) -> list[dict[str, Any]]:
    out = []
    for name, field, figure, op in _CHECKS:
        limit = getattr(thresholds, field)
        if limit is None:
            continue
        value = figure(shadow)
        ok = value is not None and (value >= limit if op == ">=" else value <= limit)
        out.append({"upstream": upstream, "name": name, "value": value, "op": op, "limit": limit, "ok": ok})
    return out


def _reason(check: Mapping[str, Any], shadow: Mapping[str, Any]) -> str:
    name, value, limit = check["name"], check["value"], check["limit"]
    head = f"shadow {check['upstream']}"
    if name == "requests":
        return f"{head} {value} mirrored requests < {limit} required"
    label = name.replace("_", " ")
    if value is None:
        return f"{head} {label} unknown ({_UNKNOWN[name]})"
    if name == "mismatch_rate":
        text = f"{head} {label} {_pct(value)} > {_pct(limit)}"
        worst = next(iter(shadow["endpoints"].items()), None)
        if worst is not None and worst[1]["mismatch"]:
            text += f" (worst: {worst[0]} {_pct(worst[1]['mismatch_rate'])})"
        return text
    if name == "error_rate_diff":
        return f"{head} {label} {_pct(value, sign=True)} > {_pct(limit)}"
    return f"{head} {label} {value:.3g} > {limit:.3g}"


# -- the report ------------------------------------------------------------------------


def build_report(metrics_text: str | bytes, diffs: Mapping[str, Any], thresholds: Thresholds) -> dict[str, Any]:
    """The report of one scrape and one diff snapshot, with its verdict.

    Args:
        metrics_text: the Prometheus text of ``/metrics`` (one process or a supervisor's sum).
        diffs: the ``/diffs`` snapshot, ``{"upstreams": {upstream: {"endpoints": {...}}}}``.
        thresholds: what each shadow must meet.

    Returns:
        ``{"verdict": "pass" | "fail", "reasons": [...], "thresholds": {...},
        "shadows": {upstream: {...}}, "checks": [{"upstream", "name", "value", "op",
        "limit", "ok"}, ...]}``; JSON-able (None where a figure is unknown).
    """
    scrape = _read_metrics(metrics_text)
    diff_upstreams: Mapping[str, Any] = diffs.get("upstreams", {}) or {}
    primary = _primary_side(scrape)
    shadows: dict[str, dict[str, Any]] = {}
    checks: list[dict[str, Any]] = []
    reasons: list[str] = []
    for upstream in _shadow_upstreams(scrape, diff_upstreams):
        shadow = shadows[upstream] = _shadow(scrape, upstream, primary, diff_upstreams.get(upstream, {}))
        own = _checks(upstream, shadow, thresholds)
        checks += own
        reasons += [_reason(c, shadow) for c in own if not c["ok"]]
    if not shadows:
        reasons.append("no shadow upstream in the metrics (no --shadow given, or the proxy just started)")
    return {
        "verdict": "fail" if reasons else "pass",
        "reasons": reasons,
        "thresholds": dataclasses.asdict(thresholds),
        "shadows": shadows,
        "checks": checks,
    }


def _primary_side(scrape: _Scrape) -> dict[str, Any]:
    """The primary's figures, over every primary in the scrape (it may have changed on SIGHUP)."""
    buckets = _summed(b for (role, _), b in scrape.latency.items() if role == "primary")
    codes: dict[str, float] = {}
    for (role, _), by_code in scrape.codes.items():
        if role == "primary":
            for code, n in by_code.items():
                codes[code] = codes.get(code, 0) + n
    return _side(buckets, codes)


def _shadow_upstreams(scrape: _Scrape, diff_upstreams: Mapping[str, Any]) -> list[str]:
    """Every shadow the scrape or the diffs name, sorted."""
    # The secondary (diffing's noise-cancelling twin) also has mirror counters, but it
    # is the primary's version, not a shadow under test.
    secondaries = {u for role, u in (*scrape.latency, *scrape.codes) if role == "secondary"}
    return sorted(
        ({u for role, u in (*scrape.latency, *scrape.codes) if role == "shadow"}
         | set(scrape.mirror) | set(diff_upstreams)) - secondaries
    )  # fmt: skip


def _shadow(scrape: _Scrape, upstream: str, primary: Mapping[str, Any], diffs: Mapping[str, Any]) -> dict[str, Any]:
    """One shadow's figures beside the primary's (``diffs``: its part of the /diffs snapshot)."""
    side = _side(scrape.latency.get(("shadow", upstream), []), scrape.codes.get(("shadow", upstream), {}))
    totals, endpoints = _diff_figures(diffs)
    err_diff = None
    if side["error_rate"] is not None and primary["error_rate"] is not None:
        err_diff = round(side["error_rate"] - primary["error_rate"], 6)
    outcomes = scrape.mirror.get(upstream, {})
    return {
        "requests": side.pop("responses"),
        "primary": {k: primary[k] for k in ("p50_ms", "p99_ms", "error_rate")},
        "shadow": side,
        "p50_ratio": _div(side["p50_ms"], primary["p50_ms"]),
        "p99_ratio": _div(side["p99_ms"], primary["p99_ms"]),
        "error_rate_diff": err_diff,
        "mirror": {o: int(outcomes.get(o, 0)) for o in ("sent", "dropped", "skipped", "failed")},
        "diff": totals,
        "endpoints": endpoints,
    }


# -- text ------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"


def _pct(rate: float | None, *, sign: bool = False) -> str:
    if rate is None:
        return "-"
    return f"{rate * 100:{'+' if sign else ''}.3g}%"


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.3g}x"


def _cut(value: Any) -> str:
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= _EXAMPLE_WIDTH else text[: _EXAMPLE_WIDTH - 3] + "..."


def _example(example: Any) -> str:
    if isinstance(example, Mapping) and "primary" in example and "shadow" in example:
        return f"primary {_cut(example['primary'])}  shadow {_cut(example['shadow'])}"
    return "" if example is None else _cut(example)


def _shadow_lines(upstream: str, s: Mapping[str, Any], checks: list[Mapping[str, Any]]) -> list[str]:
    m, p, sh, d = s["mirror"], s["primary"], s["shadow"], s["diff"]
    lines = [
        (f"shadow {upstream}: {s['requests']} mirrored requests "
         f"(sent {m['sent']}, dropped {m['dropped']}, skipped {m['skipped']}, failed {m['failed']})"),
        f"  {'':12}{'primary':>12}{'shadow':>12}{'shadow/primary':>16}",
        f"  {'P50':12}{_ms(p['p50_ms']):>12}{_ms(sh['p50_ms']):>12}{_times(s['p50_ratio']):>16}",
        f"  {'P99':12}{_ms(p['p99_ms']):>12}{_ms(sh['p99_ms']):>12}{_times(s['p99_ratio']):>16}",
        (f"  {'error rate':12}{_pct(p['error_rate']):>12}{_pct(sh['error_rate']):>12}"
         f"{_pct(s['error_rate_diff'], sign=True):>16}"),
    ]
    if d["compared"] or d["skipped"]:
        lines.append(f"  diffs: {d['compared']} compared, {d['match']} match, {d['mismatch']} mismatch "
                     f"({_pct(d['mismatch_rate'])}), {d['noise']} noise, {d['skipped']} skipped")  # fmt: skip
        for name, e in s["endpoints"].items():
            lines.append(f"    {name}: {e['compared']} compared, {e['mismatch']} mismatch "
                         f"({_pct(e['mismatch_rate'])}), {e['noise']} noise")  # fmt: skip
            for f in e["fields"]:
                lines.append(f"      {f['path']} x{f['count']}  {_example(f['example'])}".rstrip())
    else:
        lines.append("  diffs: none compared (diffing off, or nothing mirrored yet)")
    for c in checks:
        name, value, limit = c["name"], c["value"], c["limit"]
        label = name.replace("_", " ")
        if value is None:
            lines.append(f"  FAIL  {label} unknown ({_UNKNOWN[name]})")
            continue
        if name in ("mismatch_rate", "error_rate_diff"):
            shown, lim = _pct(value, sign=name == "error_rate_diff"), _pct(limit)
        elif name == "requests":
            shown, lim = str(value), str(limit)
        else:
            shown, lim = f"{value:.3g}", f"{limit:.3g}"
        op = c["op"] if c["ok"] else _BROKEN[c["op"]]
        lines.append(f"  {'ok  ' if c['ok'] else 'FAIL'}  {label} {shown} {op} {lim}")
    return lines


def render_report_text(report: Mapping[str, Any]) -> str:
    """The report for a terminal or a pipeline log: one block per shadow, the verdict last.

    The last lines are ``PASS: ...`` or one ``FAIL: <reason>`` per failed check, e.g.
    ``FAIL: shadow 127.0.0.1:9001 p99 ratio 11.8 > 1.2``.
    """
    lines: list[str] = []
    for upstream, shadow in report["shadows"].items():
        lines += _shadow_lines(upstream, shadow, [c for c in report["checks"] if c["upstream"] == upstream])
        lines.append("")
    if report["verdict"] == "pass":
        n = len(report["shadows"])
        lines.append(f"PASS: {len(report['checks'])} checks hold for {n} shadow{'s' if n != 1 else ''}")
    else:
        lines += [f"FAIL: {reason}" for reason in report["reasons"]]
    return "\n".join(lines) + "\n"
