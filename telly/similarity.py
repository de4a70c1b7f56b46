"""How alike two sets of representations of the same inputs are: the paper's RSA, linear CKA and
debiased CKA.

All three are computed from feature-space products (d x d matrices), never from the n x n
similarity or Gram matrices, unless the features are wider than there are inputs. The identity
that makes this possible: for any A (n, da) and B (n, db), sum_ij (A A^T)_ij (B B^T)_ij =
||A^T B||_F^2. Inputs are centred in float64 before the float32 matrix products so that the
large common component (pooled transformer states are highly anisotropic) is handled exactly in
float64 and float32 rounding only touches the varying part; products are accumulated in float64
over row blocks.

Confidence intervals (`bootstrap_layer_similarity`) resample the compared inputs: each resample
draws n of the n inputs with replacement, the same draw for every layer, so per-layer intervals
and anything summed over layers (the share of the total drop held by the top blocks) come from
one set of resamples. A resample is a weight vector w (how often each input was drawn), and every
sum the three measures need is a quadratic form w^T M w or a product M w of an n x n matrix built
once per layer, so a resample costs O(n^2) instead of a pass over the features (O(n d^2)). An
input drawn twice is never paired with its own copy (as rsatoolbox's pattern bootstrap leaves
such pairs out): a pair of copies would read as two inputs with identical representations in both
models and pull every measure towards 1 (for biased CKA at n near d, by more than the interval's
width). What the statistic does with an input and itself (RSA's diagonal, biased CKA's K_ii) it
does once per drawn row. CKA's kernels are of rows centred on the mean of all n inputs.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from telly.progress import progress_bar

MEASURES = ("rsa", "cka", "cka_debiased")
# Resamples per confidence interval, whatever the profile: a 31-state, 800-input, 576-wide
# comparison with all three measures took 39 s at load 6 and 66 s at load 11 on a shared 2-core
# Xeon, point estimates included; the bootstrap part grows linearly with the resamples.
BOOTSTRAP_SAMPLES = 1000
CONFIDENCE = 0.95
# The paper's "top two layers" of 12 in relative depth: the blocks k of L with k / L > 5/6.
TOP_DEPTH = 5 / 6

# Rows per float32 matrix product before the partial sum is added to the float64 total.
ROW_BLOCK = 4096
# A centred input whose norm is below this fraction of its raw norm is constant up to rounding.
CONSTANT_TOLERANCE = 1e-7


@dataclass(frozen=True)
class _Centred:
    """One representation split into its mean row and float64 deviations from it."""

    mean: np.ndarray  # (d,) float64
    deviations: np.ndarray  # (n, d) float64, columns sum to zero
    deviations32: np.ndarray  # the same in float32, for the matrix products
    row_norms_sq: np.ndarray  # (n,) float64 squared norms of the *uncentred* rows


def _as_matrix(values: object, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n inputs, d features) array; got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be numeric; got dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        row = int(np.argwhere(~np.isfinite(array))[0][0])
        raise ValueError(f"{name} has a non-finite value (NaN or inf) in row {row}")
    return array


def _check_pair(X: object, Y: object, min_n: int,
                names: tuple[str, str] = ("X", "Y")) -> tuple[np.ndarray, np.ndarray]:
    X, Y = _as_matrix(X, names[0]), _as_matrix(Y, names[1])
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"{names[0]} and {names[1]} must hold the same inputs (rows): {names[0]} "
                         f"has {X.shape[0]} rows, {names[1]} has {Y.shape[0]}")
    if X.shape[0] < min_n:
        raise ValueError(f"need at least {min_n} inputs (rows); got {X.shape[0]}")
    return X, Y


def _centre(features: np.ndarray, name: str, what: str) -> _Centred:
    """Split into mean and deviations; a constant input (every row the same) is an error."""
    values = features.astype(np.float64, copy=False)
    mean = values.mean(axis=0)
    deviations = values - mean
    spread = float(np.sqrt(np.einsum("ij,ij->", deviations, deviations)))
    scale = float(np.sqrt(np.einsum("ij,ij->", values, values)))
    if spread <= CONSTANT_TOLERANCE * scale or spread == 0.0:
        raise ValueError(f"{name} is constant: all {len(values)} rows {what}; the similarity "
                         f"is undefined (0/0)")
    return _Centred(mean, deviations, deviations.astype(np.float32),
                    np.einsum("ij,ij->i", values, values))


def _normalise_rows(features: np.ndarray, name: str) -> np.ndarray:
    values = features.astype(np.float64, copy=False)
    norms = np.sqrt(np.einsum("ij,ij->i", values, values))
    if np.any(norms == 0.0):
        row = int(np.flatnonzero(norms == 0.0)[0])
        raise ValueError(f"{name} row {row} is all zeros: it has no direction to L2-normalise")
    return values / norms[:, None]


def _deviation_product(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """U^T V for float32 centred U (n, du) and V (n, dv): row-block products summed in float64."""
    total = np.zeros((U.shape[1], V.shape[1]), dtype=np.float64)
    for start in range(0, U.shape[0], ROW_BLOCK):
        block_u = U[start:start + ROW_BLOCK]
        block_v = block_u if V is U else V[start:start + ROW_BLOCK]
        total += block_u.T @ block_v  # `a.T @ a` on one buffer takes BLAS's symmetric path
    return total


def _cross_frobenius_sq(a: _Centred, b: _Centred, centred: bool) -> float:
    """sum_ij (A A^T)_ij (B B^T)_ij = ||A^T B||_F^2, of the raw rows or of the centred rows."""
    n, da = a.deviations.shape
    db = b.deviations.shape[1]
    if b is not a and a.deviations.shape == b.deviations.shape and np.array_equal(a.deviations, b.deviations):
        b = a  # identical inputs share one product, so rounding cannot pull rsa(X, X) off 1
    if da * db <= n * (da + db):  # feature space is cheaper: d x d products
        product = _deviation_product(a.deviations32, b.deviations32)
        varying = float(np.einsum("ij,ij->", product, product))
        if centred:
            return varying
        # A^T B = n m_a m_b^T + U^T V as the deviations sum to zero. The cross term is taken in
        # float64: unit rows' deviations are nearly orthogonal to their mean, so U m_a is small
        # and would drown in float32 rounding of U^T V.
        along_means = float((a.deviations @ a.mean) @ (b.deviations @ b.mean))
        return n * n * float(a.mean @ a.mean) * float(b.mean @ b.mean) + 2 * n * along_means + varying
    # More features than inputs: the n x n Gram matrices are the smaller objects.
    rows_a = a.deviations if centred else a.deviations + a.mean
    rows_b = b.deviations if centred else b.deviations + b.mean
    gram_a = rows_a @ rows_a.T
    gram_b = gram_a if b is a else rows_b @ rows_b.T
    return float(np.einsum("ij,ij->", gram_a, gram_b))


def _rsa_statistics(normalised: np.ndarray, name: str) -> _Centred:
    return _centre(normalised, name, "point in the same direction (a constant cosine-similarity matrix)")


def _rsa_from(a: _Centred, b: _Centred, names: tuple[str, str] = ("X", "Y")) -> float:
    """Pearson correlation over the upper triangles (diagonal included) of the two cosine matrices.

    A symmetric matrix's upper triangle with diagonal sums to (sum of all entries + trace) / 2,
    so every sum Pearson needs comes from feature-space quantities.
    """
    n = len(a.row_norms_sq)
    count = n * (n + 1) / 2
    sum_a = (n * n * float(a.mean @ a.mean) + float(a.row_norms_sq.sum())) / 2
    sum_b = (n * n * float(b.mean @ b.mean) + float(b.row_norms_sq.sum())) / 2
    sum_aa = (_cross_frobenius_sq(a, a, centred=False) + float(a.row_norms_sq @ a.row_norms_sq)) / 2
    sum_bb = (_cross_frobenius_sq(b, b, centred=False) + float(b.row_norms_sq @ b.row_norms_sq)) / 2
    sum_ab = (_cross_frobenius_sq(a, b, centred=False) + float(a.row_norms_sq @ b.row_norms_sq)) / 2
    covariance = count * sum_ab - sum_a * sum_b
    variance_a = count * sum_aa - sum_a * sum_a
    variance_b = count * sum_bb - sum_b * sum_b
    for variance, name in zip((variance_a, variance_b), names):
        if variance <= 0.0:
            raise ValueError(f"{name}'s cosine-similarity matrix is constant up to rounding, so the "
                             f"Pearson correlation is undefined")
    return float(np.clip(covariance / np.sqrt(variance_a * variance_b), -1.0, 1.0))


def rsa(X: object, Y: object) -> float:
    """Representational similarity analysis exactly as the Telly paper computes it.

    X (n, dx) and Y (n, dy) are pooled representations of the same n inputs. Rows are
    L2-normalised, each side's n x n cosine-similarity matrix is formed (implicitly), and the
    score is the Pearson correlation of the two upper triangles, diagonal included.
    """
    X, Y = _check_pair(X, Y, min_n=2)
    a = _rsa_statistics(_normalise_rows(X, "X"), "X")
    b = _rsa_statistics(_normalise_rows(Y, "Y"), "Y")
    return _rsa_from(a, b)


def _debiased_hsic(cross_sq: float, a: _Centred, b: _Centred, n: int) -> float:
    """n(n-3) x the unbiased HSIC estimator (Song et al. 2012) of linear kernels on centred rows.

    The estimator is unchanged by centring; on centred rows K 1 = 0, which leaves only the
    Frobenius product and the Gram diagonals (the form in Kornblith et al.'s reference code).
    """
    diag_a = np.einsum("ij,ij->i", a.deviations, a.deviations)
    diag_b = diag_a if b is a else np.einsum("ij,ij->i", b.deviations, b.deviations)
    return (cross_sq - n / (n - 2.0) * float(diag_a @ diag_b)
            + float(diag_a.sum()) * float(diag_b.sum()) / ((n - 1.0) * (n - 2.0)))


def _cka_scores(a: _Centred, b: _Centred, measures: Iterable[str],
                names: tuple[str, str] = ("X", "Y")) -> dict[str, float]:
    """"cka" and/or "cka_debiased" from one set of products (the debiased form reuses them)."""
    n = a.deviations.shape[0]
    cross = _cross_frobenius_sq(a, b, centred=True)
    self_a = _cross_frobenius_sq(a, a, centred=True)
    self_b = _cross_frobenius_sq(b, b, centred=True)
    scores = {}
    for measure in measures:
        debiased = measure == "cka_debiased"
        if debiased:
            values = (_debiased_hsic(cross, a, b, n), _debiased_hsic(self_a, a, a, n),
                      _debiased_hsic(self_b, b, b, n))
        else:
            values = (cross, self_a, self_b)
        for value, name in zip(values[1:], names):
            if value <= 0.0:
                raise ValueError(f"the {'debiased ' if debiased else ''}HSIC of {name} with itself is "
                                 f"{value:.3g} (not positive): too few inputs or near-constant features")
        scores[measure] = float(values[0] / np.sqrt(values[1] * values[2]))
    return scores


def _cka_statistics(features: np.ndarray, name: str) -> _Centred:
    return _centre(features, name, "are the same vector")


def linear_cka(X: object, Y: object, debiased: bool = False) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019) of X (n, dx) and Y (n, dy).

    CKA = HSIC(X, Y) / sqrt(HSIC(X, X) HSIC(Y, Y)) with linear kernels. `debiased=True` uses the
    unbiased HSIC estimator (Song et al. 2012), whose value for independent inputs is near 0 even
    when n is small against d, where the biased estimator reads random data as similar.
    """
    X, Y = _check_pair(X, Y, min_n=4 if debiased else 2)
    measure = "cka_debiased" if debiased else "cka"
    return _cka_scores(_cka_statistics(X, "X"), _cka_statistics(Y, "Y"), (measure,))[measure]


def _layer_stack(features: object, name: str) -> Sequence[np.ndarray]:
    if isinstance(features, np.ndarray):
        if features.ndim != 3:
            raise ValueError(f"{name} must be (layers, n inputs, d features); got shape {features.shape}")
        return list(features)
    layers = list(features)  # a list of per-layer (n, d) arrays also works
    if not layers:
        raise ValueError(f"{name} holds no layers")
    return layers


def layer_similarity(features_a: object, features_b: object,
                     measures: Iterable[str] = MEASURES, *, progress: bool = False) -> list[dict]:
    """Every layer's similarity between two models' representations of the same inputs.

    features_a, features_b: (L+1, n, d) pooled states, layer 0 = embeddings (the `.pooled` of
    telly.features.layer_features). Returns one dict per layer: {"layer", "n", and one key per
    measure in `measures` (any of "rsa", "cka", "cka_debiased")}.
    """
    measures = tuple(measures)
    unknown = [m for m in measures if m not in MEASURES]
    if unknown or not measures:
        raise ValueError(f"unknown measure(s) {unknown or measures!r}; expected some of {list(MEASURES)}")
    layers_a, layers_b = _layer_stack(features_a, "features_a"), _layer_stack(features_b, "features_b")
    if len(layers_a) != len(layers_b):
        raise ValueError(f"features_a has {len(layers_a)} layers but features_b has {len(layers_b)}")
    steps = range(len(layers_a))
    if progress:
        steps = progress_bar(steps, desc="similarity", unit="layer")
    debiased = "cka_debiased" in measures
    records = []
    for layer in steps:
        names = (f"features_a[{layer}]", f"features_b[{layer}]")
        X, Y = _check_pair(layers_a[layer], layers_b[layer], 4 if debiased else 2, names)
        record = {"layer": layer, "n": int(X.shape[0])}
        if "rsa" in measures:
            record["rsa"] = _rsa_from(_rsa_statistics(_normalise_rows(X, names[0]), names[0]),
                                      _rsa_statistics(_normalise_rows(Y, names[1]), names[1]), names)
        cka_measures = [m for m in measures if m != "rsa"]
        if cka_measures:
            record.update(_cka_scores(_cka_statistics(X, names[0]), _cka_statistics(Y, names[1]),
                                      cka_measures, names))
        records.append(record)
    return records


# ----------------------------------------------------------------------------- confidence intervals

def top_blocks(num_layers: int) -> list[int]:
    """The blocks that the paper's "top two layers" (of 12) are in relative depth.

    Blocks k = 1..L (0 is the embeddings) with k / L > 5/6: 11 and 12 of 12, the top 5 of 30,
    the top block of 6 (or of 4).
    """
    if not isinstance(num_layers, (int, np.integer)) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive number of blocks; got {num_layers!r}")
    return [k for k in range(1, num_layers + 1) if 6 * k > 5 * num_layers]  # k / L > 5/6 in integers


def resample_weights(n: int, samples: int, seed: int = 0) -> np.ndarray:
    """(samples, n) float64: how often each of n inputs is drawn in each bootstrap resample."""
    if n < 1 or samples < 1:
        raise ValueError(f"need at least one input and one resample; got n={n}, samples={samples}")
    drawn = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    flat = (drawn + n * np.arange(samples)[:, None]).ravel()
    return np.bincount(flat, minlength=samples * n).reshape(samples, n).astype(np.float64)


def _distinct_pair_sums(weights: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Per resample, the sum of `matrix` over ordered pairs of resampled rows of two different
    inputs: sum over i != j of w_i w_j M_ij (a row with itself or its copy is left out)."""
    return np.einsum("bi,bi->b", weights @ matrix, weights) - (weights * weights) @ np.diagonal(matrix)


def _rsa_draws(X: np.ndarray, Y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """RSA of each resample: upper triangle with diagonal, pairs of copies left out."""
    n = X.shape[0]
    cosines = []
    for rows in (X, Y):
        cosine = rows @ rows.T
        # Pearson ignores a shift; removing the mean keeps the sums small, so no cancellation.
        cosine -= (cosine.sum() + np.trace(cosine)) / (n * (n + 1))
        cosines.append(cosine)
    a, b = cosines

    def upper(matrix: np.ndarray) -> np.ndarray:  # off-diagonal pairs once, plus the diagonal
        return _distinct_pair_sums(weights, matrix) / 2 + weights @ np.diagonal(matrix)

    count = n + (n * n - np.einsum("bi,bi->b", weights, weights)) / 2
    sum_a, sum_b = upper(a), upper(b)
    covariance = count * upper(a * b) - sum_a * sum_b
    variance_a = count * upper(a * a) - sum_a * sum_a
    variance_b = count * upper(b * b) - sum_b * sum_b
    return np.clip(covariance / np.sqrt(variance_a * variance_b), -1.0, 1.0)


def _resampled_hsic(weights: np.ndarray, rows: tuple[np.ndarray, np.ndarray], trace: np.ndarray,
                    debiased: bool) -> np.ndarray:
    """HSIC of each resample's kernels K', L' (up to a factor common to the CKA ratio).

    rows: (K'1, L'1) at each input's rows, per resample; trace: tr(K'L') per resample.
    """
    n = weights.shape[1]
    sum_k = np.einsum("bi,bi->b", weights, rows[0])
    sum_l = np.einsum("bi,bi->b", weights, rows[1])
    product = np.einsum("bi,bi,bi->b", weights, rows[0], rows[1])
    if debiased:  # Song et al. (2012), times n(n-3)
        return trace + sum_k * sum_l / ((n - 1.0) * (n - 2.0)) - 2.0 / (n - 2.0) * product
    return trace - 2.0 / n * product + sum_k * sum_l / n**2  # tr(K'HL'H)


def _cka_draws(X: np.ndarray, Y: np.ndarray, weights: np.ndarray, measures: Sequence[str]
               ) -> dict[str, np.ndarray]:
    """Biased and/or debiased CKA of each resample, from the linear kernels of the rows centred
    on the mean of all n inputs.

    A resample's kernel K' pairs each drawn row with every other one except a copy of itself;
    biased CKA keeps each drawn row's own entry K_ii, the U-statistic of debiased CKA does not.
    """
    centred_x, centred_y = X - X.mean(0), Y - Y.mean(0)
    K, L = centred_x @ centred_x.T, centred_y @ centred_y.T
    diag_k, diag_l = np.diagonal(K), np.diagonal(L)
    K_w, L_w = weights @ K, weights @ L
    off_diagonal = {"KL": _distinct_pair_sums(weights, K * L), "KK": _distinct_pair_sums(weights, K * K),
                    "LL": _distinct_pair_sums(weights, L * L)}
    draws = {}
    for measure in measures:
        debiased = measure == "cka_debiased"
        kept = 0.0 if debiased else 1.0  # how often a drawn row meets itself
        # K'1 at a row of input j: (K w)_j less the entries of j's copies, plus the kept diagonal
        rows_k, rows_l = K_w - (weights - kept) * diag_k, L_w - (weights - kept) * diag_l
        traces = {both: off_diagonal[both] + kept * (weights @ (first * second))
                  for both, first, second in (("KL", diag_k, diag_l), ("KK", diag_k, diag_k), ("LL", diag_l, diag_l))}
        cross = _resampled_hsic(weights, (rows_k, rows_l), traces["KL"], debiased)
        self_x = _resampled_hsic(weights, (rows_k, rows_k), traces["KK"], debiased)
        self_y = _resampled_hsic(weights, (rows_l, rows_l), traces["LL"], debiased)
        draws[measure] = cross / np.sqrt(self_x * self_y)
    return draws


@dataclass(frozen=True)
class LayerBootstrap:
    """Point estimates and bootstrap draws of every layer's similarity, from one set of resamples.

    points: `layer_similarity`'s records (the statistic on all n inputs). draws: {measure:
    (samples, layers) array}; row s of every layer comes from the same resample s.
    """

    points: list[dict]
    draws: dict[str, np.ndarray]
    seed: int

    @property
    def samples(self) -> int:
        return next(iter(self.draws.values())).shape[0]

    def records(self, confidence: float = CONFIDENCE) -> list[dict]:
        """`points` with "<measure>_low" and "<measure>_high": the percentile interval of each."""
        bounds = {m: _percentile_interval(draws, confidence) for m, draws in self.draws.items()}
        return [dict(point, **{f"{m}_{side}": float(bounds[m][i][layer]) for m in self.draws
                               for i, side in enumerate(("low", "high"))})
                for layer, point in enumerate(self.points)]

    def drop_share(self, layers: Sequence[int], measure: str, confidence: float = CONFIDENCE) -> dict | None:
        """{"value", "low", "high"}: the share of the summed drop (1 - similarity, negatives
        counted as 0) that `layers` hold, with its interval; None when nothing dropped."""
        if measure not in self.draws:
            raise ValueError(f"no draws of {measure!r}; this bootstrap has {list(self.draws)}")
        drops = np.clip(1.0 - np.array([p[measure] for p in self.points]), 0.0, None)
        if drops.sum() == 0.0:
            return None
        resampled = np.clip(1.0 - self.draws[measure], 0.0, None)
        totals = resampled.sum(1)
        shares = resampled[:, list(layers)].sum(1)[totals > 0] / totals[totals > 0]
        low, high = _percentile_interval(shares, confidence)
        return {"value": float(drops[list(layers)].sum() / drops.sum()), "low": float(low), "high": float(high)}


def _percentile_interval(draws: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail], axis=0)
    return low, high


def bootstrap_layer_similarity(features_a: object, features_b: object, measures: Iterable[str] = MEASURES,
                               *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                               progress: bool = False) -> LayerBootstrap:
    """`layer_similarity` with bootstrap draws over the n inputs (see the module docstring).

    Every layer is scored on the same `samples` resamples (fixed by `seed`). A layer whose two
    representations are identical scores exactly 1 in every resample.
    """
    points = layer_similarity(features_a, features_b, measures)
    measures = [m for m in MEASURES if m in points[0]]
    layers_a, layers_b = _layer_stack(features_a, "features_a"), _layer_stack(features_b, "features_b")
    weights = resample_weights(points[0]["n"], samples, seed)
    draws = {m: np.empty((samples, len(points))) for m in measures}
    steps = range(len(points))
    if progress:
        steps = progress_bar(steps, desc="similarity bootstrap", unit="layer")
    for layer in steps:
        X = np.asarray(layers_a[layer], dtype=np.float64)
        Y = np.asarray(layers_b[layer], dtype=np.float64)
        if X.shape == Y.shape and np.array_equal(X, Y):
            for m in measures:
                draws[m][:, layer] = 1.0
            continue
        if "rsa" in measures:
            draws["rsa"][:, layer] = _rsa_draws(_normalise_rows(X, "X"), _normalise_rows(Y, "Y"), weights)
        cka_measures = [m for m in measures if m != "rsa"]
        if cka_measures:
            for m, values in _cka_draws(X, Y, weights, cka_measures).items():
                draws[m][:, layer] = values
    return LayerBootstrap(points, draws, seed)
