"""The load benchmark's records summed up: medians per point over repeats, and number formats.

Shared by report.py and targets.py (and run.py's one line per point). Pure: plain records
in, numbers and strings out.
"""

from __future__ import annotations

import statistics
from typing import Any

from plan import CONNS, CONTENDERS, SCENARIOS

Key = tuple[str, str]  # (contender, scenario)


def med(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def f_rps(x: float | None) -> str:
    return "-" if x is None else "{:,.0f}".format(x)


def f_ms(x: float | None) -> str:
    if x is None:
        return "-"
    return "%.0f" % x if x >= 100 else "%.1f" % x if x >= 10 else "%.2f" % x


def f_ratio(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else "%.*f×" % (digits, x)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def errors_total(rec: dict[str, Any]) -> int:
    return sum((rec.get("errors") or {}).values())


class Summary:
    """Per (contender, scenario): medians over the repeats that produced a measurement."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.groups: dict[Key, list[dict[str, Any]]] = {}
        for r in records:
            self.groups.setdefault((r["contender"], r["scenario"]), []).append(r)

    def keys(self) -> list[Key]:
        return sorted(self.groups, key=lambda k: (SCENARIOS.index(k[1]), CONTENDERS.index(k[0])))

    def ok(self, key: Key) -> list[dict[str, Any]]:
        return [r for r in self.groups.get(key, []) if not r.get("failed")]

    def get(self, contender: str, scenario: str, field: str) -> float | None:
        return med([r.get(field) for r in self.ok((contender, scenario))])

    def typical(self, key: Key) -> dict[str, Any] | None:
        """The repeat whose req/s is the median one (for the counters shown beside it)."""
        ok = sorted(self.ok(key), key=lambda r: r["rps"])
        return ok[(len(ok) - 1) // 2] if ok else None

    def collapsed(self, key: Key) -> bool:
        reqs = med([r.get("requests") for r in self.ok(key)])
        return reqs is not None and reqs < 10 * CONNS
