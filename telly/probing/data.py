"""What the probes read: the sampled functions with every probe's labels (`ProbeData`, from
`prepare`), and a backbone's states of them (`StateFeatures`, from `state_features`).

Probed functions come from the fine-tuning tasks' module-disjoint splits (`telly.corpus.split`,
as the tasks call it): held-out functions from their test split, training functions from their
train split, so a fine-tuned state is never probed on its own training data. Sizes come from the
profile: the held-out share, the shares of functions the syntactic and semantic probes encode extra
inputs for, variants per semantic function, the lexical probe's token-state budget, and the SBT
token budget. The syntactic probe draws only functions whose code the backbone sees whole (not cut
at `max_length`), so the tree it must retrieve describes code the backbone saw.
"""
from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from telly.backbones import Backbone
from telly.corpus import VariantError, make_mutant, make_variant, sample, split
from telly.features import LayerFeatures, layer_features
from telly.profiles import Profile

# The backbone's input sets, one layer_features pass each: the lexical subset with its token
# states, every function pooled, the SBT sequences of the syntactic subset, and the semantic
# probe's variants then near misses.
INPUT_SETS = ("code_tokens", "code", "sbt", "variants")


@dataclass
class ProbeData:
    """The functions a run probes and the labels of each probe (independent of the backbone state).

    `functions` is ordered: the lexical subset first, then the rest; `is_test` marks the held-out
    functions (the tasks' test split). `code_cut_share` is the share of functions whose code is
    longer than the code budget; `sbt_cut_share` the share of the syntactic subset's SBT sequences
    longer than `sbt_max_tokens` (both in the backbone's tokens, special tokens included).
    """

    functions: list
    is_test: np.ndarray
    lexical_count: int
    words: list = field(default_factory=list)  # per lexical function: list of TokenKind
    syntactic: np.ndarray | None = None  # indices into functions
    semantic: np.ndarray | None = None  # indices into functions (the originals)
    variants: list = field(default_factory=list)  # per semantic function: list of variant codes
    mutants: list = field(default_factory=list)  # per semantic function: list of near-miss codes
    skipped: int = 0
    sbt_max_tokens: int = 0
    sbt_cut_share: float = 0.0
    code_cut_share: float = 0.0

    @property
    def texts(self) -> list[str]:
        return [f.code_without_doc for f in self.functions]

    @property
    def sbt_texts(self) -> list[str]:
        """The syntactic subset's SBT sequences as the backbone reads them."""
        return [" ".join(self.functions[i].sbt) for i in self.syntactic]


def _usable(fn) -> bool:
    """Functions every probe can label: tokenizable, SBT and complexity defined."""
    try:
        return bool(fn.token_kinds) and bool(fn.sbt) and fn.complexity >= 1
    except (ValueError, SyntaxError, RecursionError):
        return False


def token_counts(tokenizer, texts: Sequence[str]) -> np.ndarray:
    """(n,) tokens of each text, special tokens included, before any truncation."""
    if not texts:
        return np.zeros(0, dtype=np.int64)
    ids = tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
    return np.array([len(row) for row in ids], dtype=np.int64)


def prepare(functions: Sequence, n: int, profile: Profile, *, tokenizer, max_length: int,
            num_states: int, hidden_size: int, seed: int = 0) -> ProbeData:
    """Sample n functions (held-out ones from the tasks' test split, training ones from their
    train split) and build every probe's data. tokenizer: the backbone's, to tell which code and
    SBT inputs its budgets cut."""
    if not functions:
        raise ValueError("the corpus holds no functions to probe")
    parts = split(list(functions))  # the fine-tuning tasks' split: probe test <= task test
    n_test = max(4, round(n * profile.probing.probe_test_share))
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
                         f"{len(train)} usable ones fall in the tasks' train split and {len(test)} "
                         "in their test split (split by module); probing needs at least 4 of each, "
                         "so give it more modules")
    # Lexical probe: only as many functions as the token-state budget allows.
    per_function = num_states * hidden_size * max_length
    lexical_n = max(8, min(len(train) + len(test), profile.probing.lexical_functions,
                           profile.probing.lexical_token_budget // per_function))
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
    code_fits = token_counts(tokenizer, [f.code_without_doc for f in ordered]) <= max_length

    def subset(share: float, eligible: np.ndarray | None = None) -> np.ndarray:
        """`share` of each split (at least 4), drawn among the `eligible` functions."""
        picked = []
        for flag in (False, True):
            pool = np.flatnonzero(is_test == flag)
            size = max(4, round(len(pool) * share))
            if eligible is not None:
                pool = pool[eligible[pool]]
            picked.append(rng.choice(pool, size=min(len(pool), size), replace=False))
        return np.sort(np.concatenate(picked))

    syntactic = subset(profile.probing.syntactic_share, code_fits)
    if min((~is_test[syntactic]).sum(), is_test[syntactic].sum()) < 2:
        raise ValueError(f"the syntactic probe needs at least 2 training and 2 held-out functions "
                         f"whose code fits in max_length={max_length} tokens; "
                         f"{int(code_fits.sum())} of {len(ordered)} fit")
    sbt_lengths = token_counts(tokenizer, [" ".join(ordered[i].sbt) for i in syntactic])
    semantic, variants, mutants = [], [], []
    for i in subset(profile.probing.semantic_share):
        codes = []
        for k in range(profile.probing.variants_per_function):
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
                     syntactic=syntactic, semantic=np.array(semantic, dtype=int),
                     variants=variants, mutants=mutants, skipped=skipped,
                     sbt_max_tokens=profile.probing.sbt_max_tokens,
                     sbt_cut_share=float((sbt_lengths > profile.probing.sbt_max_tokens).mean()),
                     code_cut_share=float((~code_fits).mean()))


def _near_misses(codes: list[str], seed: int) -> list[str]:
    """One one-edit mutant of the original and of each variant: every query, original or
    variant, then meets a wrong candidate that shares almost all of its own tokens."""
    found: list[str] = []
    for k, code in enumerate(codes):
        try:
            found.append(make_mutant(code, seed=seed + k))
        except VariantError:
            return found  # no editable site in the original means none in its variants either
    return found


def control_labels(keys: Sequence[str], labels: Sequence[int], *, seed: int = 0) -> np.ndarray:
    """Hewitt & Liang control task: each distinct key (a word type) gets one label drawn at random
    from the empirical label distribution, independent of the property. It measures memorisation
    only where keys recur between train and test, as word types do (functions do not)."""
    labels = np.asarray(labels)
    values, counts = np.unique(labels, return_counts=True)
    distinct = sorted(set(keys))
    rng = np.random.default_rng(seed)
    assigned = dict(zip(distinct, rng.choice(values, size=len(distinct), p=counts / counts.sum())))
    return np.array([assigned[k] for k in keys])


def word_features(features: LayerFeatures, words_per_text: Sequence[Sequence]) -> tuple[np.ndarray, np.ndarray]:
    """Word-level states: the mean of the sub-tokens whose character span overlaps the word's.

    features: token states kept (`layer_features(..., keep_tokens=True)`). Returns (L+1, n_words, d) float32
    and the (n_words, 2) [text index, word index] of each kept word (words cut off by truncation
    have no sub-token and are dropped).
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


@dataclass
class StateFeatures:
    """One backbone state's view of a ProbeData: the input sets the properties asked for
    (`INPUT_SETS`); a set nobody asked for is None."""

    code_tokens: LayerFeatures | None = None  # the lexical subset, with token states
    code: np.ndarray | None = None  # (L+1, n, d) every function pooled, ProbeData order
    sbt: np.ndarray | None = None  # (L+1, n_syntactic, d)
    variants: np.ndarray | None = None  # (L+1, n_variants + n_mutants, d): variants, then near misses


def state_features(backbone: Backbone, data: ProbeData, needs: Iterable[str] = INPUT_SETS, *,
                   max_length: int, batch_size: int, mixed_precision: str = "no",
                   progress: bool = True) -> StateFeatures:
    """The input sets in `needs`, through `telly.features.layer_features` (one pass per set,
    cached on disk; forward passes under `mixed_precision`, the profile's setting)."""
    needs = set(needs)
    unknown = sorted(needs - set(INPUT_SETS))
    if unknown:
        raise ValueError(f"unknown probe input set(s) {unknown}; expected some of {list(INPUT_SETS)}")
    texts = data.texts
    kwargs = {"max_length": max_length, "batch_size": batch_size, "progress": progress,
              "mixed_precision": mixed_precision}
    found = {}
    if needs & {"code_tokens", "code"}:
        # The lexical subset is its own pass: the pooled states of every function reuse it.
        lexical = layer_features(backbone, texts[:data.lexical_count],
                                 keep_tokens="code_tokens" in needs, **kwargs)
        if "code_tokens" in needs:
            found["code_tokens"] = lexical
        if "code" in needs:
            pooled = [lexical.pooled]
            if len(texts) > data.lexical_count:
                pooled.append(layer_features(backbone, texts[data.lexical_count:], **kwargs).pooled)
            found["code"] = np.concatenate(pooled, axis=1)
    if "sbt" in needs:
        found["sbt"] = layer_features(backbone, data.sbt_texts,
                                      **{**kwargs, "max_length": data.sbt_max_tokens}).pooled
    if "variants" in needs:
        # Variants and near misses in one pass: they are all extra inputs of the semantic probe.
        extra = [v for codes in data.variants for v in codes] + [m for ms in data.mutants for m in ms]
        found["variants"] = layer_features(backbone, extra, **kwargs).pooled
    return StateFeatures(**found)
