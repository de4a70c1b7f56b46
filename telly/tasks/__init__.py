"""Downstream tasks for RQ3 (Telly-K fine-tuning): one module per task, one interface for all.

The interface (peft-like: a config dataclass with the behaviour beside it)
---------------------------------------------------------------------------
A task module defines

* ``XConfig(TaskConfig)``: a frozen dataclass of the task's own settings. ``TaskConfig`` gives every
  task ``data_path`` (None = build the data offline from the embedded corpus, ``telly.corpus``;
  a path = real data read through ``telly.loaders``).
* ``XModel(TaskModel)``: an ``nn.Module`` = backbone + head. ``.backbone`` is the HF base model
  (so ``telly.freezing.freeze_bottom`` finds its embeddings and blocks), ``.head`` the task head.
  ``forward(batch) -> loss`` (a scalar tensor): the trainer only ever calls ``model(batch)``, so
  the same code runs under DDP / ``accelerate launch``. Everything that goes through the backbone
  must go through ``self.encode(batch["inputs"][name])``: that is how the trainer swaps in the
  frozen-prefix cache (``telly.prefix_cache``) without the task knowing.
* ``XTask(Task)``: the behaviour, with class attributes ``name`` (the registry name), ``metric``
  (the headline metric, higher is better), ``metrics`` (all metric names it reports),
  ``config_class``, and methods

  - ``load_data(profile, seed) -> TaskData``: train/valid/test lists of example dataclasses,
    sized by the profile (``train_examples`` ...), with a fingerprint of the data.
  - ``build_model(backbone) -> TaskModel`` (``backbone`` is a ``telly.backbones.Backbone``).
  - ``prepare(model, data, tokenizer, profile)``: fit what the fresh model takes from the training
    split before any score or step, as buffers of its head (default: nothing; code search: its
    standardisation statistics). The trainer calls it right after ``build_model``, on the
    pre-trained backbone in float32, once per data fingerprint: later runs on the same data read the
    stored buffers back (``telly.trainer``'s prepared/ document).
  - ``collate(examples, tokenizer, profile) -> Batch``: a dict whose ``"inputs"`` entry maps a
    name (e.g. "query", "code") to the tokenizer output for that text field (``input_ids``,
    ``attention_mask``, maybe ``token_type_ids``; right padding, one row per example, so a row's
    tokens never depend on the other rows), and whose other entries are tensors (labels ...).
  - ``evaluate(model, examples, tokenizer, profile, batch_size) -> Evaluation``: called by the
    trainer in eval mode under ``torch.no_grad()`` with the unwrapped model on its device.
    Returns per-example columns (numpy arrays of length n, e.g. reciprocal ranks, or predictions
    and labels) and the metrics computed from them by ``score``.
  - ``score(per_example) -> dict[str, float]``: metrics from per-example columns, the task's entry
    in ``telly.metrics.TASK_SCORES`` (so that reports score records without building a task). It must work on
    any resample of the rows: ``telly.stats.bootstrap_ci`` resamples rows and calls it to get 95%
    CIs, and ``telly.stats.paired_bootstrap`` compares two runs on the same test rows.
  - ``head_lr_scale`` (default 1.0): the head's learning rate is this times the backbone's; a
    randomly initialised classifier head uses more (clone detection: 20) so it learns something
    within a short budget.
  - ``zero_shot = True`` when the pre-trained model with its freshly built head is a meaningful
    baseline (code search: a mean-pooled bi-encoder needs no training); the trainer then also
    records the test metrics before fine-tuning. ``has_zero_shot(backbone)`` is what the trainer
    asks: ``zero_shot`` unless a task overrides it per backbone kind (generation: decoders only,
    whose own LM head, prompted, already answers).
  - ``trivial_baseline(data, profile) -> Evaluation``: what a model-free answer scores on
    ``data.test`` with the task's own ``score`` (summarization: the function's name split into
    words; generation: a body of ``pass``; completion: the previous line again; clone detection:
    always "clone"; code search: a lexical ranker), with ``extras = {"name", "description"}``.
    Fine-tuning that does not beat it has learned nothing the book can report.

``get_task(name, **config)`` returns a task instance from the registry ``TASKS`` (unknown names
raise ValueError listing the valid ones); modules are imported lazily.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from telly.backbones import Backbone
from telly.corpus import load_corpus, sample, split
from telly.metrics import score_function
from telly.prefix_cache import PrefixMemo, PrefixStates, run_top
from telly.profiles import Profile

# Registry name -> "module:TaskClass"; the three generation tasks share `telly.tasks.generation`.
TASKS: dict[str, str] = {
    "code-search": "telly.tasks.code_search:CodeSearchTask",
    "clone-detection": "telly.tasks.clone_detection:CloneDetectionTask",
    "code-summarization": "telly.tasks.code_summarization:CodeSummarizationTask",
    "code-generation": "telly.tasks.code_generation:CodeGenerationTask",
    "code-completion": "telly.tasks.code_completion:CodeCompletionTask",
}

Batch = dict[str, Any]  # {"inputs": {name: {"input_ids": ..., "attention_mask": ...}}, "labels": ...}


@dataclass(frozen=True)
class TaskConfig:
    """Settings every task shares; a task's own config subclasses this."""

    data_path: str | None = None  # None: offline data from the embedded corpus

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TaskData:
    """The three splits of a task's examples and what they were made from."""

    train: list
    valid: list
    test: list
    fingerprint: str  # changes whenever any example changes
    source: str  # "stdlib corpus <fingerprint>", or the real data path

    def split(self, name: str) -> list:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"unknown split {name!r}; expected train, valid or test")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "valid": len(self.valid), "test": len(self.test)}


@dataclass
class Evaluation:
    """Metrics on a split, and the per-example columns they were computed from (for CIs)."""

    metrics: dict[str, float]
    per_example: dict[str, np.ndarray] = field(default_factory=dict)
    extras: dict = field(default_factory=dict)  # what a run record keeps beside the metrics

    def __post_init__(self) -> None:
        lengths = {k: len(v) for k, v in self.per_example.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"per-example columns differ in length: {lengths}")

    def __len__(self) -> int:
        return len(next(iter(self.per_example.values()))) if self.per_example else 0


class TaskModel(nn.Module):
    """Backbone + head. Subclasses define `forward(batch) -> loss` and use `encode` for the backbone."""

    def __init__(self, backbone: Backbone, head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone.model  # the HF base model: freeze_bottom looks for this attribute
        self.head = head if head is not None else nn.Identity()
        self.kind = backbone.kind
        self.prefix_memo: PrefixMemo | None = None  # evaluation's frozen-prefix states (telly.prefix_cache)

    def encode(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden states (B, T, H), attention mask (B, T)) for one text field.

        `inputs` is the tokenizer output for the field, or a `telly.prefix_cache.PrefixStates`
        (the cached output of the frozen bottom K blocks): then only blocks K..L-1 run.
        """
        inputs = self.memoised(inputs)
        if isinstance(inputs, PrefixStates):
            return run_top(self.backbone, inputs.hidden, inputs.depth, inputs.attention_mask), inputs.attention_mask
        mask = inputs["attention_mask"]
        return self.backbone(**inputs).last_hidden_state, mask

    def memoised(self, inputs):
        """`inputs` as frozen-prefix states from `prefix_memo` when evaluating a cached Telly-K (the
        trainer sets the memo; in train mode, or without one, `inputs` unchanged)."""
        if self.prefix_memo is None or self.training or isinstance(inputs, PrefixStates):
            return inputs
        return self.prefix_memo.states(self.backbone, inputs)

    def forward(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must define forward(batch) -> loss")


class Task(ABC):
    """A downstream task: data, model, batching, loss (in the model) and evaluation."""

    name: ClassVar[str]
    metric: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]
    config_class: ClassVar[type[TaskConfig]] = TaskConfig
    zero_shot: ClassVar[bool] = False
    head_lr_scale: ClassVar[float] = 1.0

    def __init__(self, config: TaskConfig | None = None, **overrides) -> None:
        if config is None:
            names = {f.name for f in fields(self.config_class)}
            unknown = sorted(set(overrides) - names)
            if unknown:
                raise ValueError(f"task {self.name}: unknown setting(s) {unknown}; "
                                 f"valid: {sorted(names)}")
            config = self.config_class(**overrides)
        elif overrides:
            raise ValueError("pass either a config or keyword settings, not both")
        self.config = config

    def describe(self) -> dict:
        return {"task": self.name, "metric": self.metric, "config": self.config.to_dict()}

    def has_zero_shot(self, backbone: Backbone) -> bool:
        """Whether the pre-trained `backbone` with this task's fresh head is a baseline worth scoring."""
        return self.zero_shot

    @abstractmethod
    def load_data(self, profile: Profile, seed: int = 0) -> TaskData:
        ...

    @abstractmethod
    def build_model(self, backbone: Backbone) -> TaskModel:
        ...

    def prepare(self, model: TaskModel, data: TaskData, tokenizer, profile: Profile) -> None:
        """Fit what `model` takes from data.train before training, as buffers of its head: the trainer
        stores them per data fingerprint and reuses them in every run on the same data."""
        return None  # most tasks take nothing from the data

    def chance_loss(self, data: TaskData, profile: Profile) -> float | None:
        """The training loss of a model that ignores its input (None: too far from any trained loss to
        matter, as a language model's ln |vocabulary|). A run that ends there learned nothing."""
        return None

    def calibrate(self, model: TaskModel, valid: Evaluation) -> Evaluation:
        """Choose `model`'s decision settings (head buffers) on its valid-split evaluation, at the
        best epoch's weights; the valid evaluation under them, what was chosen in extras["calibration"]."""
        return valid  # most tasks decide nothing

    @abstractmethod
    def collate(self, examples: Sequence, tokenizer, profile: Profile) -> Batch:
        ...

    @abstractmethod
    def evaluate(self, model: TaskModel, examples: Sequence, tokenizer, profile: Profile,
                 batch_size: int) -> Evaluation:
        ...

    def score(self, per_example: dict[str, np.ndarray]) -> dict[str, float]:
        """The task's metrics from its per-example columns (`telly.metrics.TASK_SCORES`)."""
        return score_function(self.name)(per_example)

    @abstractmethod
    def trivial_baseline(self, data: TaskData, profile: Profile) -> Evaluation:
        """A model-free answer scored on data.test by `score`, extras {"name", "description"};
        a ValueError naming the missing field when the data lack what it needs."""


def get_task(name: str | Task, **config) -> Task:
    """A task instance by registry name (see TASKS), with optional config settings."""
    if isinstance(name, Task):
        return name
    try:
        target = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}") from None
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ValueError(f"task {name!r} is registered but its module {module_name} is not "
                         "installed in this checkout") from None
    return getattr(module, class_name)(**config)


# --- helpers the task modules share ---------------------------------------------------------

def corpus_examples(sizes: dict[str, int | None], seed: int, to_example) -> tuple[dict[str, list], str]:
    """One example per function sampled from each module-disjoint split of the embedded corpus,
    `sizes[split]` of them (None = all), and a description of the source."""
    corpus = load_corpus("stdlib")
    parts = split(corpus)
    splits = {name: [to_example(fn) for fn in sample(parts[name], size, seed=seed)]
              for name, size in sizes.items()}
    return splits, f"{corpus.source} corpus {corpus.fingerprint}"


def task_data(task: str, splits: dict[str, list], source: str) -> TaskData:
    """TaskData from the three splits, refusing an empty split with a message naming it."""
    for name, examples in splits.items():
        if not examples:
            raise ValueError(f"{task}: the {name} split is empty ({source})")
    return TaskData(**splits, fingerprint=fingerprint([*splits["train"], *splits["valid"], *splits["test"]]),
                    source=source)


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    """Right-padded, truncated token ids and attention mask for a list of texts."""
    encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
    return {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def sample_examples(functions: Sequence, n: int | None, build, seed: int = 0) -> list:
    """Up to n examples built from functions in a seeded random order (`build(fn)` may return None
    to skip one), returned in corpus order; stops early, so only what is kept gets built."""
    order = random.Random(seed).sample(range(len(functions)), len(functions))
    kept: list[tuple[int, object]] = []
    for index in order:
        if n is not None and len(kept) >= n:
            break
        example = build(functions[index])
        if example is not None:
            kept.append((index, example))
    return [example for _, example in sorted(kept, key=lambda pair: pair[0])]


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SUBWORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def identifier_words(text: str) -> list[str]:
    """Lower-cased sub-words of every identifier-like token of `text`: snake_case and camelCase
    split, digits apart (getHTTPResponse_2 -> get, http, response, 2)."""
    return [word.lower() for identifier in _IDENTIFIER.findall(text) for word in _SUBWORD.findall(identifier)]


def fingerprint(examples: Sequence) -> str:
    """A short content hash of a list of example dataclasses (order matters)."""
    digest = hashlib.sha256()
    for example in examples:
        row = asdict(example) if is_dataclass(example) else example
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]
