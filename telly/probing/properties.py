"""The four probed properties, one `Property` each, in `PROPERTIES` (the order every page uses).

The paper's protocols (reference/telly-paper.md), on frozen features of every layer:
- lexical: tag each code word (Python `tokenize`) as KEYWORD/NAME/NUMBER/STRING/OPERATOR from the
  mean of its sub-token states; accuracy.
- syntactic: retrieve a function's AST-only SBT sequence (encoded by the same backbone) from the
  code; a linear map per side trained with an in-batch contrastive loss; MRR.
- structural: cyclomatic complexity (radon's, as the paper computed it) in six classes
  (1, 2, 3, 4, 5, >5); accuracy.
- semantic: a function and its semantics-preserving variants must be near each other; a linear map
  trained contrastively; MAP over the held-out functions and variants, with near misses per
  function (`telly.corpus.make_mutant`: one behaviour-changing edit) among the candidates, so
  that token overlap alone cannot solve it.
Each probe is layer-wise and weighted (`telly.probing.estimators`). What the paper lacks, per state:
- bootstrap 95% CIs over the unit that was sampled (a function; a function with its words, or with
  its variants: a near miss is a candidate, never a row);
- a layer-wise peak tested against both neighbouring layers (paired bootstrap over test examples);
- where the weighted probe looks (`_location`): the centre of mass of its layer weights with an
  interval from refits on bootstrap resamples of the training functions, and whether the weights
  moved from their uniform start further than refits on shuffled labels move them;
- for the lexical probe only, a Hewitt & Liang control task (labels assigned at random per word
  type; word types recur between train and test, so the control measures memorisation) and
  selectivity = score - control score. Functions never recur between train and test, so a
  per-function control would measure chance: the function-level probes are read against the
  random-init backbone and surface baselines instead (`telly.probing.run.probe_entry`).
Baselines (`Property.baselines`) need no backbone and are fitted on the same split: word-type
lookup (lexical); length matching (syntactic); length only, bag of tokens and the majority class
(structural); token Jaccard (semantic). They see each function whole, where the backbone sees at
most its code budget: a conservative comparison for the probe.

`telly.report` reads this registry (names, metrics, the paper's regions) without running a probe,
so the estimators (torch) are imported only when a probe is fitted.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from joblib import Parallel, cpu_count, delayed

from telly.corpus import token_kinds
from telly.metrics import ranking_average_precision
from telly.probing.catalog import PAPER_REGIONS, PROBE_METRICS
from telly.probing.data import ProbeData, StateFeatures, control_labels, word_features
from telly.probing.estimators import ClassifierProbe, RetrievalProbe
from telly.profiles import Profile
from telly.progress import progress_bar
from telly.stats import bootstrap_ci, paired_bootstrap

TOKEN_KINDS = ("KEYWORD", "NAME", "NUMBER", "STRING", "OPERATOR")
# Row ids of the lexical probe: function index * WORD_STRIDE + word index.
WORD_STRIDE = 1 << 20


@dataclass
class Scored:
    """Per-example scores on the held-out rows, what paired comparisons need (never stored).

    per_example: (n,) scores of one row each (1/0 correct, or average precision); rows: (n,) ids
    that say which row is which, equal across backbone states and baselines; clusters: (n,) the
    sampled unit of each row (None: every row is its own unit)."""

    per_example: np.ndarray
    rows: np.ndarray
    clusters: np.ndarray | None = None


@dataclass
class StateResult:
    """One property on one backbone state: the stored numbers and the weighted probe's scores."""

    result: dict
    weighted: Scored


@dataclass
class Baseline:
    """A model-free baseline's name and per-example scores on the held-out rows."""

    name: str
    scores: Scored


class Property(ABC):
    """One code property probed on every layer.

    name and metric label its results; paper_region is where the paper found it (the lower,
    middle or upper third of the layers, or spread over all); inputs are the
    `telly.probing.data.INPUT_SETS` that `evaluate` reads from the backbone's features;
    has_control says whether a control task runs (only where its keys recur).
    """

    name: ClassVar[str]
    metric: ClassVar[str]
    paper_region: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]
    has_control: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.metric, cls.paper_region = PROBE_METRICS[cls.name], PAPER_REGIONS[cls.name]  # one catalogue

    @abstractmethod
    def evaluate(self, features: StateFeatures, data: ProbeData, profile: Profile,
                 seed: int = 0, locate: bool = True, progress: bool = False) -> StateResult:
        """Layer-wise and weighted probe, peak test and weight location on one state (the
        location's refits only when `locate`: not for the random-init state; `progress`: a bar over them)."""

    @abstractmethod
    def baselines(self, data: ProbeData, profile: Profile, seed: int = 0) -> list[Baseline]:
        """What needs no model, fitted on the same split and scored on the same held-out rows."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# ================================================================ statistics of one state


def _ci(values: np.ndarray, profile: Profile, seed: int, clusters: np.ndarray | None = None
        ) -> list[float]:
    interval = bootstrap_ci(values, clusters=clusters, samples=profile.statistics.bootstrap_samples,
                            seed=seed)["value"]
    return [interval["low"], interval["high"]]


def paired(first: Scored, second: Scored, profile: Profile, seed: int) -> dict:
    """second - first on the same held-out rows: {"difference", "low", "high", "p_value"} from a
    paired bootstrap over the sampled units."""
    if not np.array_equal(first.rows, second.rows):
        raise ValueError(f"a paired comparison needs the same held-out rows: {len(first.rows)} vs "
                         f"{len(second.rows)} rows, or the same number in another order")
    return paired_bootstrap(first.per_example, second.per_example, clusters=first.clusters,
                            samples=profile.statistics.bootstrap_samples, seed=seed)["value"]


def _peak(per_layer: np.ndarray, clusters: np.ndarray | None, profile: Profile, seed: int) -> dict:
    """The layer-wise probe's best layer, tested against each neighbouring layer: peak - neighbour
    in a paired bootstrap over the held-out examples. `distinct` only when every lower bound > 0."""
    layer = int(per_layer.mean(1).argmax())
    rows = np.arange(per_layer.shape[1])
    neighbours = []
    for other in (layer - 1, layer + 1):
        if 0 <= other < len(per_layer):
            difference = paired(Scored(per_layer[other], rows, clusters),
                                Scored(per_layer[layer], rows, clusters), profile, seed)
            neighbours.append({"layer": other, **difference})
    return {"layer": layer, "score": float(per_layer[layer].mean()), "neighbours": neighbours,
            "distinct": all(n["low"] > 0 for n in neighbours)}


def centre_of_mass(weights: Sequence[float]) -> float:
    """sum_k k w_k over the mix weights (k = 0 the embeddings): the layer they centre on."""
    w = np.asarray(weights, dtype=float)
    return float(np.arange(len(w)) @ w)


def distance_from_uniform(weights: Sequence[float]) -> float:
    """Total-variation distance of the mix weights from their uniform start: 0 = unmoved, 1 - 1/(L+1)
    = all weight on one layer."""
    w = np.asarray(weights, dtype=float)
    return float(0.5 * np.abs(w - 1 / len(w)).sum())


# Refit the weighted probe on training rows `rows` (indices, repeats allowed); with a generator,
# on labels shuffled by it. Returns the learned mix weights.
Refit = Callable[[np.ndarray, "np.random.Generator | None", int], np.ndarray]


def refit_in_parallel(refit: Refit, fits: Sequence[tuple], workers: int | None = None) -> Iterator[np.ndarray]:
    """refit(*fit) for each fit, in order, in `workers` processes (default: one per core). Each fit trains on
    one thread (`telly.probing.estimators`), so a single process left every other core idle; the results
    are the same as in one process, since each fit carries its own rows, labels and seed. Arrays the refit
    closes over are shared with the workers through memory-mapped files (joblib), not copied per fit."""
    workers = min(workers or cpu_count(), len(fits))
    if workers <= 1:
        return (refit(*fit) for fit in fits)
    return Parallel(n_jobs=workers, return_as="generator")(delayed(refit)(*fit) for fit in fits)


def _centre(weights: np.ndarray) -> dict:
    """Centre of mass of the mix weights, as a layer and as relative depth (centre / L), and their
    total-variation distance from uniform."""
    return {"centre": centre_of_mass(weights), "relative_depth": centre_of_mass(weights) / (len(weights) - 1),
            "distance_from_uniform": distance_from_uniform(weights)}


def _location(weights: np.ndarray, refit: Refit | None, units: np.ndarray, profile: Profile,
              seed: int, progress: bool = False) -> dict:
    """Where the weighted probe looks, and whether its weights moved from uniform (`_centre`
    alone when refit is None: the random-init state, where nothing is located).

    R = profile.probing.probe_weight_refits. The centre of mass (and relative depth = centre / L) gets
    a percentile interval from R refits on bootstrap resamples of the training units (functions,
    with their words, pairs or variants), each with its own seed: a fit's weights depend on its
    initialisation, at times more than on the data, so the interval carries both and the full
    fit's centre need not fall inside it. Moved from uniform: a permutation test of the
    total-variation distance from uniform, against R refits on shuffled training labels (a
    probe fitted to labels unrelated to the states also moves its weights, towards whatever
    layers help it memorise); p = (1 + #{shuffled >= observed}) / (1 + R).
    """
    if refit is None:
        return _centre(weights)
    refits = profile.probing.probe_weight_refits
    if refits < 2:
        raise ValueError(f"probe_weight_refits must be at least 2 for an interval, got {refits}")
    rng = np.random.default_rng(seed)
    _, inverse = np.unique(units, return_inverse=True)
    members = [np.flatnonzero(inverse == u) for u in range(inverse.max() + 1)]
    every = np.arange(len(units))
    # Every fit's rows, labels and seed are drawn here, so the fits are independent and may run in any process.
    fits = [(np.concatenate([members[u] for u in rng.integers(0, len(members), len(members))]), None, seed + 1 + r)
            for r in range(refits)]
    fits += [(every, np.random.default_rng(seed + 1000 + r), seed + 1 + r) for r in range(refits)]
    # The longest part of probing a trained state at the study's sizes (2R fits): shown as it goes.
    bar = progress_bar(total=2 * refits, desc="weighted probe refits", unit="fit", leave=False, disable=not progress)
    found = []
    for weights_r in refit_in_parallel(refit, fits):
        found.append(weights_r)
        bar.update()
    bar.close()
    boot, null = found[:refits], found[refits:]
    last = len(weights) - 1
    centres = np.array([centre_of_mass(w) for w in boot])
    distances = np.array([distance_from_uniform(w) for w in boot])
    null_distances = np.array([distance_from_uniform(w) for w in null])
    observed = distance_from_uniform(weights)
    centre_ci = np.percentile(centres, [2.5, 97.5])
    return {**_centre(weights), "centre_ci": centre_ci.tolist(),
            "relative_depth_ci": (centre_ci / last).tolist(),
            "distance_ci": np.percentile(distances, [2.5, 97.5]).tolist(),
            "shuffled_distances": null_distances.tolist(),
            "p_value": float((1 + (null_distances >= observed).sum()) / (1 + refits)),
            "refits": refits}


def _state_result(per_layer: np.ndarray, weighted: np.ndarray, weights: np.ndarray,
                  location: dict, *, rows: np.ndarray, clusters: np.ndarray | None,
                  profile: Profile, seed: int) -> StateResult:
    """Scores, peak test and bootstrap CIs from the per-example scores on the held-out rows.

    per_layer: (L+1, n) per-example scores of the layer-wise probes (1/0 for accuracy, AP for
    retrieval); weighted: (n,). With `clusters` (n,) whole clusters are resampled."""
    result = {
        "layerwise": per_layer.mean(1).tolist(),
        "layerwise_ci": [_ci(row, profile, seed, clusters) for row in per_layer],
        "peak": _peak(per_layer, clusters, profile, seed),
        "weighted": {"score": float(weighted.mean()), "ci": _ci(weighted, profile, seed, clusters),
                     "weights": [float(w) for w in weights]},
        "location": location,
        "n_test": int(per_layer.shape[1]),
    }
    return StateResult(result, Scored(weighted, rows, clusters))


def _classify(X_train, y_train, X_test, y_test, *, train_units: np.ndarray, rows: np.ndarray,
              clusters: np.ndarray | None, locate: bool, profile: Profile, seed: int,
              progress: bool = False) -> StateResult:
    kwargs = {"epochs": profile.probing.probe_epochs}
    probe = ClassifierProbe(seed=seed, **kwargs).fit(X_train, y_train)
    mixed = ClassifierProbe(weighted=True, seed=seed, **kwargs).fit(X_train, y_train)

    def refit(index, shuffle, probe_seed):
        labels = y_train if shuffle is None else shuffle.permutation(y_train)
        return ClassifierProbe(weighted=True, seed=probe_seed, **kwargs).fit(
            X_train[:, index], labels[index]).weights_

    location = _location(mixed.weights_, refit if locate else None, train_units, profile, seed, progress)
    return _state_result(probe.correct(X_test, y_test).astype(float),
                         mixed.correct(X_test, y_test)[0].astype(float), mixed.weights_, location,
                         rows=rows, clusters=clusters, profile=profile, seed=seed)


def _retrieval_probe(pairs: Callable[[np.ndarray, np.random.Generator | None], tuple], test: tuple,
                     train_units: np.ndarray, *, shared: bool, rows: np.ndarray,
                     clusters: np.ndarray | None, locate: bool, profile: Profile,
                     seed: int, progress: bool = False) -> StateResult:
    """pairs(index, shuffle) -> (A, B, groups): the training pairs of training units `index`
    (labels shuffled by the generator, if any); test: (queries, candidates, relevant,
    exclude_self)."""
    kwargs = {"epochs": profile.probing.probe_epochs, "shared": shared}
    every = np.arange(len(train_units))
    queries, candidates, relevant, exclude_self = test
    layerwise = RetrievalProbe(seed=seed, **kwargs).fit(*pairs(every, None))
    mixed = RetrievalProbe(weighted=True, seed=seed, **kwargs).fit(*pairs(every, None))

    def refit(index, shuffle, probe_seed):
        return RetrievalProbe(weighted=True, seed=probe_seed, **kwargs).fit(
            *pairs(index, shuffle)).weights_

    location = _location(mixed.weights_, refit if locate else None, train_units, profile, seed, progress)
    state = _state_result(
        layerwise.average_precision(queries, candidates, relevant, exclude_self=exclude_self),
        mixed.average_precision(queries, candidates, relevant, exclude_self=exclude_self)[0],
        mixed.weights_, location, rows=rows, clusters=clusters, profile=profile, seed=seed)
    if not shared:
        state.result["weighted"]["candidate_weights"] = [float(w) for w in mixed.candidate_weights_]
    return state


def _logistic_regression(X_train, y_train, X_test, *, standardize: bool) -> np.ndarray:
    """Predictions of a scikit-learn logistic regression (L2, C = 1), on standardised features
    or as given (counts share one scale; standardising would blow up the rare ones)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = LogisticRegression(max_iter=5000)
    if standardize:
        model = make_pipeline(StandardScaler(), model)
    return model.fit(X_train, y_train).predict(X_test)


# ================================================================ lexical


class Lexical(Property):
    """Token kind of each code word, from the mean of its sub-token states (accuracy)."""

    name = "lexical"
    inputs = ("code_tokens",)
    has_control = True

    def evaluate(self, features: StateFeatures, data: ProbeData, profile: Profile,
                 seed: int = 0, locate: bool = True, progress: bool = False) -> StateResult:
        X, where = word_features(features.code_tokens, data.words)
        words = [data.words[i][j] for i, j in where]
        y = np.array([TOKEN_KINDS.index(w.kind) for w in words])
        test = data.is_test[where[:, 0]]
        state = _classify(X[:, ~test], y[~test], X[:, test], y[test], train_units=where[~test, 0],
                          rows=_word_ids(where[test]), clusters=where[test, 0], locate=locate,
                          profile=profile, seed=seed, progress=progress)
        # Control task (per word type): what a probe this size memorises of recurring types.
        control = control_labels([w.text for w in words], y, seed=seed)
        kwargs = {"epochs": profile.probing.probe_epochs, "seed": seed}
        per_layer = ClassifierProbe(**kwargs).fit(X[:, ~test], control[~test]).correct(
            X[:, test], control[test]).astype(float)
        weighted = ClassifierProbe(weighted=True, **kwargs).fit(X[:, ~test], control[~test]).correct(
            X[:, test], control[test])[0].astype(float)
        result, clusters = state.result, where[test, 0]
        result["control"] = {"layerwise": per_layer.mean(1).tolist(), "weighted": float(weighted.mean())}
        result["selectivity"] = {
            "layerwise": (np.array(result["layerwise"]) - per_layer.mean(1)).tolist(),
            "weighted": result["weighted"]["score"] - float(weighted.mean()),
            "weighted_ci": _ci(state.weighted.per_example - weighted, profile, seed, clusters)}
        result["n_train"] = int((~test).sum())
        return state

    def baselines(self, data: ProbeData, profile: Profile, seed: int = 0) -> list[Baseline]:
        """Word-type lookup: each word gets the kind it most often had in training (no model)."""
        by_type: dict[str, Counter] = defaultdict(Counter)
        overall = Counter()
        for i, words in enumerate(data.words):
            if not data.is_test[i]:
                for w in words:
                    by_type[w.text][w.kind] += 1
                    overall[w.kind] += 1
        fallback = overall.most_common(1)[0][0]
        correct, where = [], []
        for i, words in enumerate(data.words):
            if data.is_test[i]:
                for j, w in enumerate(words):
                    guess = by_type[w.text].most_common(1)[0][0] if w.text in by_type else fallback
                    correct.append(guess == w.kind)
                    where.append((i, j))
        where = np.array(where, dtype=np.int64)
        return [Baseline("word-type lookup", Scored(np.array(correct, dtype=float),
                                                    _word_ids(where), where[:, 0]))]


def _word_ids(where: np.ndarray) -> np.ndarray:
    return where[:, 0] * WORD_STRIDE + where[:, 1]


# ================================================================ syntactic


def _sbt_ids(data: ProbeData) -> np.ndarray:
    """One id per distinct SBT sequence of the syntactic subset (equal trees are all relevant)."""
    sequences = data.sbt_texts
    index = {s: k for k, s in enumerate(dict.fromkeys(sequences))}
    return np.array([index[s] for s in sequences])


class Syntactic(Property):
    """Retrieve a function's AST-only SBT sequence from its code (MRR)."""

    name = "syntactic"
    inputs = ("code", "sbt")

    def evaluate(self, features: StateFeatures, data: ProbeData, profile: Profile,
                 seed: int = 0, locate: bool = True, progress: bool = False) -> StateResult:
        code = features.code[:, data.syntactic]
        sbt, ids = features.sbt, _sbt_ids(data)
        test = data.is_test[data.syntactic]
        tr, te = np.flatnonzero(~test), np.flatnonzero(test)

        def pairs(index, shuffle):
            # Code of training function k with its SBT (with another one's, shuffled).
            target = tr if shuffle is None else shuffle.permutation(tr)
            chosen, trees = tr[index], target[index]
            return code[:, chosen], sbt[:, trees], ids[trees]

        relevant = ids[te][:, None] == ids[te][None, :]
        state = _retrieval_probe(pairs, (code[:, te], sbt[:, te], relevant, False), tr,
                                 shared=False, rows=data.syntactic[te], clusters=None,
                                 locate=locate, profile=profile, seed=seed, progress=progress)
        state.result.update(n_train=len(tr), candidates=len(te))
        return state

    def baselines(self, data: ProbeData, profile: Profile, seed: int = 0) -> list[Baseline]:
        """Length matching: rank the SBTs by how close their length (in SBT tokens) is to the one
        a log-log line, fitted on the training functions, predicts from the code's length (in
        Python tokens); ties in a seeded random order."""
        code_length = np.log([len(data.functions[i].token_kinds) for i in data.syntactic])
        sbt_length = np.log([len(data.functions[i].sbt) for i in data.syntactic])
        ids = _sbt_ids(data)
        test = data.is_test[data.syntactic]
        slope, intercept = np.polyfit(code_length[~test], sbt_length[~test], 1)
        predicted = slope * code_length[test] + intercept
        scores = -np.abs(predicted[:, None] - sbt_length[test][None, :])
        scores += np.random.default_rng(seed).uniform(0, 1e-9, scores.shape)
        relevant = ids[test][:, None] == ids[test][None, :]
        ap = ranking_average_precision(scores, relevant)
        return [Baseline("length matching", Scored(ap, data.syntactic[test]))]


# ================================================================ structural


def structural_labels(data: ProbeData) -> np.ndarray:
    """Complexity class of every function (radon's cyclomatic complexity, six classes)."""
    return np.array([f.complexity_class for f in data.functions])


def length_features(codes: Sequence[str]) -> np.ndarray:
    """(n, 3) log characters, lines and words: what a length-only model can see."""
    rows = [[len(c), c.count("\n") + 1, len(c.split())] for c in codes]
    return np.log1p(np.array(rows, dtype=np.float64))


def bag_of_tokens(codes_train: Sequence[str], codes_test: Sequence[str]):
    """Sparse counts of each Python token (tokenize's text) in each code; the vocabulary is the
    tokens of at least two training functions (one seen once cannot generalise, and thousands of
    such columns let a logistic regression memorise the training set)."""
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(analyzer=lambda code: [t.text for t in token_kinds(code)], min_df=2)
    return vectorizer.fit_transform(codes_train), vectorizer.transform(codes_test)


class Structural(Property):
    """Cyclomatic complexity in six classes (accuracy)."""

    name = "structural"
    inputs = ("code",)

    def evaluate(self, features: StateFeatures, data: ProbeData, profile: Profile,
                 seed: int = 0, locate: bool = True, progress: bool = False) -> StateResult:
        y = structural_labels(data)
        X, test = features.code, data.is_test
        state = _classify(X[:, ~test], y[~test], X[:, test], y[test],
                          train_units=np.flatnonzero(~test), rows=np.flatnonzero(test),
                          clusters=None, locate=locate, profile=profile, seed=seed, progress=progress)
        state.result["n_train"] = int((~test).sum())
        return state

    def baselines(self, data: ProbeData, profile: Profile, seed: int = 0) -> list[Baseline]:
        """Logistic regressions on lengths alone and on a bag of tokens, and the majority class."""
        y, test = structural_labels(data), data.is_test
        codes = np.array(data.texts, dtype=object)
        rows = np.flatnonzero(test)
        lengths = length_features(codes)
        tokens_train, tokens_test = bag_of_tokens(codes[~test], codes[test])
        majority = np.bincount(y[~test]).argmax()
        predictions = {
            "length only": _logistic_regression(lengths[~test], y[~test], lengths[test],
                                                standardize=True),
            "bag of tokens": _logistic_regression(tokens_train, y[~test], tokens_test,
                                                  standardize=False),
            "majority class": np.full(len(rows), majority),
        }
        return [Baseline(name, Scored((guess == y[test]).astype(float), rows))
                for name, guess in predictions.items()]


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
    inputs = ("code", "variants")

    def evaluate(self, features: StateFeatures, data: ProbeData, profile: Profile,
                 seed: int = 0, locate: bool = True, progress: bool = False) -> StateResult:
        items = np.concatenate([features.code[:, data.semantic], features.variants], axis=1)
        groups, test, near_miss = _semantic_items(data)
        train_items = np.flatnonzero(~test & ~near_miss)
        train_groups = np.unique(groups[train_items])

        def pairs(index, shuffle):
            # Every pair of items within each drawn training function (a redrawn function brings
            # its pairs again); shuffled: group labels permuted across the training items.
            labels = groups.copy()
            if shuffle is not None:
                labels[train_items] = shuffle.permutation(groups[train_items])
            members = {g: train_items[labels[train_items] == g] for g in train_groups}
            found = [(a, b, g) for g in train_groups[index] for k, a in enumerate(members[g])
                     for b in members[g][k + 1:]]
            if not found:
                raise ValueError("semantic probe: no training pair (no function has a variant)")
            left, right, label = map(np.array, zip(*found))
            return items[:, left], items[:, right], label

        queries, candidates, relevant = _semantic_ranking(groups, test, near_miss)
        state = _retrieval_probe(pairs, (items[:, queries], items[:, candidates], relevant, True),
                                 train_groups, shared=True, rows=queries, clusters=groups[queries],
                                 locate=locate, profile=profile, seed=seed, progress=progress)
        state.result.update(n_train=len(train_items), candidates=len(candidates),
                            near_misses=int((test & near_miss).sum()))
        return state

    def baselines(self, data: ProbeData, profile: Profile, seed: int = 0) -> list[Baseline]:
        """Token-overlap (Jaccard) ranking: what string matching alone achieves."""
        codes = [data.functions[i].code_without_doc for i in data.semantic]
        codes += [v for vs in data.variants for v in vs] + [m for ms in data.mutants for m in ms]
        groups, test, near_miss = _semantic_items(data)
        queries, candidates, relevant = _semantic_ranking(groups, test, near_miss)
        sets = {i: {t.text for t in token_kinds(codes[i])} for i in candidates}
        scores = np.array([[len(sets[q] & sets[c]) / max(1, len(sets[q] | sets[c]))
                            for c in candidates] for q in queries])
        ap = ranking_average_precision(scores, relevant, exclude_self=True)
        return [Baseline("token Jaccard", Scored(ap, queries, groups[queries]))]


PROPERTIES: tuple[Property, ...] = (Lexical(), Syntactic(), Structural(), Semantic())
