"""Bootstrap confidence intervals over test examples, and paired bootstrap comparisons.

Per-example data come as columns: a dict of equal-length arrays (one row per test example, e.g.
{"reciprocal_rank": ...} or {"prediction": ..., "label": ...}) or a single array. A `statistic`
maps (a resample of) those columns to a metric or a dict of metrics; without one the metric is
the column mean. Resamples draw whole rows, so metrics that are not means (F1, corpus BLEU from
per-sentence statistics) get correct intervals too. Percentile intervals, fixed seed.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Union

import numpy as np

Columns = Union[Mapping[str, np.ndarray], np.ndarray, list]
Statistic = Callable[[dict[str, np.ndarray]], Union[float, Mapping[str, float]]]


def _columns(data: Columns) -> dict[str, np.ndarray]:
    columns = {"value": np.asarray(data)} if not isinstance(data, Mapping) else {k: np.asarray(v) for k, v in data.items()}
    lengths = {k: len(v) for k, v in columns.items()}
    if not columns or len(set(lengths.values())) != 1:
        raise ValueError(f"per-example columns must be non-empty and equally long, got {lengths}")
    if next(iter(lengths.values())) == 0:
        raise ValueError("cannot bootstrap zero examples")
    return columns


def _apply(statistic: Statistic | None, columns: dict[str, np.ndarray]) -> dict[str, float]:
    if statistic is None:
        return {k: float(np.mean(v)) for k, v in columns.items()}
    value = statistic(columns)
    return {k: float(v) for k, v in value.items()} if isinstance(value, Mapping) else {"value": float(value)}


def _resamples(n: int, samples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def bootstrap_ci(data: Columns, statistic: Statistic | None = None, *, samples: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> dict[str, dict[str, float]]:
    """{metric: {"value", "low", "high"}}: the metric on all rows and its percentile interval."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    columns = _columns(data)
    point = _apply(statistic, columns)
    n = len(next(iter(columns.values())))
    draws = {k: np.empty(samples) for k in point}
    for s, rows in enumerate(_resamples(n, samples, seed)):
        for k, v in _apply(statistic, {c: col[rows] for c, col in columns.items()}).items():
            draws[k][s] = v
    tail = (1 - confidence) / 2 * 100
    return {k: {"value": point[k], "low": float(np.percentile(draws[k], tail)),
                "high": float(np.percentile(draws[k], 100 - tail))} for k in point}


def paired_bootstrap(first: Columns, second: Columns, statistic: Statistic | None = None, *,
                     samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, dict[str, float]]:
    """Compare two systems scored on the same test rows: {metric: {"difference", "low", "high",
    "p_value"}} where difference = metric(second) - metric(first), the interval resamples the same
    rows for both, and p_value is the two-sided bootstrap probability of a difference of 0 or the
    opposite sign."""
    a, b = _columns(first), _columns(second)
    n = len(next(iter(a.values())))
    if len(next(iter(b.values()))) != n:
        raise ValueError(f"paired bootstrap needs the same test rows: {n} vs {len(next(iter(b.values())))}")
    point_a, point_b = _apply(statistic, a), _apply(statistic, b)
    draws = {k: np.empty(samples) for k in point_a}
    for s, rows in enumerate(_resamples(n, samples, seed)):
        ra = _apply(statistic, {c: col[rows] for c, col in a.items()})
        rb = _apply(statistic, {c: col[rows] for c, col in b.items()})
        for k in draws:
            draws[k][s] = rb[k] - ra[k]
    tail = (1 - confidence) / 2 * 100
    result = {}
    for k, d in draws.items():
        p = 2 * min(np.mean(d <= 0), np.mean(d >= 0))
        result[k] = {"difference": point_b[k] - point_a[k], "low": float(np.percentile(d, tail)),
                     "high": float(np.percentile(d, 100 - tail)), "p_value": float(min(1.0, p))}
    return result
