"""Metrics as the field's evaluators score them: retrieval (MRR, recall@k, MAP), clone F1, and
CodeXGLUE's BLEU, exact match and edit similarity; plus the degenerate-output report beside every
generation score.

Code search ranks every candidate for every query (`retrieval_scores`; tied scores count as a random
order among the tied, so a collapsed encoder scores chance). Summarization uses CodeXGLUE's
code-to-text smoothed sentence BLEU-4 (their bleu.py, reimplemented because no maintained library
reproduces it). Code generation uses CodeXGLUE's text-to-code (CONCODE) evaluator: corpus BLEU-4 on
whitespace tokens with +1 smoothing of every n-gram order, from per-example statistics so that a
bootstrap resample of rows gets its own corpus BLEU, and exact match of the whitespace tokens. Line
completion uses CodeXGLUE's line-level evaluator: exact match of the whitespace tokens and fuzzywuzzy's
`fuzz.ratio` of the raw strings after its literal post-processing. References are scored as written:
what a model's tokenizer cannot spell (capitals, for an uncased one) counts against it. Degenerate
outputs (empty, all or mostly identical, looping) are reported beside the scores, never silently scored.
"""
from __future__ import annotations

import functools
import math
import re
import sys
import xml.sax.saxutils
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
from rapidfuzz import fuzz

# Flagged degenerate: at least this share of predictions empty (or looping), or more than this share one same string.
DEGENERATE_EMPTY_SHARE = 0.5
DEGENERATE_IDENTICAL_SHARE = 0.5
RECALL_CUTOFFS = (1, 5, 10)  # code search reports recall@k at these k


# ------------------------------------------------------------------------------ retrieval

def retrieval_scores(similarity: np.ndarray, cutoffs: Sequence[int] = (1, 5, 10)) -> dict[str, np.ndarray]:
    """Per-query "reciprocal_rank" and "hit@k" columns of a (queries, candidates) similarity matrix
    whose true candidates lie on the diagonal.

    A query's true candidate ranks after the `higher` candidates that score strictly more; the
    `tied` others with its exact score take the places around it in a random order, so each column
    is its expectation over that order: reciprocal rank (H(higher + tied + 1) - H(higher)) / (tied + 1)
    with H the harmonic numbers, hit@k the share of those places within the top k. Without ties
    this is 1 / rank and rank <= k; a collapsed encoder (every score equal) gets chance, MRR H(n) / n
    and recall@k k / n, where counting only strictly higher scores would give it 1.0."""
    similarity = np.asarray(similarity)
    if similarity.ndim != 2 or similarity.shape[0] > similarity.shape[1]:
        raise ValueError(f"expected a (queries, candidates) matrix with at least as many candidates as "
                         f"queries, got shape {similarity.shape}")
    correct = np.diagonal(similarity)[:, None]
    higher = (similarity > correct).sum(1)
    tied = (similarity == correct).sum(1) - 1  # the true candidate itself is not tied with itself
    places = tied + 1
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, similarity.shape[1] + 1))])
    columns = {"reciprocal_rank": (harmonic[higher + places] - harmonic[higher]) / places}
    for k in cutoffs:
        columns[f"hit@{k}"] = np.clip(k - higher, 0, places) / places
    return columns


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


# ------------------------------------------------------------------------------ classification

def clone_scores(per_example: dict[str, np.ndarray]) -> dict[str, float]:
    """Precision, recall and F1 of the clone class (label 1) from prediction/label columns, as
    scikit-learn's binary scores with zero_division=0 (CodeXGLUE's BigCloneBench evaluator), counted
    directly: the bootstrap calls this thousands of times and sklearn's checks cost 10 ms a call."""
    prediction = np.asarray(per_example["prediction"]) == 1
    label = np.asarray(per_example["label"]) == 1
    hits = int(np.sum(prediction & label))
    called, actual = int(prediction.sum()), int(label.sum())
    precision = hits / called if called else 0.0
    recall = hits / actual if actual else 0.0
    f1 = 2 * hits / (called + actual) if called + actual else 0.0
    return {"f1": f1, "precision": precision, "recall": recall}


# ------------------------------------------------------------------------------ generation

def code_tokens(text: str) -> list[str]:
    """CodeXGLUE's splitPuncts: words (letters, digits, underscore) and single punctuation marks."""
    return re.findall(r"[\w]+|[^\s\w]", text)


# CodeXGLUE code-to-text evaluator/bleu.py (NIST mteval-v11a normalisation), kept verbatim in effect.
_NORMALIZE1 = [(re.compile(p), r) for p, r in [("<skipped>", ""), (r"-\n", ""), (r"\n", " ")]]
_NORMALIZE2 = [(re.compile(p), r) for p, r in [
    (r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 "),  # punctuation (the apostrophe is missing there too)
    (r"([^0-9])([\.,])", r"\1 \2 "),  # period and comma unless preceded by a digit
    (r"([\.,])([^0-9])", r" \1 \2"),  # period and comma unless followed by a digit
    (r"([0-9])(-)", r"\1 \2 "),  # dash after a digit
]]


def _nist_normalize(text: str) -> list[str]:
    for pattern, replace in _NORMALIZE1:
        text = pattern.sub(replace, text)
    text = xml.sax.saxutils.unescape(text, {"&quot;": '"'})
    text = f" {text} ".lower()
    for pattern, replace in _NORMALIZE2:
        text = pattern.sub(replace, text)
    return text.split()


def _ngram_counts(words: list[str], n: int = 4) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def codexglue_sentence_bleu(reference: str, prediction: str, n: int = 4) -> float:
    """Smoothed sentence BLEU-4 in [0, 1] exactly as CodeXGLUE's bleu.py (computeMaps + bleu with
    smooth=1): both sides lower-cased and split by splitPuncts, NIST-normalised; +1 added to the
    matches and to the candidate n-grams for n > 1 only; brevity penalty min(0, 1 - (r+1)/(c+1))."""
    ref = _nist_normalize(" ".join(code_tokens(reference.strip().lower())))
    test = _nist_normalize(" ".join(code_tokens(prediction.strip().lower())))
    ref_counts, test_counts = _ngram_counts(ref, n), _ngram_counts(test, n)
    correct = [0] * n
    for ngram, count in test_counts.items():
        correct[len(ngram) - 1] += min(ref_counts.get(ngram, 0), count)
    guess = [max(len(test) - k + 1, 0) for k in range(1, n + 1)]
    tiny = sys.float_info.min  # as bleu.py: log(0 + tiny) instead of a math error
    log_bleu = 0.0
    for k in range(n):
        smooth = 1 if k > 0 else 0
        log_bleu += math.log(correct[k] + smooth + tiny) - math.log(guess[k] + smooth + tiny)
    log_bleu /= n
    log_bleu += min(0.0, 1 - (len(ref) + 1) / (len(test) + 1))
    return math.exp(log_bleu)


def codexglue_smoothed_bleu(references: Sequence[str], predictions: Sequence[str]) -> float:
    """CodeXGLUE's summarization BLEU (bleuFromMaps): mean smoothed sentence BLEU-4, x100."""
    _same_length(references, predictions)
    scores = [codexglue_sentence_bleu(r, p) for r, p in zip(references, predictions)]
    return 100.0 * float(np.mean(scores)) if scores else 0.0


def bleu_statistics(references: Sequence[str], predictions: Sequence[str], n: int = 4) -> dict[str, np.ndarray]:
    """Per-example sufficient statistics of CodeXGLUE's text-to-code BLEU (evaluator/bleu.py,
    compute_bleu): both sides split on whitespace, clipped n-gram matches ("bleu_correct") and
    candidate n-grams ("bleu_total") for orders 1..n, candidate and reference lengths. Summing
    rows gives the corpus statistics, so a bootstrap resample of rows gets its own corpus BLEU."""
    _same_length(references, predictions)
    correct = np.zeros((len(references), n), dtype=np.int64)
    total = np.zeros((len(references), n), dtype=np.int64)
    for row, (reference, prediction) in enumerate(zip(references, predictions)):
        ref, hyp = reference.split(), prediction.split()
        for ngram, count in (_ngram_counts(hyp, n) & _ngram_counts(ref, n)).items():
            correct[row, len(ngram) - 1] += count
        total[row] = [max(len(hyp) - k + 1, 0) for k in range(1, n + 1)]
    return {"bleu_correct": correct, "bleu_total": total,
            "bleu_sys_len": np.array([len(p.split()) for p in predictions], dtype=np.int64),
            "bleu_ref_len": np.array([len(r.split()) for r in references], dtype=np.int64)}


def corpus_bleu_from_statistics(columns: dict[str, np.ndarray]) -> float:
    """Corpus BLEU-4 (x100) from summed `bleu_statistics` rows as CodeXGLUE's text-to-code
    evaluator computes it (smooth=True): every order's precision is (matches + 1) / (candidates + 1),
    unigrams included; brevity penalty exp(1 - r / c) when c <= r. Where that script divides by
    zero, the limit: no candidate words give 0, no reference words a penalty of 1."""
    if len(columns["bleu_sys_len"]) == 0:
        return 0.0
    correct = np.asarray(columns["bleu_correct"]).sum(0)
    total = np.asarray(columns["bleu_total"]).sum(0)
    sys_len, ref_len = int(np.sum(columns["bleu_sys_len"])), int(np.sum(columns["bleu_ref_len"]))
    if sys_len == 0:
        return 0.0
    log_precision = float(np.mean(np.log((correct + 1.0) / (total + 1.0))))
    brevity = 0.0 if sys_len > ref_len else 1.0 - ref_len / sys_len
    return 100.0 * math.exp(log_precision + brevity)


def corpus_bleu(references: Sequence[str], predictions: Sequence[str]) -> float:
    """CodeXGLUE's text-to-code corpus BLEU-4 (x100), see `bleu_statistics` and `corpus_bleu_from_statistics`."""
    return corpus_bleu_from_statistics(bleu_statistics(references, predictions))


def exact_match(reference: str, prediction: str) -> float:
    """1.0 when the whitespace-split tokens are equal (CodeXGLUE: pred.split() == gold.split())."""
    return float(reference.split() == prediction.split())


_LITERAL = re.compile(r"<(STR|NUM|CHAR)_LIT:(.*?)>", re.S)


def codexglue_post_process(code: str) -> str:
    """The line-completion evaluator's post_process: normalised literals back to text
    (<NUM_LIT> -> 0, <STR_LIT> and <CHAR_LIT> -> nothing, <NUM_LIT:1> -> 1)."""
    code = code.replace("<NUM_LIT>", "0").replace("<STR_LIT>", "").replace("<CHAR_LIT>", "")
    return _LITERAL.sub(lambda match: match.group(2), code)


def edit_similarity(reference: str, prediction: str) -> float:
    """CodeXGLUE line completion's edit similarity (0..100): fuzzywuzzy's fuzz.ratio of the
    post-processed strings, the prediction stripped first, as its evaluator scores them. That is
    rapidfuzz's indel ratio (what fuzzywuzzy computes with python-Levenshtein, and thefuzz),
    rounded to an integer as fuzzywuzzy does."""

    prediction, reference = codexglue_post_process(prediction.strip()), codexglue_post_process(reference)
    return float(round(fuzz.ratio(prediction, reference)))


# ------------------------------------------------------------------------------ degenerate outputs

def degenerate_report(predictions: Sequence[str]) -> dict:
    """How degenerate a set of predictions is: empty strings, distinct outputs, the most common
    one; `is_degenerate` with the reasons when a metric over them would mislead."""
    n = len(predictions)
    if n == 0:
        return {"n": 0, "empty": 0, "empty_share": 0.0, "distinct": 0, "most_common": None,
                "most_common_share": 0.0, "is_degenerate": True, "reasons": ["no predictions"]}
    stripped = [p.strip() for p in predictions]
    empty = sum(1 for p in stripped if not p)
    most_common, count = Counter(stripped).most_common(1)[0]
    distinct = len(set(stripped))
    reasons = []
    if empty / n >= DEGENERATE_EMPTY_SHARE:
        reasons.append(f"{empty} of {n} predictions are empty")
    if n > 1 and distinct == 1:
        reasons.append(f"all {n} predictions are identical: {most_common!r}")
    elif n > 1 and count / n > DEGENERATE_IDENTICAL_SHARE and most_common:
        reasons.append(f"{count} of {n} predictions are the same string: {most_common!r}")
    looping = [p for p in stripped if _repeats_itself(p)]
    if len(looping) / n >= DEGENERATE_EMPTY_SHARE:
        reasons.append(f"{len(looping)} of {n} predictions repeat one word over and over, "
                       f"e.g. {looping[0][:60]!r}")
    return {"n": n, "empty": empty, "empty_share": empty / n, "distinct": distinct,
            "most_common": most_common, "most_common_share": count / n,
            "looping": len(looping), "looping_share": len(looping) / n,
            "is_degenerate": bool(reasons), "reasons": reasons}


@functools.lru_cache(maxsize=1 << 16)  # the bootstrap scores the same predictions thousands of times
def _repeats_itself(prediction: str) -> bool:
    """A decoding loop: 4+ words of which one word makes up more than half."""
    words = prediction.split()
    return len(words) >= 4 and Counter(words).most_common(1)[0][1] / len(words) > 0.5


def _same_length(references: Sequence[str], predictions: Sequence[str]) -> None:
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")


# ------------------------------------------------------------------------------ a task's scores

def retrieval_summary(per_example: dict[str, np.ndarray]) -> dict[str, float]:
    """MRR and recall@k from per-query reciprocal_rank and hit@k columns."""
    return {"mrr": float(np.mean(per_example["reciprocal_rank"])),
            **{f"recall@{k}": float(np.mean(per_example[f"hit@{k}"])) for k in RECALL_CUTOFFS}}


def summarization_quality(per_example: dict[str, np.ndarray]) -> dict[str, float]:
    return {"bleu": float(np.mean(per_example["bleu"]))}


def generation_quality(per_example: dict[str, np.ndarray]) -> dict[str, float]:
    return {"bleu": corpus_bleu_from_statistics(per_example), "exact_match": float(np.mean(per_example["exact_match"]))}


def completion_quality(per_example: dict[str, np.ndarray]) -> dict[str, float]:
    return {"edit_similarity": float(np.mean(per_example["edit_similarity"])),
            "exact_match": float(np.mean(per_example["exact_match"]))}


def _with_degenerate_shares(quality: Callable[[dict], dict[str, float]]) -> Callable[[dict], dict[str, float]]:
    """A generation task's metrics beside the share of empty and of most-common predictions."""
    def score(per_example: dict[str, np.ndarray]) -> dict[str, float]:
        report = degenerate_report(np.asarray(per_example["prediction"], dtype=str).tolist())
        return quality(per_example) | {"empty_share": report["empty_share"],
                                       "most_common_share": report["most_common_share"],
                                       "degenerate": float(report["is_degenerate"])}
    return score


# Task name -> metrics from its per-example columns, on any resample of the rows (the bootstrap calls it).
TASK_SCORES: dict[str, Callable[[dict], dict[str, float]]] = {
    "code-search": retrieval_summary,
    "clone-detection": clone_scores,
    "code-summarization": _with_degenerate_shares(summarization_quality),
    "code-generation": _with_degenerate_shares(generation_quality),
    "code-completion": _with_degenerate_shares(completion_quality),
}


def score_function(task: str) -> Callable[[dict], dict[str, float]]:
    """The score function of `task` (a registry name); an unknown one is an error naming the known ones."""
    try:
        return TASK_SCORES[task]
    except KeyError:
        raise ValueError(f"no score function for task {task!r}; expected one of {sorted(TASK_SCORES)}") from None
