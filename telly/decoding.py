"""Decoding: greedy or beam search for any task model with an LM head, with a KV cache.

The model is a `telly.tasks.generation.GenerationModel` (duck-typed: `backbone`, `logits`), laid out by
`telly.sequences`: its backbone runs the framed source once as
a prefix (bidirectional for encoders, causal for decoders), then one token per step against the
cache, starting from the row's start token ([CLS] for encoders, the prompt's final newline for
decoders); its `logits` give the next token's scores. Prefixes are right-padded and masked, and
each row's new tokens take the positions right after its own prefix, so a row decodes the same
alone or in any batch. `generate` decodes a list of sources in batches; with a one-line prompt
(line completion) a row also stops at its first line break and the text is cut there.
Decoding runs in float32 (on this project's CPU, bf16 autocast decoded more slowly).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from telly.batching import batches
from telly.progress import progress_bar
from telly.sequences import attention_bias, position_offset, prefix_lm_mask, source_ids


@torch.no_grad()
def generate_ids(model, source_rows: Sequence[Sequence[int]], *, max_new_tokens: int,
                 num_beams: int = 1, stop_ids: Sequence[int] = ()) -> list[list[int]]:
    """Greedy (num_beams=1) or beam search for each framed source (`source_ids`: each row ends with
    its start token), at most max_new_tokens tokens each (EOS included, then dropped). A token of
    stop_ids also ends a row but is kept. Beams are ranked by log-probability per generated token."""
    from transformers import DynamicCache

    if max_new_tokens < 1 or num_beams < 1:
        raise ValueError(f"max_new_tokens and num_beams must be >= 1, got {max_new_tokens}, {num_beams}")
    if min(len(r) for r in source_rows) < 1:
        raise ValueError("every source row needs at least its start token")
    backbone = model.backbone
    device = next(model.parameters()).device
    eos = model.specials["eos"]
    stops = torch.tensor([eos, *stop_ids], dtype=torch.long, device=device)
    pad = 0  # prefix padding is masked out: any id will do
    batch, width = len(source_rows), max(len(r) for r in source_rows) - 1
    source = torch.full((batch, width), pad, dtype=torch.long, device=device)
    real = torch.zeros((batch, width), dtype=torch.long, device=device)
    for i, row in enumerate(source_rows):
        source[i, :len(row) - 1] = torch.tensor(row[:-1], device=device)
        real[i, :len(row) - 1] = 1
    length = real.sum(1)
    offset = position_offset(backbone)
    cache = DynamicCache(config=backbone.config)
    if width:  # a prefix to cache (an encoder's [CLS] source [SEP], a decoder's prompt)
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
    tokens = torch.tensor([row[-1] for row in source_rows], dtype=torch.long, device=device)
    tokens = tokens.repeat_interleave(num_beams)[:, None]
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
        finished = finished | torch.isin(token, stops)
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


def generate(model, tokenizer, sources: Sequence[str], *, max_source_tokens: int,
             max_new_tokens: int, num_beams: int = 1, batch_size: int = 32, truncate: str = "right",
             show_progress: bool = False) -> list[str]:
    """Decoded predictions for a list of sources (eval mode, no grad), in order, each framed by the
    model's prompt (decoders); a one-line prompt cuts each prediction at its first line break."""
    was_training = model.training
    model.eval()
    prompt = model.prompt
    one_line = prompt is not None and prompt.one_line
    stop_ids = line_break_ids(tokenizer) if one_line else ()
    predictions: list[str] = []
    chunks = list(batches(list(sources), batch_size))
    for chunk in progress_bar(chunks, desc="decoding", disable=not show_progress, leave=False):
        rows = source_ids(tokenizer, chunk, max_source_tokens, truncate, prompt)
        for ids in generate_ids(model, rows, max_new_tokens=max_new_tokens, num_beams=num_beams, stop_ids=stop_ids):
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            predictions.append(text.split("\n", 1)[0].rstrip() if one_line else text)
    model.train(was_training)
    return predictions


def line_break_ids(tokenizer) -> list[int]:
    """Ids of every token whose text holds a line break (byte-level BPE merges them with code)."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return [i for i, text in enumerate(texts) if "\n" in text]
