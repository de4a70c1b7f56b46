"""Clone detection: are two functions semantically the same?

The paper's head (UniXcoder on BigCloneBench): each function is encoded on its own, the two
representations are concatenated and a dense-tanh-dropout-linear classifier predicts clone / not
clone. We pool by the mean of the real tokens (it suits encoders and decoders alike). By default
the classifier also sees |u - v| and u * v beside [u; v] (`pair_features="compare"`, Sentence-BERT's
pair features): with [u; v] alone (`pair_features="concat"`, the paper's head, fit for
BigCloneBench's 900K pairs) it must learn the comparison itself, and on a laptop's thousand pairs
it does not (measured on frozen MiniLM-L6 features of the laptop profile's 1,000 training and 400
test pairs, before the profile went to 500: test F1 0.44-0.66 after 1-30 epochs of the head alone,
against 0.80-0.82 with the comparison features). Metrics: precision, recall and F1 of
the clone class (scikit-learn).

Offline data (a BigCloneBench stand-in): for each corpus function, one clone pair (its code, a
semantics-preserving variant of it from `telly.corpus.make_variant`: locals renamed, loops and
branches rewritten) and one non-clone pair: for half of the functions, its code against a near
miss (its own variant with one behaviour-changing edit, `telly.corpus.make_mutant`: the same
tokens as the clone, other behaviour), for the rest, a variant of another function from the same
module when there is one. Near misses are what keep token overlap from solving the task. Both sides of every pair look alike (original,
re-printed from its AST, vs. variant) and the function's own name is replaced by `func` on both
sides, so neither the variant's opaque names, its layout, nor a shared function name give the label
away. Real data: BigCloneBench through `telly.loaders.load_bigclonebench`.

`token_overlap_baseline` is the string-matching reference the book shows beside every clone figure:
Jaccard overlap of the two sides' token sets, thresholded where it maximises F1 on the valid split.
"""
from __future__ import annotations

import ast
import contextlib
import random
import re
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from telly.backbones import Backbone
from telly.features import masked_mean
from telly.metrics import clone_scores
from telly.profiles import Profile
from telly.tasks import Batch, Evaluation, Task, TaskConfig, TaskData, TaskModel, batches, task_data, tokenize


@dataclass(frozen=True)
class ClonePairExample:
    code_a: str
    code_b: str
    label: int  # 1 = clone
    id: str


PAIR_FEATURES = {"concat": 2, "compare": 4}  # what the classifier sees -> its width in hidden sizes


@dataclass(frozen=True)
class CloneDetectionConfig(TaskConfig):
    dropout: float = 0.1
    pair_features: str = "compare"  # "concat": [u; v] (the paper's head); "compare": [u; v; |u-v|; u*v]

    def __post_init__(self) -> None:
        if self.pair_features not in PAIR_FEATURES:
            raise ValueError(f"clone-detection: pair_features must be one of {sorted(PAIR_FEATURES)}, "
                             f"got {self.pair_features!r}")


class PairClassifierHead(nn.Module):
    """dense(kH -> H), tanh, dropout, linear(H -> 2) over the pair's features: [u; v] (k = 2) or
    [u; v; |u - v|; u * v] (k = 4)."""

    def __init__(self, hidden_size: int, dropout: float, pair_features: str = "compare") -> None:
        super().__init__()
        self.pair_features = pair_features
        self.dense = nn.Linear(PAIR_FEATURES[pair_features] * hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, 2)

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        parts = [first, second]
        if self.pair_features == "compare":
            parts += [(first - second).abs(), first * second]
        return self.out(self.dropout(torch.tanh(self.dense(self.dropout(torch.cat(parts, -1))))))


class CloneDetectionModel(TaskModel):
    def __init__(self, backbone: Backbone, dropout: float, pair_features: str = "compare") -> None:
        super().__init__(backbone, PairClassifierHead(backbone.hidden_size, dropout, pair_features))

    def logits(self, inputs: dict) -> torch.Tensor:
        first = masked_mean(*self.encode(inputs["code_a"]))
        second = masked_mean(*self.encode(inputs["code_b"]))
        return self.head(first, second)

    def forward(self, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(self.logits(batch["inputs"]), batch["labels"])


def _anonymise(code: str) -> str:
    """Replace the defined function's own name (definition and recursive calls) by `func`, and
    re-print the code from its AST so both sides share one layout (no comments, like variants)."""
    with contextlib.suppress(SyntaxError):
        code = ast.unparse(ast.parse(textwrap.dedent(code)))
    match = re.search(r"def\s+(\w+)\s*\(", code)
    return re.sub(rf"\b{re.escape(match.group(1))}\b", "func", code) if match else code


def clone_pairs(functions: Sequence, seed: int) -> list[ClonePairExample]:
    """One clone and one non-clone pair per function that has a variant (see module docstring)."""
    from telly.corpus import VariantError, make_mutant, make_variant

    rng = random.Random(seed)
    variants = {}
    for index, fn in enumerate(functions):
        try:
            variants[index] = _anonymise(make_variant(fn.code, seed=seed + index))
        except VariantError:
            continue
    by_module = defaultdict(list)
    for index in variants:
        by_module[functions[index].module].append(index)
    usable = sorted(variants)
    pairs = []
    for index in usable:
        fn = functions[index]
        original = _anonymise(fn.code_without_doc)
        pairs.append(ClonePairExample(original, variants[index], 1, f"{fn.path}:{fn.qualname}+"))
        if rng.random() < 0.5:
            try:
                mutant = make_mutant(variants[index], seed=seed + index)
                pairs.append(ClonePairExample(original, mutant, 0, f"{fn.path}:{fn.qualname}~"))
                continue
            except VariantError:
                pass  # no editable site: fall back to another function of the module
        near = [i for i in by_module[fn.module] if i != index]
        others = near or [i for i in usable if i != index]
        if not others:
            continue
        other = rng.choice(others)
        pairs.append(ClonePairExample(original, variants[other], 0,
                                      f"{fn.path}:{fn.qualname}-{functions[other].qualname}"))
    return pairs


class CloneDetectionTask(Task):
    name = "clone-detection"
    metric = "f1"
    metrics = ("f1", "precision", "recall")
    config_class = CloneDetectionConfig
    head_lr_scale = 20.0  # the classifier starts random: at the backbone's rate it barely moves in a laptop run

    def load_data(self, profile: Profile, seed: int = 0) -> TaskData:
        sizes = {"train": profile.train_examples, "valid": profile.valid_examples, "test": profile.test_examples}
        if self.config.data_path:
            from telly.loaders import load_bigclonebench

            splits = {name: [ClonePairExample(r.code_a, r.code_b, r.label, f"{r.idx_a}/{r.idx_b}")
                             for r in load_bigclonebench(self.config.data_path, name, limit=size)]
                      for name, size in sizes.items()}
            source = f"BigCloneBench at {self.config.data_path}"
        else:
            from telly.corpus import load_corpus, sample, split

            corpus = load_corpus("stdlib")
            parts = split(corpus)
            splits = {}
            for name, size in sizes.items():
                # Half as many functions as pairs (one clone + one non-clone each); a few spare
                # ones make up for functions that admit no variant.
                wanted = None if size is None else size // 2 + max(8, size // 10)
                pairs = clone_pairs(sample(parts[name], wanted, seed=seed), seed=seed)
                splits[name] = pairs if size is None else pairs[:size]
            source = f"{corpus.source} corpus {corpus.fingerprint} (variant clone pairs)"
        for name, examples in splits.items():
            labels = {e.label for e in examples}
            if labels != {0, 1}:
                raise ValueError(f"clone-detection: the {name} split needs clones and non-clones, "
                                 f"got labels {sorted(labels)} in {len(examples)} pairs ({source})")
        return task_data(self.name, splits, source)

    def build_model(self, backbone: Backbone) -> CloneDetectionModel:
        return CloneDetectionModel(backbone, self.config.dropout, self.config.pair_features)

    def collate(self, examples: Sequence[ClonePairExample], tokenizer, profile: Profile) -> Batch:
        return {
            "inputs": {"code_a": tokenize(tokenizer, [e.code_a for e in examples], profile.max_code_tokens),
                       "code_b": tokenize(tokenizer, [e.code_b for e in examples], profile.max_code_tokens)},
            "labels": torch.tensor([e.label for e in examples], dtype=torch.long),
        }

    def evaluate(self, model: CloneDetectionModel, examples: Sequence[ClonePairExample], tokenizer,
                 profile: Profile, batch_size: int) -> Evaluation:
        device = next(model.parameters()).device
        predictions = []
        for chunk in batches(examples, batch_size):
            inputs = self.collate(chunk, tokenizer, profile)["inputs"]
            inputs = {name: {k: v.to(device) for k, v in field.items()} for name, field in inputs.items()}
            predictions.append(model.logits(inputs).argmax(-1).cpu())
        per_example = {"prediction": torch.cat(predictions).numpy(),
                       "label": np.array([e.label for e in examples])}
        return Evaluation(self.score(per_example), per_example)

    def score(self, per_example: dict[str, np.ndarray]) -> dict[str, float]:
        return clone_scores(per_example)


_FALLBACK_TOKEN = re.compile(r"\w+|[^\w\s]")  # identifiers/numbers, or one punctuation character


def code_token_set(code: str) -> frozenset[str]:
    """The distinct tokens of `code`: Python tokens (`telly.corpus.token_kinds`) when it tokenizes
    as Python, otherwise words and single punctuation characters (e.g. Java from BigCloneBench)."""
    from telly.corpus import token_kinds

    try:
        return frozenset(token.text for token in token_kinds(code))
    except ValueError:
        return frozenset(_FALLBACK_TOKEN.findall(code))


def token_jaccard(code_a: str, code_b: str) -> float:
    """|A & B| / |A | B| over the two sides' token sets (1.0 when both are empty)."""
    a, b = code_token_set(code_a), code_token_set(code_b)
    return len(a & b) / len(a | b) if a | b else 1.0


def token_overlap_baseline(data: TaskData, seed: int = 0, samples: int = 1000) -> dict:
    """String-matching reference for clone detection: a pair is called a clone when the Jaccard
    overlap of its token sets reaches a threshold, chosen to maximise F1 on the valid split (ties:
    the lowest such threshold); precision/recall/F1 on the test split with bootstrap 95% CIs.

    Returns {"threshold", "valid_f1", "test" (metrics), "test_ci" ({metric: {value, low, high}}),
    "test_per_example" (prediction, label, overlap), "source"}."""
    from telly.stats import bootstrap_ci

    for name in ("valid", "test"):
        if not data.split(name):
            raise ValueError(f"token_overlap_baseline: the {name} split is empty ({data.source})")
    valid_overlap = np.array([token_jaccard(e.code_a, e.code_b) for e in data.valid])
    valid_labels = np.array([e.label for e in data.valid])
    # Every distinct valid overlap is a candidate cut; "overlap >= cut" calls a clone.
    candidates = np.unique(valid_overlap)
    valid_f1 = [clone_scores({"prediction": (valid_overlap >= cut).astype(int), "label": valid_labels})["f1"]
                for cut in candidates]
    best = int(np.argmax(valid_f1))
    threshold = float(candidates[best])
    test_overlap = np.array([token_jaccard(e.code_a, e.code_b) for e in data.test])
    per_example = {"prediction": (test_overlap >= threshold).astype(int),
                   "label": np.array([e.label for e in data.test]), "overlap": test_overlap}
    scored = {"prediction": per_example["prediction"], "label": per_example["label"]}
    return {"threshold": threshold, "valid_f1": float(valid_f1[best]), "test": clone_scores(scored),
            "test_ci": bootstrap_ci(scored, clone_scores, samples=samples, seed=seed),
            "test_per_example": per_example, "source": data.source}
