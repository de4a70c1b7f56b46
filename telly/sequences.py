"""Sequence layout of the generation tasks and of decoding: how a source and its target become one
sequence of token ids, and the prefix-LM mask and positions the backbone reads it with.

Encoders read [CLS] source [SEP] [CLS] target [SEP]; decoders read a fixed prompt
(`Prompt`: instruction line, source, separator line) then the target and EOS. The source attends
bidirectionally (encoders) or causally (decoders); the target attends to the source and causally
to itself. `telly.tasks.generation` trains on this layout and `telly.decoding` decodes with it; the
reasons for the layout are in `telly.tasks.generation`'s docstring.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

IGNORE = -100  # label of positions that carry no loss (source, padding)


@dataclass(frozen=True)
class Prompt:
    """How a decoder reads one task: an instruction line, the source, a separator line; the target
    follows on the next line and ends with EOS. one_line: the answer is a single line, so decoding
    stops at the first line break (line completion)."""

    instruction: str
    separator: str
    one_line: bool = False

    def text(self, source: str) -> str:
        """Everything the model reads before the target, as one string."""
        return f"{self.instruction}\n{source}\n{self.separator}\n"


def special_ids(tokenizer) -> dict[str, int | None]:
    """Token ids around source and target: BERT/RoBERTa wrap the source in CLS..SEP, start the
    target with CLS (bos) and end it with SEP (eos); a decoder's target ends with its EOS and
    starts after its prompt (bos None)."""
    if tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None:
        return {"source_start": tokenizer.cls_token_id, "source_end": tokenizer.sep_token_id,
                "bos": tokenizer.cls_token_id, "eos": tokenizer.sep_token_id}
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has neither CLS/SEP nor an EOS token")
    return {"source_start": None, "source_end": None, "bos": None, "eos": tokenizer.eos_token_id}


def framing(tokenizer, prompt: Prompt | None) -> tuple[list[int], list[int]]:
    """(ids before the source, ids after it) of what the model reads before the target; the last id
    after it is the start token, whose output predicts the first target token. Encoders: [CLS] and
    [SEP, CLS] (the prompt is ignored); decoders: the prompt's instruction line and separator line."""
    ids = special_ids(tokenizer)
    if ids["source_start"] is not None:
        return [ids["source_start"]], [ids["source_end"], ids["bos"]]
    if prompt is None:
        raise ValueError(f"{type(tokenizer).__name__} has no CLS/SEP framing: a decoder needs a Prompt")
    before, after = _token_ids(tokenizer, [f"{prompt.instruction}\n", f"\n{prompt.separator}\n"])
    if not after:
        raise ValueError(f"the separator of {prompt!r} tokenizes to nothing")
    return before, after


def source_ids(tokenizer, texts: Sequence[str], max_tokens: int, truncate: str = "right",
               prompt: Prompt | None = None) -> list[list[int]]:
    """Each source as the model reads it before the target (see `framing`), ending with the start
    token; the source is cut so that the row without its start token holds at most max_tokens.
    truncate="left" keeps the end of the source (line completion needs the lines before the cursor)."""
    if truncate not in ("right", "left"):
        raise ValueError(f"truncate must be 'right' or 'left', got {truncate!r}")
    before, after = framing(tokenizer, prompt)
    room = max_tokens - len(before) - len(after) + 1
    if room < 1:
        raise ValueError(f"max source tokens {max_tokens} leaves no room for text "
                         f"({len(before) + len(after) - 1} go to the framing)")
    rows = []
    for tokens in _token_ids(tokenizer, texts):
        tokens = tokens[-room:] if truncate == "left" else tokens[:room]
        rows.append([*before, *tokens, *after])
    return rows


def _token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    # Full length first, so that left truncation keeps the end. Marking transformers' "longer than
    # the model's maximum" warning as already given keeps it quiet: we cut to length ourselves.
    getattr(tokenizer, "deprecation_warnings", {})["sequence-length-is-longer-than-the-specified-maximum"] = True
    return tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]


def collate_pairs(tokenizer, sources: Sequence[str], targets: Sequence[str], *, max_source_tokens: int,
                  max_target_tokens: int, truncate: str = "right", prompt: Prompt | None = None) -> dict:
    """Teacher-forcing batch: each row is the framed source (`source_ids`, ending with the start
    token) then the target, right-padded; labels are the target followed by EOS (at most
    max_target_tokens, counted from the start token) at the positions that predict them, IGNORE
    elsewhere. source_length counts the row's tokens before the start token."""
    eos = special_ids(tokenizer)["eos"]
    readings = source_ids(tokenizer, sources, max_source_tokens, truncate, prompt)
    rows, label_rows = [], []
    for reading, tgt in zip(readings, _token_ids(tokenizer, targets)):
        rows.append(reading + tgt[:max_target_tokens - 1])
        label_rows.append([IGNORE] * (len(reading) - 1) + [*tgt, eos][:max_target_tokens])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (row, label_row) in enumerate(zip(rows, label_rows)):
        input_ids[i, :len(row)] = torch.tensor(row)
        attention_mask[i, :len(row)] = 1
        labels[i, :len(row)] = torch.tensor(label_row)
    source_length = torch.tensor([len(r) - 1 for r in readings], dtype=torch.long)
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
    """The boolean (B, 1, Q, K) mask as the model's attention implementation wants it (boolean for
    SDPA, additive for eager), built by transformers' public masking_utils from `allowed`."""
    from transformers.masking_utils import create_bidirectional_mask

    batch, _, queries, keys = allowed.shape
    dtype = next(model.parameters()).dtype
    # Only the shapes, dtype and device of these are read: queries from the first, keys from the mask.
    embeds = torch.zeros(batch, queries, 1, dtype=dtype, device=allowed.device)
    every_key = torch.ones(batch, keys, dtype=torch.long, device=allowed.device)
    return create_bidirectional_mask(config=model.config, inputs_embeds=embeds, attention_mask=every_key,
                                     and_mask_function=lambda b, h, q, kv: allowed[b, 0, q, kv])


def position_offset(model: nn.Module) -> int:
    """RoBERTa numbers positions from padding_idx + 1; BERT, GPT-2 and Llama from 0."""
    padding_idx = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    return padding_idx + 1 if padding_idx is not None else 0


def prefix_lm_pre_hook(module: nn.Module, args, kwargs, *, bidirectional_source: bool):
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
