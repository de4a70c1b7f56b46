"""Metrics as the field's evaluators score them: retrieval (MRR, MAP), clone F1, and CodeXGLUE's
BLEU, exact match and edit similarity; plus the degenerate-output report beside every generation
score.

Code search ranks every candidate for every query (`retrieval_ranks`); summarization uses
CodeXGLUE's smoothed sentence BLEU-4 (their bleu.py, reimplemented because no maintained library
reproduces it); code generation corpus BLEU (sacrebleu statistics, so a bootstrap resample of rows
gets its own corpus BLEU) and exact match; line completion exact match and edit similarity
(rapidfuzz `fuzz.ratio`). Degenerate outputs (empty, all or mostly identical, looping) are
reported beside the scores, never silently scored.
"""
from __future__ import annotations

import math
import re
import sys
import xml.sax.saxutils
from collections import Counter
from collections.abc import Sequence

import numpy as np

# Flagged degenerate: at least this share of predictions empty (or looping), or more than this share one same string.
DEGENERATE_EMPTY_SHARE = 0.5
DEGENERATE_IDENTICAL_SHARE = 0.5


# ------------------------------------------------------------------------------ retrieval

def retrieval_ranks(similarity: np.ndarray) -> np.ndarray:
    """Rank (1 = best) of each query's true candidate, which is the one on the diagonal of the
    (queries, candidates) similarity matrix: 1 + how many candidates score strictly higher."""
    similarity = np.asarray(similarity)
    correct = np.diagonal(similarity)[:, None]
    return (similarity > correct).sum(1) + 1


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
    """Precision, recall and F1 of the clone class (scikit-learn) from prediction/label columns."""
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, _ = precision_recall_fscore_support(
        per_example["label"], per_example["prediction"], average="binary", pos_label=1, zero_division=0)
    return {"f1": float(f1), "precision": float(precision), "recall": float(recall)}


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


def bleu_statistics(references: Sequence[str], predictions: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-example BLEU sufficient statistics from sacrebleu on CodeXGLUE-style code tokens
    (splitPuncts, then whitespace; sacrebleu's own tokenizer off): matched and candidate n-grams
    for n = 1..4, candidate and reference lengths. Summing rows gives the corpus statistics, so
    a bootstrap resample of rows gets its own corpus BLEU."""
    from sacrebleu.metrics import BLEU

    _same_length(references, predictions)
    metric = BLEU(tokenize="none", effective_order=True)  # counts only; silences its warning
    scores = [metric.sentence_score(" ".join(code_tokens(p)), [" ".join(code_tokens(r))])
              for r, p in zip(references, predictions)]
    return {"bleu_correct": np.array([s.counts for s in scores], dtype=np.int64).reshape(-1, 4),
            "bleu_total": np.array([s.totals for s in scores], dtype=np.int64).reshape(-1, 4),
            "bleu_sys_len": np.array([s.sys_len for s in scores], dtype=np.int64),
            "bleu_ref_len": np.array([s.ref_len for s in scores], dtype=np.int64)}


def corpus_bleu_from_statistics(columns: dict[str, np.ndarray]) -> float:
    """Corpus BLEU-4 (x100) from summed `bleu_statistics` rows, add-1 smoothing for n > 1
    (sacrebleu's add-k; CodeXGLUE's text-to-code script also adds 1 to unigrams, which only
    matters for very short outputs)."""
    from sacrebleu.metrics import BLEU

    if len(columns["bleu_sys_len"]) == 0:
        return 0.0
    return float(BLEU.compute_bleu(
        correct=columns["bleu_correct"].sum(0).tolist(), total=columns["bleu_total"].sum(0).tolist(),
        sys_len=int(columns["bleu_sys_len"].sum()), ref_len=int(columns["bleu_ref_len"].sum()),
        smooth_method="add-k", smooth_value=1).score)


def corpus_bleu(references: Sequence[str], predictions: Sequence[str]) -> float:
    """Corpus BLEU-4 (x100) of code, see `bleu_statistics` and `corpus_bleu_from_statistics`."""
    return corpus_bleu_from_statistics(bleu_statistics(references, predictions))


def exact_match(reference: str, prediction: str) -> float:
    """1.0 when the code token sequences are equal (CodeXGLUE: pred.split() == gold.split())."""
    return float(code_tokens(reference) == code_tokens(prediction))


def edit_similarity(reference: str, prediction: str) -> float:
    """CodeXGLUE line completion's edit similarity: fuzz.ratio (0..100) of the token-spaced strings."""
    from rapidfuzz import fuzz

    return float(fuzz.ratio(" ".join(code_tokens(prediction)), " ".join(code_tokens(reference))))



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


def _repeats_itself(prediction: str) -> bool:
    """A decoding loop: 4+ words of which one word makes up more than half."""
    words = prediction.split()
    return len(words) >= 4 and Counter(words).most_common(1)[0][1] / len(words) > 0.5


def _same_length(references: Sequence[str], predictions: Sequence[str]) -> None:
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
