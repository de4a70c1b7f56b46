"""The four probed properties, one `Property` each, in `PROPERTIES` (the order every page uses).

The paper's protocols (reference/telly-paper.md), on frozen features of every layer:
- lexical: tag each code word (Python `tokenize`) as KEYWORD/NAME/NUMBER/STRING/OPERATOR from the
  mean of its sub-token states; accuracy.
- syntactic: retrieve a function's AST-only SBT sequence (encoded by the same backbone) from the
  code; a linear map per side trained with an in-batch contrastive loss; MRR.
- structural: cyclomatic complexity in six classes (1, 2, 3, 4, 5, >5); accuracy.
- semantic: a function and its semantics-preserving variants must be near each other; a linear map
  trained contrastively; MAP over the held-out functions and variants, with near misses per
  function (`telly.corpus.make_mutant`: one behaviour-changing edit) among the candidates, so
  that token overlap alone cannot solve it.
Each probe is layer-wise and weighted (`telly.probing.estimators`). Controls the paper lacks: a
Hewitt & Liang control task per probe (labels assigned at random per word type / per function)
giving selectivity = score - control score; baselines that need no model (word-type lookup,
length only, token-overlap Jaccard); bootstrap 95% CIs over test examples (words resampled with
their function).

`telly.report` reads this registry (names, metrics, the paper's regions) without running a probe,
so the estimators (torch) are imported only when a probe is fitted.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from telly.metrics import ranking_average_precision
from telly.probing.data import ProbeData, StateFeatures, control_labels, word_features
from telly.profiles import Profile
from telly.stats import bootstrap_ci

TOKEN_KINDS = ("KEYWORD", "NAME", "NUMBER", "STRING", "OPERATOR")


class Property(ABC):
    """One code property probed on every layer.

    name and metric label its results; paper_region is where the paper found it (the lower,
    middle or upper third of the layers, or spread over all); inputs are the
    `telly.probing.data.INPUT_SETS` that `evaluate` reads from the backbone's features.
    """

    name: ClassVar[str]
    metric: ClassVar[str]
    paper_region: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]

    @abstractmethod
    def evaluate(self, features: StateFeatures, data: ProbeData, profile: Profile,
                 seed: int = 0) -> dict:
        """Layer-wise and weighted probe, control task, selectivity and CIs on one state."""

    def baselines(self, data: ProbeData, profile: Profile, seed: int = 0) -> list[dict]:
        """What needs no model: [{"name", "score", "ci"?}] on the same split."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# ================================================================ one probe's result


def _ci(values: np.ndarray, profile: Profile, seed: int, clusters: np.ndarray | None = None
        ) -> list[float]:
    interval = bootstrap_ci(values, clusters=clusters, samples=profile.bootstrap_samples,
                            seed=seed)["value"]
    return [interval["low"], interval["high"]]


def _summary(correct: np.ndarray, weighted: np.ndarray, weights: np.ndarray,
             control: np.ndarray, control_weighted: np.ndarray, *, clusters: np.ndarray | None,
             profile: Profile, seed: int) -> dict:
    """Scores, control, selectivity and bootstrap CIs from per-example scores on the test set.

    correct / control: (L+1, n) per-example scores of the layer-wise probes (1/0 for accuracy,
    AP for retrieval); weighted / control_weighted: (n,). With `clusters` (n,) the examples are
    grouped (words by function) and whole clusters are resampled.
    """
    layerwise = correct.mean(1)
    control_layerwise = control.mean(1)
    return {
        "layerwise": layerwise.tolist(),
        "layerwise_ci": [_ci(row, profile, seed, clusters) for row in correct],
        "weighted": {"score": float(weighted.mean()),
                     "ci": _ci(weighted, profile, seed, clusters),
                     "weights": [float(w) for w in weights]},
        "control": {"layerwise": control_layerwise.tolist(),
                    "weighted": float(control_weighted.mean())},
        "selectivity": {"layerwise": (layerwise - control_layerwise).tolist(),
                        "weighted": float(weighted.mean() - control_weighted.mean()),
                        "weighted_ci": _ci(weighted - control_weighted, profile, seed, clusters)},
        "n_test": int(correct.shape[1]),
    }


def _classify(X_train, y_train, X_test, y_test, c_train, c_test, *, clusters, profile: Profile,
              seed: int) -> dict:
    from telly.probing.estimators import ClassifierProbe

    kwargs = {"epochs": profile.probe_epochs, "seed": seed}
    probe = ClassifierProbe(**kwargs).fit(X_train, y_train)
    mixed = ClassifierProbe(weighted=True, **kwargs).fit(X_train, y_train)
    control = ClassifierProbe(**kwargs).fit(X_train, c_train)
    control_mixed = ClassifierProbe(weighted=True, **kwargs).fit(X_train, c_train)
    return _summary(probe.correct(X_test, y_test).astype(float),
                    mixed.correct(X_test, y_test)[0].astype(float), mixed.weights_,
                    control.correct(X_test, c_test).astype(float),
                    control_mixed.correct(X_test, c_test)[0].astype(float),
                    clusters=clusters, profile=profile, seed=seed)


def _retrieve(train: tuple, test: tuple, control_train: tuple, control_test: tuple, *,
              shared: bool, profile: Profile, seed: int) -> dict:
    """train / control_train: (A, B, groups); test / control_test: (queries, candidates,
    relevant, exclude_self)."""
    from telly.probing.estimators import RetrievalProbe

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
                      clusters=None, profile=profile, seed=seed)
    if not shared:
        result["weighted"]["candidate_weights"] = [float(w) for w in mixed.candidate_weights_]
    return result


# ================================================================ lexical


class Lexical(Property):
    """Token kind of each code word, from the mean of its sub-token states (accuracy)."""

    name = "lexical"
    metric = "accuracy"
    paper_region = "lower"
    inputs = ("code_tokens",)

    def evaluate(self, features: StateFeatures, data: ProbeData, profile: Profile,
                 seed: int = 0) -> dict:
        X, where = word_features(features.code_tokens, data.words)
        words = [data.words[i][j] for i, j in where]
        y = np.array([TOKEN_KINDS.index(w.kind) for w in words])
        test = data.is_test[where[:, 0]]
        control = control_labels([w.text for w in words], y, seed=seed)
        result = _classify(X[:, ~test], y[~test], X[:, test], y[test], control[~test], control[test],
                           clusters=where[test, 0], profile=profile, seed=seed)
        result["n_train"] = int((~test).sum())
        return result

    def baselines(self, data: ProbeData, profile: Profile, seed: int = 0) -> list[dict]:
        """Word-type lookup: each word gets the kind it most often had in training (no model)."""
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
        correct = np.array(correct, dtype=float)
        return [{"name": "word-type lookup", "score": float(correct.mean()),
                 "ci": _ci(correct, profile, seed, np.array(clusters))}]


# ================================================================ syntactic


def _sbt_ids(data: ProbeData) -> np.ndarray:
    sequences = [" ".join(data.functions[i].sbt) for i in data.syntactic]
    index = {s: k for k, s in enumerate(dict.fromkeys(sequences))}
    return np.array([index[s] for s in sequences])


class Syntactic(Property):
    """Retrieve a function's AST-only SBT sequence from its code (MRR)."""

    name = "syntactic"
    metric = "MRR"
    paper_region = "middle"
    inputs = ("code", "sbt")

    def evaluate(self, features: StateFeatures, data: ProbeData, profile: Profile,
                 seed: int = 0) -> dict:
        code = features.code[:, data.syntactic]
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


# ================================================================ structural


def structural_labels(data: ProbeData, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Complexity classes of every function and their control labels (one per function)."""
    y = np.array([f.complexity_class for f in data.functions])
    keys = [f"{f.path}:{f.qualname}:{f.line}" for f in data.functions]
    return y, control_labels(keys, y, seed=seed)


def length_features(codes: Sequence[str]) -> np.ndarray:
    """(1, n, 3) log characters, lines and words: what a length-only model can see."""
    rows = [[len(c), c.count("\n") + 1, len(c.split())] for c in codes]
    return np.log1p(np.array(rows, dtype=np.float32))[None]


class Structural(Property):
    """Cyclomatic complexity in six classes (accuracy)."""

    name = "structural"
    metric = "accuracy"
    paper_region = "upper"
    inputs = ("code",)

    def evaluate(self, features: StateFeatures, data: ProbeData, profile: Profile,
                 seed: int = 0) -> dict:
        y, control = structural_labels(data, seed)
        X, test = features.code, data.is_test
        result = _classify(X[:, ~test], y[~test], X[:, test], y[test], control[~test], control[test],
                           clusters=None, profile=profile, seed=seed)
        result["n_train"] = int((~test).sum())
        return result

    def baselines(self, data: ProbeData, profile: Profile, seed: int = 0) -> list[dict]:
        """A probe on lengths alone, and the majority class."""
        from telly.probing.estimators import ClassifierProbe

        y, _ = structural_labels(data, seed)
        test = data.is_test
        X = length_features(data.texts)
        probe = ClassifierProbe(epochs=profile.probe_epochs, seed=seed).fit(X[:, ~test], y[~test])
        correct = probe.correct(X[:, test], y[test])[0]
        majority = np.bincount(y[~test]).argmax()
        return [{"name": "length only", "score": float(correct.mean()),
                 "ci": _ci(correct, profile, seed)},
                {"name": "majority class", "score": float((y[test] == majority).mean())}]


# ================================================================ semantic


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


class Semantic(Property):
    """A function and its semantics-preserving variants must be near each other, near misses
    among the candidates (MAP)."""

    name = "semantic"
    metric = "MAP"
    paper_region = "spread"
    inputs = ("code", "variants")

    def evaluate(self, features: StateFeatures, data: ProbeData, profile: Profile,
                 seed: int = 0) -> dict:
        items = np.concatenate([features.code[:, data.semantic], features.variants], axis=1)
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

    def baselines(self, data: ProbeData, profile: Profile, seed: int = 0) -> list[dict]:
        """Token-overlap (Jaccard) ranking: what string matching alone achieves."""
        from telly.corpus import token_kinds

        codes = [data.functions[i].code_without_doc for i in data.semantic]
        codes += [v for vs in data.variants for v in vs] + [m for ms in data.mutants for m in ms]
        queries, candidates, relevant = _semantic_ranking(*_semantic_items(data))
        sets = {i: {t.text for t in token_kinds(codes[i])} for i in candidates}
        scores = np.array([[len(sets[q] & sets[c]) / max(1, len(sets[q] | sets[c]))
                            for c in candidates] for q in queries])
        ap = ranking_average_precision(scores, relevant, exclude_self=True)
        return [{"name": "token Jaccard", "score": float(ap.mean()),
                 "ci": _ci(ap, profile, seed)}]


PROPERTIES: tuple[Property, ...] = (Lexical(), Syntactic(), Structural(), Semantic())

