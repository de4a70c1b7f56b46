"""The book's statistics: bootstrap intervals, paired comparisons, non-inferiority with Holm.

Per-example data come as columns: a dict of equal-length arrays (one row per test example, e.g.
{"reciprocal_rank": ...} or {"prediction": ..., "label": ...}) or a single array. A `statistic`
maps (a resample of) those columns to a metric or a dict of metrics; without one the metric is
the column mean. Resamples draw whole rows, so metrics that are not means (F1, corpus BLEU from
per-sentence statistics) get correct intervals too. With `clusters` (one id per row) whole
clusters are drawn instead of rows: the unit that was sampled (a function with its variants, a
function with its words or pairs) is the unit that is resampled. Percentile intervals, fixed seed.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

Columns = Mapping[str, np.ndarray] | np.ndarray | list
Statistic = Callable[[dict[str, np.ndarray]], float | Mapping[str, float]]


def _columns(data: Columns) -> dict[str, np.ndarray]:
    columns = {"value": np.asarray(data)} if not isinstance(data, Mapping) else {k: np.asarray(v) for k, v in data.items()}
    lengths = {k: len(v) for k, v in columns.items()}
    if not columns or len(set(lengths.values())) != 1:
        raise ValueError(f"per-example columns must be non-empty and equally long, got {lengths}")
    if next(iter(lengths.values())) == 0:
        raise ValueError("cannot bootstrap zero examples")
    return columns


def _length(columns: dict[str, np.ndarray]) -> int:
    return len(next(iter(columns.values())))


def _apply(statistic: Statistic | None, columns: dict[str, np.ndarray]) -> dict[str, float]:
    if statistic is None:
        return {k: float(np.mean(v)) for k, v in columns.items()}
    value = statistic(columns)
    return {k: float(v) for k, v in value.items()} if isinstance(value, Mapping) else {"value": float(value)}


class _Resampler:
    """Row indices of bootstrap resamples: rows, or whole clusters of rows."""

    def __init__(self, n: int, clusters: Sequence | None, samples: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.samples = samples
        if clusters is None:
            self.members = None
            self.units = n
            return
        clusters = np.asarray(clusters)
        if len(clusters) != n:
            raise ValueError(f"clusters must give one id per row: {len(clusters)} ids for {n} rows")
        _, inverse = np.unique(clusters, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse))
        self.members = np.split(order, bounds[:-1])
        self.units = len(self.members)

    def draws(self) -> np.ndarray:
        """(samples, units) unit indices; one call, so a seed always gives the same resamples."""
        return self.rng.integers(0, self.units, size=(self.samples, self.units))

    def rows(self, units: np.ndarray) -> np.ndarray:
        return units if self.members is None else np.concatenate([self.members[u] for u in units])


def _percentiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def bootstrap_ci(data: Columns, statistic: Statistic | None = None, *, clusters: Sequence | None = None,
                 samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict[str, dict[str, float]]:
    """{metric: {"value", "low", "high"}}: the metric on all rows and its percentile interval.

    Without a statistic and with clusters, each resample's metric is the mean over the rows of the
    drawn clusters (a ratio of sums, e.g. correct words over words), computed from cluster sums."""
    _check_confidence(confidence)
    columns = _columns(data)
    point = _apply(statistic, columns)
    resampler = _Resampler(_length(columns), clusters, samples, seed)
    units = resampler.draws()
    draws = {k: np.empty(samples) for k in point}
    if statistic is None:  # means: vectorised over resamples via per-unit sums and counts
        counts = (np.ones(resampler.units) if resampler.members is None
                  else np.array([len(m) for m in resampler.members], dtype=float))
        for k, column in columns.items():
            sums = (column.astype(float) if resampler.members is None
                    else np.array([column[m].astype(float).sum() for m in resampler.members]))
            draws[k] = sums[units].sum(1) / counts[units].sum(1)
    else:
        for s, drawn in enumerate(units):
            rows = resampler.rows(drawn)
            for k, v in _apply(statistic, {c: col[rows] for c, col in columns.items()}).items():
                draws[k][s] = v
    return {k: {"value": point[k], **dict(zip(("low", "high"), _percentiles(draws[k], confidence)))}
            for k in point}


def paired_bootstrap(first: Columns, second: Columns, statistic: Statistic | None = None, *,
                     clusters: Sequence | None = None, samples: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> dict[str, dict[str, float]]:
    """Compare two systems scored on the same test rows: {metric: {"difference", "low", "high",
    "p_value"}} where difference = metric(second) - metric(first), the interval resamples the same
    rows (or clusters) for both, and p_value is the two-sided bootstrap probability of a difference
    of 0 or the opposite sign."""
    _check_confidence(confidence)
    a, b = _columns(first), _columns(second)
    n = _length(a)
    if _length(b) != n:
        raise ValueError(f"paired bootstrap needs the same test rows: {n} vs {_length(b)}")
    point_a, point_b = _apply(statistic, a), _apply(statistic, b)
    resampler = _Resampler(n, clusters, samples, seed)
    draws = {k: np.empty(samples) for k in point_a}
    for s, drawn in enumerate(resampler.draws()):
        rows = resampler.rows(drawn)
        ra = _apply(statistic, {c: col[rows] for c, col in a.items()})
        rb = _apply(statistic, {c: col[rows] for c, col in b.items()})
        for k in draws:
            draws[k][s] = rb[k] - ra[k]
    result = {}
    for k, d in draws.items():
        p = 2 * min(np.mean(d <= 0), np.mean(d >= 0))
        low, high = _percentiles(d, confidence)
        result[k] = {"difference": point_b[k] - point_a[k], "low": low, "high": high, "p_value": float(min(1.0, p))}
    return result


def _seed_pairs(reference: Sequence[Columns], variant: Sequence[Columns]) -> tuple[list, list, int]:
    """Both systems' per-seed columns, checked to pair up seed by seed on the same test rows."""
    if len(reference) != len(variant) or not reference:
        raise ValueError(f"need the same seeds for both systems, got {len(reference)} and {len(variant)}")
    ref = [_columns(c) for c in reference]
    var = [_columns(c) for c in variant]
    n = _length(ref[0])
    if any(_length(c) != n for c in ref + var):
        raise ValueError("every seed of both systems must be scored on the same test rows")
    return ref, var, n


def seeded_difference_draws(reference: Sequence[Columns], variant: Sequence[Columns], statistic: Statistic,
                            metric: str, *, clusters: Sequence | None = None, samples: int = 1000,
                            seed: int = 0) -> tuple[float, np.ndarray]:
    """Paired difference variant - reference of `metric`, averaged over seeds, and its bootstrap
    draws. reference[i] and variant[i] are the per-example columns of seed i on the same test rows.
    Each draw resamples the seeds (with replacement) and the test rows (or clusters; the same rows
    for every seed and both systems), so the interval carries both sources of variation."""
    ref, var, n = _seed_pairs(reference, variant)
    point = float(np.mean([_apply(statistic, v)[metric] - _apply(statistic, r)[metric] for r, v in zip(ref, var)]))
    resampler = _Resampler(n, clusters, samples, seed)
    seed_draws = np.random.default_rng(seed + 1).integers(0, len(ref), size=(samples, len(ref)))
    draws = np.empty(samples)
    for s, drawn in enumerate(resampler.draws()):
        rows = resampler.rows(drawn)
        per_seed = {}
        for i in set(seed_draws[s].tolist()):
            per_seed[i] = (_apply(statistic, {c: col[rows] for c, col in var[i].items()})[metric]
                           - _apply(statistic, {c: col[rows] for c, col in ref[i].items()})[metric])
        draws[s] = np.mean([per_seed[i] for i in seed_draws[s]])
    return point, draws


def _seed_and_row_draws(systems: Sequence[Sequence[Columns]], weights: Sequence[float], statistic: Statistic,
                        metric: str, clusters: Sequence | None, samples: int,
                        seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The per-seed contrasts sum_i weights[i] x `metric`(systems[i]) on all test rows (variant -
    reference: systems (reference, variant), weights (-1, 1)), the bootstrap draws of their mean over
    seeds when only the test rows (or clusters) are resampled, and the number of resampling units."""
    if len(systems) != len(weights) or len({len(runs) for runs in systems}) != 1 or not systems[0]:
        raise ValueError(f"need one weight per system and the same seeds for every system, got {len(weights)} "
                         f"weights and {[len(runs) for runs in systems]} seeds")
    columns = [[_columns(c) for c in runs] for runs in systems]
    n = _length(columns[0][0])
    if any(_length(c) != n for runs in columns for c in runs):
        raise ValueError("every seed of every system must be scored on the same test rows")

    def contrast(seed_index: int, rows=None) -> float:
        return sum(w * _apply(statistic, {c: (col if rows is None else col[rows]) for c, col in runs[seed_index].items()})[metric]
                   for w, runs in zip(weights, columns))

    seeds = range(len(columns[0]))
    per_seed = np.array([contrast(i) for i in seeds])
    resampler = _Resampler(n, clusters, samples, seed)
    draws = np.empty(samples)
    for s, drawn in enumerate(resampler.draws()):
        rows = resampler.rows(drawn)
        draws[s] = np.mean([contrast(i, rows) for i in seeds])
    return per_seed, draws, resampler.units


def _two_level(per_seed: np.ndarray, draws: np.ndarray, units: int) -> tuple[float, float, float, float]:
    """(mean, se, df, per-seed variance) of a mean over seeds of contrasts scored on shared test rows."""
    row_variance = float(np.var(draws, ddof=1))
    per_seed_variance = float(np.var(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
    se, df = two_level_error(per_seed_variance, len(per_seed), row_variance, units)
    return float(np.mean(per_seed)), se, df, per_seed_variance


def equivalence(systems: Sequence[Sequence[Columns]], weights: Sequence[float], statistic: Statistic, metric: str,
                margin: float, *, clusters: Sequence | None = None, samples: int = 1000, confidence: float = 0.95,
                seed: int = 0, alpha: float = 0.05) -> dict:
    """Is the contrast sum_i weights[i] x metric(systems[i]) within +-margin? Two one-sided tests (TOST)
    with `non_inferiority`'s two-level standard error: p_lower for H0 contrast <= -margin, p_upper for
    H0 contrast >= +margin; "equivalent" when both are below alpha, else "not shown". systems[i][j]:
    system i's per-example columns at seed j, every system on the same seeds and test rows. A
    difference of differences (bf16's Telly-K - full against float32's) is weights (1, -1, -1, 1)."""
    from scipy.stats import t

    if margin < 0:
        raise ValueError(f"an equivalence margin is a non-negative distance, got {margin}")
    _check_confidence(confidence)
    per_seed, draws, units = _seed_and_row_draws(systems, weights, statistic, metric, clusters, samples, seed)
    value, se, df, per_seed_variance = _two_level(per_seed, draws, units)
    if se == 0:
        p_lower, p_upper, half = float(value <= -margin), float(value >= margin), 0.0
    else:
        p_lower, p_upper = float(t.sf((value + margin) / se, df)), float(t.cdf((value - margin) / se, df))
        half = interval_half_width(se, df, confidence)
    return {"difference": value, "low": value - half, "high": value + half, "margin": margin,
            "p_lower": p_lower, "p_upper": p_upper, "seeds": len(per_seed), "seed_differences": per_seed.tolist(),
            "se": se, "df": df, "seed_sd": float(np.sqrt(per_seed_variance)), "units": units,
            "verdict": "equivalent" if max(p_lower, p_upper) < alpha else "not shown"}


def two_level_error(per_seed_variance: float, seeds: int, row_variance: float, units: int) -> tuple[float, float]:
    """(standard error, degrees of freedom) of a mean over `seeds` seeds of differences scored on shared
    test rows: the seeds' spread (a small sample: per-seed variance / seeds, seeds - 1 degrees of
    freedom) plus the test rows' sampling variance (`units` - 1 degrees of freedom), combined by
    Welch-Satterthwaite. With one seed the seed level cannot be estimated and only the rows count."""
    seed_variance = per_seed_variance / seeds if seeds > 1 else 0.0
    total = seed_variance + row_variance
    if total <= 0:
        return 0.0, float("inf")
    parts = (seed_variance ** 2 / (seeds - 1) if seeds > 1 else 0.0) + row_variance ** 2 / max(units - 1, 1)
    return float(np.sqrt(total)), (float(total ** 2 / parts) if parts > 0 else float("inf"))


def detectable_margin(se: float, df: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest margin a one-sided level-`alpha` test with this standard error shows at `power`
    when the true difference is 0 (t quantiles with `df` degrees of freedom)."""
    from scipy.stats import t

    return float((t.ppf(1 - alpha, df) + t.ppf(power, df)) * se)


def non_inferiority(reference: Sequence[Columns], variant: Sequence[Columns], statistic: Statistic,
                    metric: str, margin: float, *, clusters: Sequence | None = None, samples: int = 1000,
                    confidence: float = 0.95, seed: int = 0, alpha: float = 0.05, power: float = 0.8) -> dict:
    """Is `variant` no worse than `reference` by more than `margin` (higher metric is better)?

    A two-level test that treats the seeds as the small sample they are: the difference is the mean
    over seeds of the per-seed paired differences; its standard error combines the seeds' spread
    (k - 1 degrees of freedom) with the test rows' sampling variance (a bootstrap over rows, or whole
    clusters, with every seed kept), and the degrees of freedom come from Welch-Satterthwaite.
    H0: difference <= -margin, one-sided t p-value; the two-sided `confidence` t interval beside it;
    `detectable_margin`: the smallest margin this test could show at `power` if the true difference
    were 0. Three seeds that disagree in sign keep the interval wide, however many test rows there are."""
    from scipy.stats import t

    if margin < 0:
        raise ValueError(f"a non-inferiority margin is a non-negative distance, got {margin}")
    _check_confidence(confidence)
    _seed_pairs(reference, variant)  # the same seeds and test rows, or an error saying which
    per_seed, draws, units = _seed_and_row_draws([reference, variant], (-1, 1), statistic, metric, clusters, samples, seed)
    difference, se, df, per_seed_variance = _two_level(per_seed, draws, units)
    row_variance = float(np.var(draws, ddof=1))
    if se == 0:
        p_value, half = (0.0 if difference > -margin else 1.0), 0.0
    else:
        p_value, half = float(t.sf((difference + margin) / se, df)), interval_half_width(se, df, confidence)
    return {"difference": difference, "low": difference - half, "high": difference + half, "margin": margin,
            "p_value": p_value, "seeds": len(per_seed), "seed_differences": per_seed.tolist(), "se": se, "df": df,
            "seed_sd": float(np.sqrt(per_seed_variance)), "row_se": float(np.sqrt(row_variance)), "units": units,
            "detectable_margin": detectable_margin(se, df, alpha=alpha, power=power) if se > 0 else 0.0}


def sizes_to_show(result: Mapping, margin: float, *, seed_options: Sequence[int] = (3, 5, 10, 20),
                  alpha: float = 0.05, power: float = 0.8, half_width: float | None = None,
                  max_rows: int = 1_000_000) -> list[dict]:
    """For each number of seeds, the test rows (resampling units) at which `non_inferiority`'s test
    would show `margin` at `power` if the true difference were 0 (or, with `half_width`, at which its
    95% interval would be that narrow), from the variances `result` observed: the seeds' spread per
    seed, and the rows' variance scaled by 1 / rows. Rows are None where more seeds are needed
    whatever the rows."""
    per_seed_variance = result["seed_sd"] ** 2
    unit_variance = result["row_se"] ** 2 * result["units"]

    def enough(seeds: int, rows: int) -> bool:
        se, df = two_level_error(per_seed_variance, seeds, unit_variance / rows, rows)
        if half_width is not None:
            return interval_half_width(se, df) <= half_width
        return se == 0 or detectable_margin(se, df, alpha=alpha, power=power) <= margin

    options = []
    for seeds in seed_options:
        rows = None
        if enough(seeds, max_rows):  # the smallest row count that is enough, by bisection (monotone in rows)
            low, high = 2, max_rows
            while low < high:
                middle = (low + high) // 2
                low, high = (low, middle) if enough(seeds, middle) else (middle + 1, high)
            rows = low
        options.append({"seeds": seeds, "rows": rows})
    return options


def interval_half_width(se: float, df: float, confidence: float = 0.95) -> float:
    """Half the width of a two-sided t interval with this standard error and degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(1 - (1 - confidence) / 2, df) * se) if se > 0 else 0.0


def verdict(p_holm: float, high: float, margin: float, alpha: float = 0.05) -> str:
    """Non-inferior (Holm-adjusted p < alpha), inferior (the interval's upper bound below -margin), or
    inconclusive (neither: the data could not tell)."""
    if p_holm < alpha:
        return "non-inferior"
    return "inferior" if high < -margin else "inconclusive"


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order."""
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or np.any((p < 0) | (p > 1)):
        raise ValueError(f"p-values must be a 1-D sequence in [0, 1], got {p_values!r}")
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()
