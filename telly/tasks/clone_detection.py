"""Clone detection: are two functions semantically the same?

The paper's head (UniXcoder on BigCloneBench): each function is encoded on its own, the two
representations are concatenated and a dense-tanh-dropout-linear classifier predicts clone / not
clone. We pool by the mean of the real tokens, for decoders too (on SmolLM2-135M it beat the last
token's state 0.123 to 0.038 in zero-shot code-search MRR; see `telly.tasks.code_search`). By default
the classifier also sees |u - v| and u * v beside [u; v] (`pair_features="compare"`, Sentence-BERT's
pair features): with [u; v] alone (`pair_features="concat"`, the paper's head, fit for
BigCloneBench's 900K pairs) it must learn the comparison itself, and on a laptop's thousand pairs
it does not (measured on frozen MiniLM-L6 features of the laptop profile's 1,000 training and 400
test pairs, before the profile went to 500: test F1 0.44-0.66 after 1-30 epochs of the head alone,
against 0.80-0.82 with the comparison features). Each pooled vector is layer-normalised (no learned scale)
before the pair features: SmolLM2-135M's mean-pooled states carry one outlier dimension (about 37
where the others are about 2), whose product term saturates the tanh, so the raw head learned
nothing. Measured on frozen pre-trained features of the study profile's 160 training, 64 valid and
190 test pairs (head alone, 30 epochs, best valid epoch, 3 head seeds): SmolLM2 test F1 0.667-0.674
raw against 0.73-0.75 normalised (always "clone": 0.667); MiniLM-L6 0.75-0.76 raw, 0.77-0.80
normalised. Metrics: precision, recall and F1 of
the clone class, as CodeXGLUE's BigCloneBench evaluator (scikit-learn's binary scores) computes them.

The decision threshold is chosen on the valid split, as GraphCodeBERT's BigCloneBench fine-tuning
script does: after every epoch's validation `CloneDetectionTask.calibrate` sets the head's
`threshold` buffer to the clone probability with the best valid F1 (`best_cut`), and the test pairs
are called at the best epoch's threshold. Why: at a fixed 0.5, a fine-tune of SmolLM2-135M on the
study profile's 160 pairs flipped between calling every valid pair a clone and calling none from one
epoch to the next (valid F1 0.00, 0.78, 0.66, 0.57 on one seed; 0.67, 0.67, 0.00 on another), the
ranking staying while the bias moved, so early stopping chose among bias offsets, not models.

Offline data (a BigCloneBench stand-in): every corpus function that admits a semantics-preserving
variant (`telly.corpus.make_variant`: locals renamed, loops and branches rewritten) gives one clone
pair and one non-clone pair. Side A is always the function as written (re-printed from its AST) or
a near miss of it, side B always a variant, so layout and opaque names say nothing. The kinds:

=================  =====  ==========================================================================
kind               label  side A / side B
=================  =====  ==========================================================================
variant            1      the function / a variant of it
same-edit          1      a near miss of it / a variant of that same near miss
other-function     0      the function / a variant of another function of its module *
different-edits    0      a near miss of it / a variant of a different near miss of it
=================  =====  ==========================================================================

(* another function that has no two near misses either, when there is one; else of any module.)

A near miss (`telly.corpus.make_mutant`) is the function with ONE behaviour-changing edit (a flipped
comparison, a swapped operator, an integer off by one, if/else bodies exchanged). The clone
literature calls such one-edit look-alikes near-miss (Type-3) clones; here the label follows
behaviour, so a near miss of a function is not its clone (stricter than BigCloneBench, whose judges
ask whether two functions implement the same functionality). A function that admits two different
one-edit changes gives a "same-edit" clone and a "different-edits" non-clone; any other function a
"variant" clone and an "other-function" non-clone. Every function gives one pair of each label, and
whether side A, side B or both carry an edit is the same for both labels, so spotting an
odd-looking edit wins nothing: only whether the two sides behave alike does (a model that calls
every edited pair a non-clone gets half of them wrong). Near misses also keep token overlap from
solving the task: both edited kinds share almost every token. Both sides have the function's own
name replaced by `func`. Every pair carries its function as `group` (and its `kind`); evaluations
put both in their per-example columns, so the statistics resample a function's pairs together.
Real data: BigCloneBench through `telly.loaders.load_bigclonebench` (group: the first function's idx).

Baselines the book shows beside every clone figure (`clone_baselines`), each on the test pairs with
a 95% CI over functions: always "clone" (`CloneDetectionTask.trivial_baseline`), a bag-of-tokens
logistic regression that sees only side B (`second_side_baseline`: what the label leaks into one
side) and token overlap (`token_overlap_baseline`: Jaccard overlap of the two sides' token sets,
thresholded where it maximises F1 on the valid split).
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
from telly.batching import batches
from telly.corpus import VariantError, load_corpus, make_mutant, make_variant, sample, split, token_kinds
from telly.features import masked_mean
from telly.loaders import load_bigclonebench
from telly.metrics import clone_scores
from telly.profiles import Profile
from telly.stats import bootstrap_ci
from telly.tasks import Batch, Evaluation, Task, TaskConfig, TaskData, TaskModel, task_data, tokenize


@dataclass(frozen=True)
class ClonePairExample:
    code_a: str
    code_b: str
    label: int  # 1 = clone
    id: str
    group: str  # the function the pair was built from: pairs of one function are resampled together
    kind: str  # PAIR_KINDS (offline data), or "bigclonebench"


PAIR_KINDS = {"variant": 1, "same-edit": 1, "other-function": 0, "different-edits": 0}  # kind -> label
MUTANT_TRIES = 8  # seeds tried for a second near miss at a different site


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
    """dense(kH -> H), tanh, dropout, linear(H -> 2) over the pair's features of the layer-normalised
    pooled vectors u, v: [u; v] (k = 2) or [u; v; |u - v|; u * v] (k = 4)."""

    def __init__(self, hidden_size: int, dropout: float, pair_features: str = "compare") -> None:
        super().__init__()
        self.pair_features = pair_features
        self.dense = nn.Linear(PAIR_FEATURES[pair_features] * hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, 2)
        # The clone probability from which a pair is called a clone (CloneDetectionTask.calibrate).
        self.register_buffer("threshold", torch.tensor(0.5))

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        # Per-vector normalisation: a decoder's outlier dimension would otherwise saturate the tanh.
        first, second = (F.layer_norm(x, x.shape[-1:]) for x in (first, second))
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
    """One clone and one non-clone pair per function that has a variant (see the module docstring)."""
    rng = random.Random(seed)
    variants = {}
    for index, fn in enumerate(functions):
        try:
            variants[index] = _anonymise(make_variant(fn.code, seed=seed + index))
        except VariantError:
            continue
    near_misses = {index: _near_misses(functions[index].code_without_doc, seed + index) for index in sorted(variants)}
    # Another function's variant comes from the functions without two near misses, the population
    # whose own variants the "variant" clones show: side B's kind of code must not hint at the label.
    plain = [index for index, edits in near_misses.items() if edits is None]
    by_module = defaultdict(list)
    for index in plain:
        by_module[functions[index].module].append(index)
    pairs = []
    for index, edits in near_misses.items():
        fn = functions[index]
        group = f"{fn.path}:{fn.qualname}"
        if edits is not None:
            edited, edited_variant, other_edit_variant = edits
            pairs += [ClonePairExample(edited, edited_variant, 1, f"{group}/same-edit", group, "same-edit"),
                      ClonePairExample(edited, other_edit_variant, 0, f"{group}/different-edits", group,
                                       "different-edits")]
            continue
        original = _anonymise(fn.code_without_doc)
        pairs.append(ClonePairExample(original, variants[index], 1, f"{group}/variant", group, "variant"))
        others = [i for i in by_module[fn.module] if i != index] or [i for i in plain if i != index]
        if not others:
            continue
        other = rng.choice(others)
        pairs.append(ClonePairExample(original, variants[other], 0,
                                      f"{group}/other-function:{functions[other].qualname}", group, "other-function"))
    return pairs


def _near_misses(code: str, seed: int) -> tuple[str, str, str] | None:
    """(near miss A, a variant of A, a variant of near miss B), anonymised, where A and B are one
    function with one behaviour-changing edit each at different sites; None when the function
    admits fewer than two such edits or no variant of them."""
    try:
        first = make_mutant(code, seed=seed)
        second = next((mutant for mutant in (make_mutant(code, seed=seed + 1 + k) for k in range(MUTANT_TRIES))
                       if mutant != first), None)
        if second is None:
            return None
        return (_anonymise(first), _anonymise(make_variant(first, seed=seed)),
                _anonymise(make_variant(second, seed=seed)))
    except VariantError:
        return None


class CloneDetectionTask(Task):
    name = "clone-detection"
    metric = "f1"
    metrics = ("f1", "precision", "recall")
    config_class = CloneDetectionConfig
    head_lr_scale = 20.0  # the classifier starts random: at the backbone's rate it barely moves in a laptop run

    def load_data(self, profile: Profile, seed: int = 0) -> TaskData:
        sizes = profile.split_sizes(self.name, (profile.training.train_examples, profile.training.valid_examples,
                                                 profile.training.test_examples))
        if self.config.data_path:
            splits = {name: [ClonePairExample(r.code_a, r.code_b, r.label, f"{r.idx_a}/{r.idx_b}", r.idx_a,
                                              "bigclonebench")
                             for r in load_bigclonebench(self.config.data_path, name, limit=size)]
                      for name, size in sizes.items()}
            source = f"BigCloneBench at {self.config.data_path}"
        else:
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

    def chance_loss(self, data: TaskData, profile: Profile) -> float:
        """Cross-entropy of predicting the training split's clone rate for every pair (its entropy)."""
        rate = float(np.mean([e.label for e in data.train]))
        return float(-(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))) if 0 < rate < 1 else 0.0

    def collate(self, examples: Sequence[ClonePairExample], tokenizer, profile: Profile) -> Batch:
        return {
            "inputs": {"code_a": tokenize(tokenizer, [e.code_a for e in examples], profile.inputs.max_code_tokens),
                       "code_b": tokenize(tokenizer, [e.code_b for e in examples], profile.inputs.max_code_tokens)},
            "labels": torch.tensor([e.label for e in examples], dtype=torch.long),
        }

    def evaluate(self, model: CloneDetectionModel, examples: Sequence[ClonePairExample], tokenizer,
                 profile: Profile, batch_size: int) -> Evaluation:
        device = next(model.parameters()).device
        probabilities = []
        for chunk in batches(examples, batch_size):
            inputs = self.collate(chunk, tokenizer, profile)["inputs"]
            inputs = {name: {k: v.to(device) for k, v in field.items()} for name, field in inputs.items()}
            probabilities.append(model.logits(inputs).float().softmax(-1)[:, 1].cpu())
        probability = torch.cat(probabilities).numpy()
        per_example = {"prediction": (probability >= float(model.head.threshold)).astype(int),
                       "clone_probability": probability, **pair_columns(examples)}
        return Evaluation(self.score(per_example), per_example)

    def calibrate(self, model: CloneDetectionModel, valid: Evaluation) -> Evaluation:
        """Set the head's threshold to the clone probability with the best F1 on the valid pairs
        (`best_cut`); the valid evaluation at that threshold, extras["calibration"] = {"threshold",
        "f1_at_half" (valid F1 at 0.5, for comparison)}."""
        probability, label = valid.per_example["clone_probability"], valid.per_example["label"]
        threshold, _ = best_cut(probability, label)
        model.head.threshold.fill_(threshold)
        at_half = clone_scores({"prediction": (probability >= 0.5).astype(int), "label": label})["f1"]
        per_example = valid.per_example | {"prediction": (probability >= threshold).astype(int)}
        return Evaluation(self.score(per_example), per_example,
                          valid.extras | {"calibration": {"threshold": threshold, "f1_at_half": at_half}})

    def trivial_baseline(self, data: TaskData, profile: Profile) -> Evaluation:
        """The strongest model-free answer: string matching (`token_overlap_baseline`, its threshold
        chosen on the valid split). Always answering "clone" is weaker wherever clones and
        non-clones differ in their token overlap, and stays in `clone_baselines` for reference."""
        overlap = token_overlap_baseline(data, samples=0)
        per_example = {k: v for k, v in overlap["test_per_example"].items() if k != "overlap"}
        return Evaluation(self.score(per_example), per_example, extras={
            "name": overlap["name"], "description": overlap["description"], "threshold": overlap["threshold"]})


def always_clone(data: TaskData, profile: Profile, seed: int = 0) -> dict:
    """Answering "clone" for every test pair: recall 1, precision the share of clones (a `baseline_result`)."""
    return baseline_result("always clone", 'answers "clone" for every pair: recall 1, precision the share of '
                                           "clones among the test pairs", np.ones(len(data.test), dtype=int), data,
                           samples=profile.statistics.bootstrap_samples, seed=seed)


def pair_columns(examples: Sequence[ClonePairExample]) -> dict[str, np.ndarray]:
    """The per-example columns every clone evaluation carries beside its predictions: label, and
    group and kind (so the statistics resample a function's pairs together)."""
    return {"label": np.array([e.label for e in examples], dtype=int),
            "group": np.array([e.group for e in examples], dtype=object),
            "kind": np.array([e.kind for e in examples], dtype=object)}


_FALLBACK_TOKEN = re.compile(r"\w+|[^\w\s]")  # identifiers/numbers, or one punctuation character


def code_token_set(code: str) -> frozenset[str]:
    """The distinct tokens of `code`: Python tokens (`telly.corpus.token_kinds`) when it tokenizes
    as Python, otherwise words and single punctuation characters (e.g. Java from BigCloneBench)."""
    try:
        return frozenset(token.text for token in token_kinds(code))
    except ValueError:
        return frozenset(_FALLBACK_TOKEN.findall(code))


def token_jaccard(code_a: str, code_b: str) -> float:
    """|A & B| / |A | B| over the two sides' token sets (1.0 when both are empty)."""
    a, b = code_token_set(code_a), code_token_set(code_b)
    return len(a & b) / len(a | b) if a | b else 1.0


def token_overlap_baseline(data: TaskData, seed: int = 0, samples: int = 1000) -> dict:
    """String matching: a pair is called a clone when the Jaccard overlap of its token sets reaches
    a threshold, chosen to maximise F1 on the valid split (ties: the lowest such threshold). A
    `baseline_result` with "threshold", "valid_f1" and the test pairs' "overlap" column."""
    _require_splits(data, ("valid", "test"), "token_overlap_baseline")
    valid_overlap = np.array([token_jaccard(e.code_a, e.code_b) for e in data.valid])
    threshold, valid_f1 = best_cut(valid_overlap, np.array([e.label for e in data.valid]))
    test_overlap = np.array([token_jaccard(e.code_a, e.code_b) for e in data.test])
    return baseline_result(
        "token overlap (Jaccard)", f"calls a pair a clone when the Jaccard overlap of its two sides' token sets is "
                                   f"at least {threshold:.2f} (the cut with the best F1 on the valid split)",
        (test_overlap >= threshold).astype(int), data, samples=samples, seed=seed, columns={"overlap": test_overlap},
        threshold=threshold, valid_f1=valid_f1)


def best_cut(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(cut, F1): the cut with the best F1 when "score >= cut" calls a clone, over every distinct
    score (ties: the lowest such cut), and that F1."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    candidates = np.unique(scores)
    f1 = [clone_scores({"prediction": (scores >= cut).astype(int), "label": labels})["f1"] for cut in candidates]
    best = int(np.argmax(f1))
    return float(candidates[best]), float(f1[best])


SECOND_SIDE_C = (0.01, 0.1, 1.0, 10.0)  # inverse regularisation strengths tried on the valid split


def second_side_baseline(data: TaskData, seed: int = 0, samples: int = 1000) -> dict:
    """What the label leaks into one side: a logistic regression on the bag of tokens (present or
    not, `code_token_set`) of side B alone, fitted on the train split's pairs, its regularisation
    chosen by F1 on the valid split. Near chance when the data are built right. A
    `baseline_result` with "C" and "valid_f1"."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    _require_splits(data, ("train", "valid", "test"), "second_side_baseline")
    labels = np.array([e.label for e in data.train])
    if len(set(labels)) < 2:
        raise ValueError(f"second_side_baseline: the train split needs clones and non-clones, got labels "
                         f"{sorted(set(labels))} ({data.source})")
    vectorizer = CountVectorizer(analyzer=lambda code: sorted(code_token_set(code)), binary=True)
    train = vectorizer.fit_transform([e.code_b for e in data.train])
    valid, test = (vectorizer.transform([e.code_b for e in split]) for split in (data.valid, data.test))
    valid_labels = np.array([e.label for e in data.valid])
    fitted = [LogisticRegression(C=c, max_iter=2000).fit(train, labels) for c in SECOND_SIDE_C]
    valid_f1 = [clone_scores({"prediction": model.predict(valid), "label": valid_labels})["f1"] for model in fitted]
    best = int(np.argmax(valid_f1))
    return baseline_result(
        "second function only (bag of tokens)", "a logistic regression on which tokens occur in the second function "
        "of each pair, never seeing the first; fitted on the train pairs, regularisation chosen on the valid split",
        fitted[best].predict(test), data, samples=samples, seed=seed, C=SECOND_SIDE_C[best],
        valid_f1=float(valid_f1[best]))


def clone_baselines(data: TaskData, profile: Profile, seed: int = 0) -> dict:
    """The references the book shows beside every clone-detection figure, on the test pairs with
    95% CIs over functions (`profile.statistics.bootstrap_samples` resamples). Returns {"baselines":
    {"always-clone", "second-side", "token-overlap": baseline_result}, "test_kinds": {kind:
    {"pairs", "clones"}}, "functions" (test groups), "source"}."""
    samples = profile.statistics.bootstrap_samples
    baselines = {"always-clone": always_clone(data, profile, seed),
                 "second-side": second_side_baseline(data, seed=seed, samples=samples),
                 "token-overlap": token_overlap_baseline(data, seed=seed, samples=samples)}
    kinds = {kind: {"pairs": sum(e.kind == kind for e in data.test),
                    "clones": sum(e.kind == kind and e.label == 1 for e in data.test)}
             for kind in sorted({e.kind for e in data.test})}
    return {"baselines": baselines, "test_kinds": kinds, "functions": len({e.group for e in data.test}),
            "source": data.source}


def baseline_result(name: str, description: str, predictions: np.ndarray, data: TaskData, *, samples: int,
                    seed: int, columns: dict[str, np.ndarray] | None = None, **details) -> dict:
    """A clone baseline's test predictions scored: {"name", "description", "test" (F1, precision,
    recall, accuracy), "test_ci" ({metric: {value, low, high}}, a function's pairs resampled together),
    "clone_share_by_kind" (share of each kind's pairs called a clone), "test_per_example"
    (prediction, label, group, kind and `columns`), "source", **details}."""
    per_example = {"prediction": np.asarray(predictions, dtype=int), **pair_columns(data.test), **(columns or {})}
    scored = {"prediction": per_example["prediction"], "label": per_example["label"]}
    return {"name": name, "description": description, "test": _scores_and_accuracy(scored),
            "test_ci": bootstrap_ci(scored, _scores_and_accuracy, clusters=per_example["group"], samples=samples,
                                    seed=seed) if samples else None,  # 0 samples: the scores alone
            "clone_share_by_kind": {kind: float(per_example["prediction"][per_example["kind"] == kind].mean())
                                    for kind in sorted(set(per_example["kind"]))},
            "test_per_example": per_example, "source": data.source, **details}


def _scores_and_accuracy(columns: dict[str, np.ndarray]) -> dict[str, float]:
    # Accuracy beside F1: a classifier can leak the label (accuracy above the majority class) at an
    # F1 below always answering "clone".
    return clone_scores(columns) | {"accuracy": float(np.mean(columns["prediction"] == columns["label"]))}


def _require_splits(data: TaskData, names: Sequence[str], who: str) -> None:
    for name in names:
        if not data.split(name):
            raise ValueError(f"{who}: the {name} split is empty ({data.source})")
