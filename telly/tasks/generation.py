"""The generation base of the three generation tasks: sequence layout, masks, model, task.

Why a prefix-LM with shared weights (UniXcoder style) and not a warm-started EncoderDecoderModel
-------------------------------------------------------------------------------------------------
For an encoder backbone the source and the target run through the *same* L blocks in one sequence
[source ; target]: source tokens attend to every source token (bidirectional), target tokens attend
to the whole source and causally to the target before them. This is how UniXcoder itself
fine-tunes for summarization and generation, so the paper's Telly-K figures came from exactly this
model, and:

* "Freeze the bottom K blocks of both stacks" holds by construction: the encoder stack and the
  decoder stack are the same modules, so `telly.freezing.freeze_bottom(model, k)` freezes both and
  its parameter report is exact. A
  warm-started EncoderDecoderModel would add randomly initialised cross-attention inside every
  decoder block, and Telly-K would have to either freeze random weights or leave part of each
  "frozen" block trainable.
* The frozen-prefix cache covers the frozen blocks completely: with teacher forcing the whole
  sequence is fixed, so the output of embeddings + blocks 0..K-1 is a fixed function of the
  example. The trainer's `telly.prefix_cache` calls `backbone(**inputs)`; a forward pre-hook on the
  backbone turns our `source_length` input into the prefix-LM mask, so the generic cache builds the
  right states, and `GenerationModel.encode` runs blocks K..L-1 on them with the same mask.
* One stack of L blocks costs about half of an encoder plus a decoder on a 2-core CPU, and the
  parameter count stays the backbone's (the paper's 125.93M at the UniXcoder shape).

Decoder backbones (GPT-2, Llama, SmolLM2) are their own causal LM: causal mask everywhere, logits
from the tied input embeddings (the pre-trained LM head, no new parameters), loss on the target
tokens only. Each task reads the source through a fixed prompt (`PROMPTS`):

    <instruction line>\n<source>\n<separator line>\n<target><EOS>

e.g. "Summarize this function in one sentence.\n{code}\nSummary:\n{summary}<|im_end|>" for
SmolLM2, whose EOS is the chat end-of-turn token <|im_end|> (BOS <|im_start|> is never added;
padding reuses EOS, masked out). The separator's final newline is the start token: its output
predicts the first target token, as [CLS] does before an encoder's target. The three parts are
tokenized apart and concatenated, so truncating the source (from the right, or from the left for
line completion) never cuts the instruction or the separator. Sequences are right-padded with
explicit position ids 0..n-1, so a row's positions never depend on its batch; decoding keeps the
padded prefix in the KV cache under the attention mask and numbers each new token after its own
row's prefix (`telly.decoding`), which is what left padding would give without shifting rows.

Metrics (`telly.metrics`) and decoding (`telly.decoding`) live beside this module; a task subclass
says which metrics it reports.
"""
from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from telly.backbones import Backbone
from telly.decoding import generate
from telly.metrics import degenerate_report
from telly.prefix_cache import PrefixStates, run_top
from telly.profiles import Profile
from telly.sequences import (
    IGNORE,
    Prompt,
    attention_bias,
    collate_pairs,
    prefix_lm_mask,
    prefix_lm_pre_hook,
    special_ids,
)
from telly.tasks import Batch, Evaluation, Task, TaskData, TaskModel

EXAMPLE_OUTPUTS = 5  # predictions kept in an evaluation's extras (Evaluation.extras) for the book
DEGENERATE_METRICS = ("empty_share", "most_common_share", "degenerate")


@dataclass(frozen=True)
class GenerationExample:
    """One source -> target pair (code -> summary, docstring + signature -> body, context -> line)."""

    source: str
    target: str
    id: str


# The fixed prompt of each generation task for decoder backbones (encoders read [CLS] source [SEP]).
PROMPTS = {
    "code-summarization": Prompt("Summarize this function in one sentence.", "Summary:"),
    "code-generation": Prompt("Write the body of this function.", "Body:"),
    "code-completion": Prompt("Write the next line of this code.", "Next line:", one_line=True),
}


# ------------------------------------------------------------------------------ model


class LMHead(nn.Module):
    """Hidden states -> vocabulary logits. Encoders get BERT's MLM-style transform (new, trained)
    and a bias over output weights tied to the input embeddings; decoders use their own tied
    embeddings, or a trainable copy of them when the checkpoint's LM head is not tied."""

    def __init__(self, hidden_size: int, embedding: nn.Embedding, *, transform: bool, tied: bool) -> None:
        super().__init__()
        vocab = embedding.weight.shape[0]
        self.transform = (nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.LayerNorm(hidden_size))
                          if transform else nn.Identity())
        if transform:  # start as "nearest input embedding" rather than a random projection
            with torch.no_grad():
                self.transform[0].weight.copy_(torch.eye(hidden_size))
                self.transform[0].bias.zero_()
        self.bias = nn.Parameter(torch.zeros(vocab)) if transform else None
        self.output = None
        if not tied:
            self.output = nn.Linear(hidden_size, vocab, bias=False)
            with torch.no_grad():
                self.output.weight.copy_(embedding.weight)

    def forward(self, hidden: torch.Tensor, embedding_weight: torch.Tensor) -> torch.Tensor:
        weight = self.output.weight if self.output is not None else embedding_weight
        return F.linear(self.transform(hidden), weight, self.bias)


class GenerationModel(TaskModel):
    """A backbone run as a prefix-LM (encoders) or a prompted causal LM (decoders), plus an LM head.
    prompt: how a decoder reads the task (required for decoders; encoders ignore it)."""

    def __init__(self, backbone: Backbone, prompt: Prompt | None = None) -> None:
        if backbone.kind == "decoder" and prompt is None:
            raise ValueError(f"{backbone.name} is a decoder: GenerationModel needs the task's Prompt")
        embedding = backbone.model.get_input_embeddings()
        tied = backbone.kind == "encoder" or bool(getattr(backbone.config, "tie_word_embeddings", False))
        head = LMHead(backbone.hidden_size, embedding, transform=backbone.kind == "encoder", tied=tied)
        super().__init__(backbone, head)
        self.bidirectional_source = backbone.kind == "encoder"
        self.specials = special_ids(backbone.tokenizer)
        self.prompt = prompt if backbone.kind == "decoder" else None
        self.head_note = ("output weights tied to the input embeddings" if tied else
                          "output weights: a trainable copy of the input embeddings (the checkpoint's "
                          "untied LM head is not part of the base model)")
        self.backbone.register_forward_pre_hook(
            partial(prefix_lm_pre_hook, bidirectional_source=self.bidirectional_source), with_kwargs=True)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden, self.backbone.get_input_embeddings().weight)

    def encode(self, inputs, source_length: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden states, attention mask) of [source ; target]; cached prefix states
        (`telly.prefix_cache.PrefixStates`) run only blocks K..L-1, under the same mask."""
        inputs = self.memoised(inputs)
        if not isinstance(inputs, PrefixStates):
            # Mask and positions built here, not by the pre-hook: peft's wrapper calls forward directly.
            _, kwargs = prefix_lm_pre_hook(self.backbone, (), dict(inputs),
                                            bidirectional_source=self.bidirectional_source)
            return self.backbone(**kwargs).last_hidden_state, inputs["attention_mask"]
        if source_length is None:
            raise ValueError("cached prefix states need the batch's source_length")
        mask = attention_bias(self.backbone, prefix_lm_mask(inputs.attention_mask, source_length,
                                                            bidirectional_source=self.bidirectional_source))
        return run_top(self.backbone, inputs.hidden, inputs.depth, mask=mask), inputs.attention_mask

    def forward(self, batch: Batch) -> torch.Tensor:
        hidden, _ = self.encode(batch["inputs"]["sequence"], batch.get("source_length"))
        labels = batch["labels"][:, :hidden.shape[1]]
        # Labels at position p name the token at p + 1 (the next token), so no shift is needed.
        scored = labels != IGNORE
        return F.cross_entropy(self.logits(hidden[scored]).float(), labels[scored])


# ------------------------------------------------------------------------------ task base


class GenerationTask(Task):
    """What the three generation tasks share: model, batching, decoding and evaluation.

    A subclass sets `name`, `metric`, `metrics` (ending with DEGENERATE_METRICS), `config_class`,
    `truncate_source`, `trivial_answer`, and defines `load_data`, `per_example_scores(references,
    predictions)` (numeric columns, one row per example) and `trivial_prediction(example)` (the
    model-free answer of `trivial_baseline`); its metrics from the columns are its entry in
    `telly.metrics.TASK_SCORES`."""

    truncate_source: ClassVar[str] = "right"
    trivial_answer: ClassVar[tuple[str, str]]  # (name, description) of the model-free answer

    @property
    def prompt(self) -> Prompt:
        """How a decoder backbone reads this task (`PROMPTS`); encoders read [CLS] source [SEP]."""
        return PROMPTS[self.name]

    def has_zero_shot(self, backbone: Backbone) -> bool:
        """A decoder's own LM head, prompted, already answers the task; an encoder's new LM head does not."""
        return backbone.kind == "decoder"

    def build_model(self, backbone: Backbone) -> GenerationModel:
        return GenerationModel(backbone, self.prompt)

    def collate(self, examples: Sequence[GenerationExample], tokenizer, profile: Profile) -> Batch:
        return collate_pairs(tokenizer, [e.source for e in examples], [e.target for e in examples],
                             max_source_tokens=profile.inputs.max_code_tokens, max_target_tokens=profile.generation.max_target_tokens,
                             truncate=self.truncate_source, prompt=self.prompt)

    def evaluate(self, model: GenerationModel, examples: Sequence[GenerationExample], tokenizer,
                 profile: Profile, batch_size: int) -> Evaluation:

        started = time.perf_counter()
        predictions = generate(model, tokenizer, [e.source for e in examples],
                               max_source_tokens=profile.inputs.max_code_tokens,
                               max_new_tokens=profile.generation.max_target_tokens, num_beams=profile.generation.num_beams,
                               batch_size=batch_size, truncate=self.truncate_source, show_progress=True)
        decode_seconds = time.perf_counter() - started
        per_example = self.scored_columns(examples, predictions)
        # decode_seconds rides along with the metrics (a float, outside `metrics` and the CIs),
        # so the record keeps decoding time apart from the epochs' train_seconds.
        return Evaluation(self.score(per_example) | {"decode_seconds": decode_seconds}, per_example, extras={
            "decode_seconds": decode_seconds,
            "decoding": {"num_beams": profile.generation.num_beams, "max_new_tokens": profile.generation.max_target_tokens},
            "degenerate": degenerate_report(predictions),
            "examples": [{"id": e.id, "source": e.source, "reference": e.target, "prediction": p}
                         for e, p in list(zip(examples, predictions))[:EXAMPLE_OUTPUTS]],
            "head": model.head_note,
        })

    def scored_columns(self, examples: Sequence[GenerationExample], predictions: Sequence[str]) -> dict[str, np.ndarray]:
        """Per-example columns: prediction, reference and the task's scores. References are scored
        as written, never re-spelled through the model's tokenizer: what it cannot write (capitals,
        for an uncased one) is the model's loss."""
        references = [e.target for e in examples]
        return {"prediction": np.array(predictions, dtype=object), "reference": np.array(references, dtype=object),
                **self.per_example_scores(references, list(predictions))}

    def trivial_baseline(self, data: TaskData, profile: Profile) -> Evaluation:
        name, description = self.trivial_answer
        predictions = [self.trivial_prediction(e) for e in data.test]
        per_example = self.scored_columns(data.test, predictions)
        return Evaluation(self.score(per_example), per_example, extras={"name": name, "description": description})

    @abstractmethod
    def trivial_prediction(self, example: GenerationExample) -> str:
        """The model-free answer for one example (see `telly.tasks.Task.trivial_baseline`)."""

    @abstractmethod
    def per_example_scores(self, references: list[str], predictions: list[str]) -> dict[str, np.ndarray]:
        """Numeric columns, one row per example (each task defines its own)."""

