"""Generation under Telly-K: the model, batched decoding, the CodeXGLUE metrics, a shared task base.

Why a prefix-LM with shared weights (UniXcoder style) and not a warm-started EncoderDecoderModel
-------------------------------------------------------------------------------------------------
For an encoder backbone the source and the target run through the *same* L blocks in one sequence
[source ; target]: source tokens attend to every source token (bidirectional), target tokens attend
to the whole source and causally to the target before them. This is how UniXcoder itself
fine-tunes for summarization and generation, so the paper's Telly-K figures came from exactly this
model, and:

* "Freeze the bottom K blocks of both stacks" holds by construction: the encoder stack and the
  decoder stack are the same modules, so `telly.freezing.freeze_bottom(model, k)` freezes both and
  its parameter report is exact (`freeze_both_stacks` says so and returns that report). A
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

Decoder backbones (GPT-2, Llama, SmolLM2) use the same sequence layout with a causal mask
everywhere: a causal LM with the source as prompt, loss on target tokens only.

Metrics follow CodeXGLUE: smoothed sentence BLEU-4 for summarization (their bleu.py, reimplemented
here because no maintained library reproduces it), corpus BLEU (sacrebleu) and exact match for code
generation, exact match and edit similarity (rapidfuzz `fuzz.ratio`) for line completion. Degenerate
outputs (empty, all or mostly identical) are reported beside the scores, never silently scored.
"""
from __future__ import annotations

import math
import random
import re
import sys
import time
import xml.sax.saxutils
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from telly.backbones import Backbone, find_layers
from telly.freezing import FreezeReport, freeze_bottom
from telly.profiles import Profile
from telly.tasks import Batch, Evaluation, Task, TaskModel, batches

IGNORE = -100  # label of positions that carry no loss (source, padding)
EXAMPLE_OUTPUTS = 5  # predictions kept in an evaluation's extras (Evaluation.extras) for the book
# Flagged degenerate: at least this share of predictions empty (or looping), or more than this share one same string.
DEGENERATE_EMPTY_SHARE = 0.5
DEGENERATE_IDENTICAL_SHARE = 0.5


@dataclass(frozen=True)
class GenerationExample:
    """One source -> target pair (code -> summary, docstring + signature -> body, context -> line)."""

    source: str
    target: str
    id: str


# ------------------------------------------------------------------------------ sequence layout


def special_ids(tokenizer) -> dict[str, int | None]:
    """Token ids framing source and target: BERT/RoBERTa wrap the source in CLS..SEP and start the
    target with CLS and end it with SEP; GPT-style tokenizers use BOS (or EOS) / EOS."""
    wraps = tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None
    if wraps:
        return {"source_start": tokenizer.cls_token_id, "source_end": tokenizer.sep_token_id,
                "bos": tokenizer.cls_token_id, "eos": tokenizer.sep_token_id}
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has neither CLS/SEP nor an EOS token")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    return {"source_start": None, "source_end": None, "bos": bos, "eos": eos}


def source_ids(tokenizer, texts: Sequence[str], max_tokens: int, truncate: str = "right") -> list[list[int]]:
    """Token ids of each source, framed and cut to max_tokens; truncate="left" keeps the end
    (line completion needs the lines right before the cursor)."""
    if truncate not in ("right", "left"):
        raise ValueError(f"truncate must be 'right' or 'left', got {truncate!r}")
    ids = special_ids(tokenizer)
    framing = [i for i in (ids["source_start"], ids["source_end"]) if i is not None]
    room = max_tokens - len(framing)
    if room < 1:
        raise ValueError(f"max source tokens {max_tokens} leaves no room for text")
    encoded = _token_ids(tokenizer, texts)
    rows = []
    for tokens in encoded:
        tokens = tokens[-room:] if truncate == "left" else tokens[:room]
        if ids["source_start"] is not None:
            tokens = [ids["source_start"], *tokens, ids["source_end"]]
        rows.append(tokens or [ids["bos"]])
    return rows


def _token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    # Full length first, so that left truncation keeps the end. Marking transformers' "longer than
    # the model's maximum" warning as already given keeps it quiet: we cut to length ourselves.
    getattr(tokenizer, "deprecation_warnings", {})["sequence-length-is-longer-than-the-specified-maximum"] = True
    return tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]


def collate_pairs(tokenizer, sources: Sequence[str], targets: Sequence[str], *, max_source_tokens: int,
                  max_target_tokens: int, truncate: str = "right") -> Batch:
    """Teacher-forcing batch: each row is [source ; BOS target] right-padded, labels are the
    target followed by EOS (cut to max_target_tokens) at the target positions, IGNORE elsewhere."""
    ids = special_ids(tokenizer)
    sources_ids = source_ids(tokenizer, sources, max_source_tokens, truncate)
    rows, label_rows = [], []
    for src, tgt in zip(sources_ids, _token_ids(tokenizer, targets)):
        decoder_input = [ids["bos"], *tgt][:max_target_tokens]
        labels = [*tgt, ids["eos"]][:max_target_tokens]
        rows.append(src + decoder_input)
        label_rows.append([IGNORE] * len(src) + labels)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids["eos"]
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (row, label_row) in enumerate(zip(rows, label_rows)):
        input_ids[i, :len(row)] = torch.tensor(row)
        attention_mask[i, :len(row)] = 1
        labels[i, :len(row)] = torch.tensor(label_row)
    source_length = torch.tensor([len(s) for s in sources_ids], dtype=torch.long)
    return {"inputs": {"sequence": {"input_ids": input_ids, "attention_mask": attention_mask,
                                    "source_length": source_length}},
            "labels": labels, "source_length": source_length}


def prefix_lm_mask(attention_mask: torch.Tensor, source_length: torch.Tensor, *,
                   bidirectional_source: bool) -> torch.Tensor:
    """Boolean (B, 1, T, T) mask, True = may attend: real keys only; source queries see the whole
    source (bidirectional_source) or the source so far; target queries see the source and the
    target so far. Every position sees itself, so no softmax row is empty (padding rows)."""
    width = attention_mask.shape[1]
    position = torch.arange(width, device=attention_mask.device)
    causal = position[None, :] <= position[:, None]  # (query, key)
    in_source = position[None, :] < source_length[:, None]  # (B, T)
    allowed = causal.unsqueeze(0).expand(len(attention_mask), -1, -1).clone()
    if bidirectional_source:
        allowed |= in_source[:, None, :] & in_source[:, :, None]
    allowed &= attention_mask.bool()[:, None, :]
    allowed |= torch.eye(width, dtype=torch.bool, device=attention_mask.device)
    return allowed.unsqueeze(1)


def attention_bias(model: nn.Module, allowed: torch.Tensor) -> torch.Tensor:
    """The mask as the model's attention wants it: boolean for SDPA, additive for eager attention."""
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        return allowed
    dtype = next(model.parameters()).dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def position_offset(model: nn.Module) -> int:
    """RoBERTa numbers positions from padding_idx + 1; BERT, GPT-2 and Llama from 0."""
    padding_idx = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    return padding_idx + 1 if padding_idx is not None else 0


def _prefix_lm_pre_hook(module: nn.Module, args, kwargs, *, bidirectional_source: bool):
    """Turn a `source_length` input into the prefix-LM mask and positions (see the module docstring)."""
    if "source_length" not in kwargs:
        return None
    kwargs = dict(kwargs)
    source_length = kwargs.pop("source_length")
    kwargs.pop("token_type_ids", None)  # RoBERTa-style models may have a single token type
    attention_mask = kwargs["attention_mask"]
    kwargs["attention_mask"] = attention_bias(module, prefix_lm_mask(attention_mask, source_length,
                                                                     bidirectional_source=bidirectional_source))
    width = attention_mask.shape[1]
    kwargs["position_ids"] = (torch.arange(width, device=attention_mask.device) + position_offset(module)
                              ).unsqueeze(0).expand(len(attention_mask), -1)
    return args, kwargs


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
    """A backbone run as a prefix-LM (encoders) or a prompted causal LM (decoders), plus an LM head."""

    def __init__(self, backbone: Backbone) -> None:
        embedding = backbone.model.get_input_embeddings()
        tied = backbone.kind == "encoder" or bool(getattr(backbone.config, "tie_word_embeddings", False))
        head = LMHead(backbone.hidden_size, embedding, transform=backbone.kind == "encoder", tied=tied)
        super().__init__(backbone, head)
        self.bidirectional_source = backbone.kind == "encoder"
        self.specials = special_ids(backbone.tokenizer)
        self.head_note = ("output weights tied to the input embeddings" if tied else
                          "output weights: a trainable copy of the input embeddings (the checkpoint's "
                          "untied LM head is not part of the base model)")
        self.backbone.register_forward_pre_hook(
            partial(_prefix_lm_pre_hook, bidirectional_source=self.bidirectional_source), with_kwargs=True)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden, self.backbone.get_input_embeddings().weight)

    def encode(self, inputs, source_length: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden states, attention mask) of [source ; target]; cached prefix states
        (`telly.prefix_cache.PrefixStates`) run only blocks K..L-1, under the same mask."""
        from telly.prefix_cache import PrefixStates

        if not isinstance(inputs, PrefixStates):
            # Mask and positions built here, not by the pre-hook: peft's wrapper calls forward directly.
            _, kwargs = _prefix_lm_pre_hook(self.backbone, (), dict(inputs),
                                            bidirectional_source=self.bidirectional_source)
            return self.backbone(**kwargs).last_hidden_state, inputs["attention_mask"]
        if source_length is None:
            raise ValueError("cached prefix states need the batch's source_length")
        mask = attention_bias(self.backbone, prefix_lm_mask(inputs.attention_mask, source_length,
                                                            bidirectional_source=self.bidirectional_source))
        return run_top_blocks(self.backbone, inputs.hidden, mask, inputs.depth), inputs.attention_mask

    def forward(self, batch: Batch) -> torch.Tensor:
        hidden, _ = self.encode(batch["inputs"]["sequence"], batch.get("source_length"))
        labels = batch["labels"][:, :hidden.shape[1]]
        # Labels at position p name the token at p + 1 (the next token), so no shift is needed.
        scored = labels != IGNORE
        return F.cross_entropy(self.logits(hidden[scored]).float(), labels[scored])


def run_top_blocks(model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, depth: int) -> torch.Tensor:
    """Blocks depth..L-1 (and a decoder's final norm) on `hidden` under an explicit 4D mask."""
    extra: dict = {}
    if hasattr(model, "rotary_emb"):  # Llama family: rotary position embeddings per pass
        position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        extra = {"position_ids": position_ids,
                 "position_embeddings": model.rotary_emb(hidden, position_ids=position_ids)}
    for layer in find_layers(model)[depth:]:
        hidden = layer(hidden, attention_mask=mask, **extra)
        if isinstance(hidden, tuple):
            hidden = hidden[0]
    final_norm = getattr(model, "ln_f", None) or getattr(model, "norm", None)
    if isinstance(final_norm, nn.Module):
        hidden = final_norm(hidden)
    return hidden


def freeze_both_stacks(model: GenerationModel, k: int) -> FreezeReport:
    """Telly-K for generation: the encoder and decoder stacks are the same blocks (shared weights),
    so freezing the embeddings and blocks 0..k-1 once freezes both; the LM head stays trainable.
    Same contract and parameter report as `telly.freezing.freeze_bottom`."""
    if not isinstance(model, GenerationModel):
        raise TypeError(f"freeze_both_stacks expects a GenerationModel, got {type(model).__name__}")
    return freeze_bottom(model, k)


# ------------------------------------------------------------------------------ decoding


@torch.no_grad()
def generate_ids(model: GenerationModel, source_rows: Sequence[Sequence[int]], *, max_new_tokens: int,
                 num_beams: int = 1) -> list[list[int]]:
    """Greedy (num_beams=1) or beam search for each source, at most max_new_tokens tokens each
    (EOS included, then dropped). Beams are ranked by log-probability per generated token."""
    from transformers import DynamicCache

    if max_new_tokens < 1 or num_beams < 1:
        raise ValueError(f"max_new_tokens and num_beams must be >= 1, got {max_new_tokens}, {num_beams}")
    backbone = model.backbone
    device = next(model.parameters()).device
    bos, eos = model.specials["bos"], model.specials["eos"]
    pad = 0  # source padding is masked out: any id will do
    batch, width = len(source_rows), max(len(r) for r in source_rows)
    source = torch.full((batch, width), pad, dtype=torch.long, device=device)
    real = torch.zeros((batch, width), dtype=torch.long, device=device)
    for i, row in enumerate(source_rows):
        source[i, :len(row)] = torch.tensor(row, device=device)
        real[i, :len(row)] = 1
    length = real.sum(1)
    offset = position_offset(backbone)
    cache = DynamicCache(config=backbone.config)
    mask = attention_bias(backbone, prefix_lm_mask(real, length, bidirectional_source=model.bidirectional_source))
    positions = (torch.arange(width, device=device) + offset).unsqueeze(0).expand(batch, -1)
    backbone(input_ids=source, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)

    rows = batch * num_beams
    if num_beams > 1:
        cache.batch_repeat_interleave(num_beams)
        real, length = real.repeat_interleave(num_beams, 0), length.repeat_interleave(num_beams, 0)
    scores = torch.zeros(batch, num_beams, device=device)
    scores[:, 1:] = -math.inf  # all beams start identical: expand only the first
    scores = scores.view(-1)
    tokens = torch.full((rows, 1), bos, dtype=torch.long, device=device)
    generated = torch.zeros((rows, 0), dtype=torch.long, device=device)
    produced = torch.zeros(rows, dtype=torch.long, device=device)  # tokens up to and including EOS
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        keys = torch.cat([real, torch.ones((rows, step + 1), dtype=torch.long, device=device)], 1)
        step_mask = attention_bias(backbone, keys.bool()[:, None, None, :])
        hidden = backbone(input_ids=tokens, attention_mask=step_mask, position_ids=(length + step + offset)[:, None],
                          cache=cache, use_cache=True).last_hidden_state[:, -1]
        log_probs = F.log_softmax(model.logits(hidden).float(), dim=-1)
        log_probs[finished] = -math.inf
        log_probs[finished, eos] = 0.0  # a finished beam only pads with EOS, its score unchanged
        vocab = log_probs.shape[1]
        top_scores, top = (scores[:, None] + log_probs).view(batch, num_beams * vocab).topk(num_beams, dim=1)
        origin = (torch.arange(batch, device=device)[:, None] * num_beams + top // vocab).view(-1)
        token = (top % vocab).view(-1)
        if num_beams > 1:
            cache.reorder_cache(origin)
        generated, produced, finished = generated[origin], produced[origin], finished[origin]
        generated = torch.cat([generated, token[:, None]], 1)
        produced = produced + (~finished).long()
        finished = finished | (token == eos)
        scores, tokens = top_scores.view(-1), token[:, None]
        if bool(finished.all()):
            break
    normalised = (scores / produced.clamp(min=1)).view(batch, num_beams)
    best = normalised.argmax(1) + torch.arange(batch, device=device) * num_beams
    results = []
    for row in best.tolist():
        ids = generated[row, :produced[row]].tolist()
        results.append(ids[:-1] if ids and ids[-1] == eos else ids)
    return results


def generate(model: GenerationModel, tokenizer, sources: Sequence[str], *, max_source_tokens: int,
             max_new_tokens: int, num_beams: int = 1, batch_size: int = 32, truncate: str = "right",
             show_progress: bool = False) -> list[str]:
    """Decoded predictions for a list of sources (eval mode, no grad), in order."""
    was_training = model.training
    model.eval()
    predictions: list[str] = []
    chunks = list(batches(list(sources), batch_size))
    for chunk in tqdm(chunks, desc="decoding", disable=not show_progress, leave=False):
        rows = source_ids(tokenizer, chunk, max_source_tokens, truncate)
        for ids in generate_ids(model, rows, max_new_tokens=max_new_tokens, num_beams=num_beams):
            predictions.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    model.train(was_training)
    return predictions


# ------------------------------------------------------------------------------ metrics


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


# ------------------------------------------------------------------------------ task base


DEGENERATE_METRICS = ("empty_share", "most_common_share", "degenerate")


class GenerationTask(Task):
    """What the three generation tasks share: model, batching, decoding and evaluation.

    A subclass sets `name`, `metric`, `metrics` (ending with DEGENERATE_METRICS), `config_class`,
    `truncate_source`, and defines `load_data`, `per_example_scores(references, predictions)`
    (numeric columns, one row per example) and `quality(per_example)` (metrics from the columns)."""

    truncate_source: ClassVar[str] = "right"

    def build_model(self, backbone: Backbone) -> GenerationModel:
        return GenerationModel(backbone)

    def collate(self, examples: Sequence[GenerationExample], tokenizer, profile: Profile) -> Batch:
        return collate_pairs(tokenizer, [e.source for e in examples], [e.target for e in examples],
                             max_source_tokens=profile.max_code_tokens,
                             max_target_tokens=profile.max_target_tokens, truncate=self.truncate_source)

    def evaluate(self, model: GenerationModel, examples: Sequence[GenerationExample], tokenizer,
                 profile: Profile, batch_size: int) -> Evaluation:
        started = time.perf_counter()
        predictions = generate(model, tokenizer, [e.source for e in examples],
                               max_source_tokens=profile.max_code_tokens,
                               max_new_tokens=profile.max_target_tokens, num_beams=profile.num_beams,
                               batch_size=batch_size, truncate=self.truncate_source, show_progress=True)
        decode_seconds = time.perf_counter() - started
        # References are scored as the model's tokenizer can spell them (an uncased tokenizer
        # cannot produce capitals); with a cased byte-level tokenizer this changes nothing.
        references = [spelled(tokenizer, e.target) for e in examples]
        per_example = {"prediction": np.array(predictions, dtype=object),
                       "reference": np.array(references, dtype=object),
                       **self.per_example_scores(references, predictions)}
        # decode_seconds rides along with the metrics (a float, outside `metrics` and the CIs),
        # so the record keeps decoding time apart from the epochs' train_seconds.
        return Evaluation(self.score(per_example) | {"decode_seconds": decode_seconds}, per_example, extras={
            "decode_seconds": decode_seconds,
            "decoding": {"num_beams": profile.num_beams, "max_new_tokens": profile.max_target_tokens},
            "degenerate": degenerate_report(predictions),
            "examples": [{"id": e.id, "source": e.source, "reference": e.target, "prediction": p}
                         for e, p in list(zip(examples, predictions))[:EXAMPLE_OUTPUTS]],
            "head": model.head_note,
        })

    def score(self, per_example: dict[str, np.ndarray]) -> dict[str, float]:
        report = degenerate_report([str(p) for p in per_example["prediction"]])
        return self.quality(per_example) | {"empty_share": report["empty_share"],
                                            "most_common_share": report["most_common_share"],
                                            "degenerate": float(report["is_degenerate"])}

    def per_example_scores(self, references: list[str], predictions: list[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError  # pragma: no cover - each task defines its columns

    def quality(self, per_example: dict[str, np.ndarray]) -> dict[str, float]:
        raise NotImplementedError  # pragma: no cover - each task defines its metrics


def sample_examples(functions: Sequence, n: int | None, build, seed: int = 0) -> list[GenerationExample]:
    """Up to n examples built from functions in a seeded random order (`build(fn)` may return None
    to skip one), returned in corpus order; stops early, so only what is kept gets built."""
    order = random.Random(seed).sample(range(len(functions)), len(functions))
    kept: list[tuple[int, GenerationExample]] = []
    for index in order:
        if n is not None and len(kept) >= n:
            break
        example = build(functions[index])
        if example is not None:
            kept.append((index, example))
    return [example for _, example in sorted(kept, key=lambda pair: pair[0])]


def spelled(tokenizer, text: str) -> str:
    """`text` as the tokenizer writes it back (lower-cased by uncased tokenizers, [UNK] dropped)."""
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True).strip()


def example_outputs(records: Sequence[dict], n: int = 3) -> list[dict]:
    """A few test predictions beside their references for the book: from the best variant (highest
    headline metric) and the most frozen one, on the same test rows. `records` are finished
    fine-tuning records of one generation task and model (`telly.trainer.finetune`)."""
    if not records:
        raise ValueError("no records to take example outputs from")
    tasks = {r["task"] for r in records}
    if len(tasks) != 1:
        raise ValueError(f"example outputs compare variants of one task, got {sorted(tasks)}")
    best = max(records, key=lambda r: r["test"][r["metric"]])
    most_frozen = max(records, key=lambda r: r["freeze"] if r["method"] in ("telly", "full") else -2)
    chosen = [("best", best)] + ([("most frozen", most_frozen)] if most_frozen is not best else [])
    rows = []
    for role, record in chosen:
        columns = record["test_per_example"]
        for index, (reference, prediction) in enumerate(zip(columns["reference"][:n], columns["prediction"][:n])):
            rows.append({"variant": f"{role}: {_variant_name(record)}", "example": index,
                         f"{record['metric']}": record["test"][record["metric"]],
                         "degenerate": bool(record["test"].get("degenerate", 0.0)),
                         "reference": reference, "prediction": prediction})
    return rows


def _variant_name(record: dict) -> str:
    if record["method"] == "telly":
        return f"Telly-{record['freeze']}"
    return record["method"]
