"""The probes, scikit-learn style: linear models trained on frozen hidden states.

Both take states shaped (L+1, n, d): one (n, d) matrix per hidden state, 0 = the embeddings. A
layer-wise probe trains one independent head per state; a weighted probe (`weighted=True`) trains
one head on a softmax-weighted mix of the standardised states, and its learned mix weights
(`weights_`) say where the property lives. Learned state sits in attributes ending in `_`; scoring
an estimator before `fit` raises `sklearn.exceptions.NotFittedError`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import NotFittedError
from torch import nn
from torch.nn import functional as F

from telly.metrics import ranking_average_precision

# Learning rate of the softmax mix logits: they must move within a few hundred steps.
MIX_LR = 0.05


def _as_states(X: object, name: str = "X") -> np.ndarray:
    array = np.asarray(X, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"{name} must have shape (layers, n, d); got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN or inf values")
    return array


def _check_fitted(estimator: object, attribute: str) -> None:
    if not hasattr(estimator, attribute):
        raise NotFittedError(f"this {type(estimator).__name__} is not fitted yet: call fit(...) "
                             "before scoring or predicting with it")


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


class _one_thread:
    """Small probe matmuls run fastest on one thread; more threads only spin on a busy CPU."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def _train(mixes: Sequence[_Mix], heads: Sequence[_Linear],
           loss_of_batch: Callable[[torch.Tensor], torch.Tensor], n: int, *, epochs: int,
           batch_size: int, lr: float, weight_decay: float, generator: torch.Generator) -> None:
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
    L+1 of them layer-wise, one when weighted. `weights_` (L+1,) are the learned mix weights
    (None layer-wise); `classes_` the training labels.
    """

    weighted: bool = False
    epochs: int = 30
    lr: float = 1e-2
    weight_decay: float = 1e-3
    batch_size: int | None = None
    seed: int = 0

    def fit(self, X, y) -> ClassifierProbe:
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
        _check_fitted(self, "head_")
        X = torch.from_numpy(_as_states(X))
        with torch.no_grad(), _one_thread():
            logits = torch.cat([self.head_(self.mix_(self.mix_.standardize(X[:, s:s + 4096])))
                                for s in range(0, X.shape[1], 4096)], dim=1)
        return self.classes_[logits.argmax(-1).numpy()]

    def correct(self, X, y) -> np.ndarray:
        """(heads, n) booleans: which examples each head labels correctly."""
        return self.predict(X) == np.asarray(y)[None]

    def score(self, X, y) -> np.ndarray:
        """(heads,) accuracies."""
        return self.correct(X, y).mean(1)


@dataclass
class RetrievalProbe:
    """Linear maps into a shared space, trained with an in-batch contrastive (InfoNCE) loss.

    fit(A, B, groups): pair i is (A[:, i], B[:, i]); examples with equal `groups` ids are never
    used as each other's negatives. shared=True uses one map for both sides (A and B are the same
    kind of input, e.g. a function and its variant). average_precision(...) -> (heads, queries);
    score(...) -> (heads,) their means (MRR with one relevant candidate per query, else MAP).
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

    def fit(self, A, B, groups) -> RetrievalProbe:
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

        def unique(*modules):  # shared maps count once
            return list({id(m): m for m in modules}.values())

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
        _check_fitted(self, "query_map_")
        if side not in ("query", "candidate"):
            raise ValueError(f"side must be 'query' or 'candidate', got {side!r}")
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

    def score(self, queries, candidates, relevant, *, exclude_self: bool = False) -> np.ndarray:
        """(heads,) mean average precision over the queries."""
        return self.average_precision(queries, candidates, relevant,
                                      exclude_self=exclude_self).mean(1)
