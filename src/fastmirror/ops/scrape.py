"""Reading a ``/metrics`` scrape back: Prometheus text -> plain, typed numbers, parsed once.

``metrics`` writes fastmirror's exposition; this module is its one reader. ``fastmirror
report`` and ``GET /report`` (diffing.report), ``fastmirror demo`` and the load benchmark
(benchmarks/load) hand it the text they fetched and pick what they need from the
``Scrape`` it returns: every sample by name with its labels, and every histogram as
cumulative buckets ready for ``quantile``. Nothing here knows what a series means or
decides anything about it; the readers aggregate. Pure: it fetches nothing, keeps no
state and imports neither asyncio nor socket.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["DURATION", "MIRROR", "QUEUE_DEPTH", "RESPONSES", "Histogram", "Scrape", "Series",
           "quantile", "read_metrics"]

# The sample names the readers look up (CONTRACT.md names them).
DURATION = "fastmirror_request_duration_seconds"  # a histogram family
RESPONSES = "fastmirror_responses_total"
MIRROR = "fastmirror_mirror_requests_total"
QUEUE_DEPTH = "fastmirror_mirror_queue_depth"

Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), bounds ascending, inf last


class Series(NamedTuple):
    """One sample line: its labels (unescaped) and its value."""

    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Histogram:
    """One histogram series: its labels without ``le``, and its cumulative buckets."""

    labels: Mapping[str, str]
    buckets: tuple[tuple[float, float], ...]  # ascending by bound, the +Inf bucket last


@dataclass(frozen=True)
class Scrape:
    """One scrape, parsed.

    ``samples`` maps a sample name as it appears in the text (``x_total``, ``x_bucket``,
    ``x_sum``, a gauge's own name) to its series in text order; ``histograms`` maps the
    name of each family typed ``histogram`` to its series' buckets.
    """

    samples: Mapping[str, tuple[Series, ...]]
    histograms: Mapping[str, tuple[Histogram, ...]]

    def series(self, name: str) -> tuple[Series, ...]:
        """The series of sample ``name``; none when the scrape does not have it."""
        return self.samples.get(name, ())

    def sum_by(self, name: str, *labels: str) -> dict[tuple[str, ...], float]:
        """Values of sample ``name`` added up per value of ``labels`` (the others summed over).

        Raises:
            KeyError: a series lacks one of ``labels``.
        """
        out: dict[tuple[str, ...], float] = {}
        for s in self.series(name):
            key = tuple(s.labels[label] for label in labels)
            out[key] = out.get(key, 0.0) + s.value
        return out

    def buckets_by(self, family: str, *labels: str) -> dict[tuple[str, ...], Buckets]:
        """Histogram ``family``'s cumulative buckets added up bound by bound per value of ``labels``.

        Raises:
            KeyError: a series lacks one of ``labels``.
        """
        totals: dict[tuple[str, ...], dict[float, float]] = {}
        for h in self.histograms.get(family, ()):
            total = totals.setdefault(tuple(h.labels[label] for label in labels), {})
            for bound, count in h.buckets:
                total[bound] = total.get(bound, 0.0) + count
        return {key: sorted(total.items()) for key, total in totals.items()}


def read_metrics(text: str | bytes) -> Scrape:
    """Parse a Prometheus text exposition (format 0.0.4), as ``Registry.render`` writes it.

    Empty text is an empty scrape. Bytes are read as UTF-8.

    Raises:
        ValueError: the text is not Prometheus exposition (prometheus-client's parser
            says why), or bytes that are not UTF-8.
        KeyError: a histogram bucket without ``le``.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    samples: dict[str, list[Series]] = {}
    histograms: dict[str, tuple[Histogram, ...]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append(Series(s.labels, s.value))
        if family.type == "histogram":
            buckets = [(dict(s.labels), s.value) for s in family.samples if s.name == family.name + "_bucket"]
            histograms[family.name] = histograms.get(family.name, ()) + _histograms(buckets)
    return Scrape({name: tuple(series) for name, series in samples.items()}, histograms)


def _histograms(bucket_samples: list[tuple[dict[str, str], float]]) -> tuple[Histogram, ...]:
    """Group one family's ``_bucket`` samples into series by their labels other than ``le``."""
    series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    for labels, value in bucket_samples:
        bound = float(labels.pop("le"))  # "+Inf" reads as inf
        series.setdefault(tuple(labels.items()), []).append((bound, value))
    return tuple(Histogram(dict(key), tuple(sorted(buckets))) for key, buckets in series.items())


def quantile(bucket_counts: Sequence[tuple[float, float]] | Mapping[float, float], q: float) -> float:
    """Estimate the q-quantile from cumulative histogram buckets.

    Same rule as PromQL ``histogram_quantile``: find the bucket holding rank
    ``q * count`` and interpolate linearly between its bounds (the first bucket's
    lower bound is 0). A rank in the +Inf bucket returns the largest finite bound.

    Args:
        bucket_counts: ``(upper_bound, cumulative_count)`` pairs (or a mapping), the
            last bound being ``inf``.
        q: in [0, 1].

    Returns:
        The estimate in the bounds' unit, or NaN when there are no observations.

    Raises:
        ValueError: q outside [0, 1].
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], not {q}")
    items = sorted(bucket_counts.items() if isinstance(bucket_counts, Mapping) else bucket_counts)
    if not items or items[-1][1] <= 0:
        return math.nan
    total = items[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in items:
        if count >= rank and count > prev_count:
            if math.isinf(bound):
                return prev_bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound
