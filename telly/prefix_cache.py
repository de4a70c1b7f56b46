"""Frozen-prefix cache: run the frozen bottom of the network once, train the top from its output.

With Telly-K the embeddings and blocks 0..K-1 are a fixed function of the input, so their output
(the input of block K) is computed once over the training data and every epoch runs only blocks
K..L-1. The paper's Telly still runs the frozen blocks forward on every batch of every epoch.

The one semantic difference: the cache is built in eval mode, so the frozen blocks apply no
dropout, while uncached Telly-K training runs them in train mode (dropout on). `telly finetune
--no-cache` trains the uncached way; the book compares the two on the same seed.

Evaluation reuses the frozen prefix too (`PrefixMemo`): in eval mode the bottom K blocks give each
validation or test row the same states every epoch, so they are computed on a row's first sight
and only blocks K..L-1 run afterwards (exact: no dropout in eval mode either way).

Storage keeps only real tokens (rows are packed by the attention mask). Under the profile's
`cache_memory_mb` budget the states stay in memory in the model's dtype (exact); above it (or
when allocating memory fails) they spill to float16 memory-mapped shards on disk, one file per
text field, and a message says so.
"""
from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from telly.backbones import find_layers, is_causal
from telly.progress import progress_bar


@dataclass
class PrefixStates:
    """The output of the frozen embeddings + blocks 0..depth-1 for a batch of one text field."""

    hidden: torch.Tensor  # (B, T, H), right-padded with zeros
    attention_mask: torch.Tensor  # (B, T)
    depth: int  # K: the first block that still has to run

    def to(self, device) -> PrefixStates:
        return PrefixStates(self.hidden.to(device), self.attention_mask.to(device), self.depth)


class _Stop(Exception):
    """Raised from a hook to end a forward pass once the prefix output is captured."""


def run_prefix(model: nn.Module, inputs: dict[str, torch.Tensor], depth: int) -> torch.Tensor:
    """Hidden states entering block `depth` (= output of embeddings + blocks 0..depth-1).

    Works for any architecture: a pre-hook on block `depth` captures its input and stops the pass.
    """
    layers = find_layers(model)
    if not 0 <= depth < len(layers):
        raise ValueError(f"prefix depth must be in 0..{len(layers) - 1}, got {depth}")
    captured: list[torch.Tensor] = []

    def capture(_module, args, kwargs):
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _Stop

    handle = layers[depth].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        model(**inputs)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured[0]


def run_top(model: nn.Module, hidden: torch.Tensor, depth: int, attention_mask: torch.Tensor | None = None, *,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Last hidden states from running blocks depth..L-1 (and a decoder's final norm) on `hidden`.

    The one way telly runs the top of a network. `attention_mask` (B, T) builds the model's own
    mask: bidirectional for BERT/RoBERTa-style encoders, causal for GPT-2 and Llama-style decoders
    (rotary position embeddings computed per pass); `mask` instead passes a prepared 4D mask (the
    prefix-LM of `telly.tasks.generation`). Rows must be right-padded so that positions are 0..T-1.
    """
    from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

    if (attention_mask is None) == (mask is None):
        raise ValueError("run_top needs exactly one of attention_mask (B, T) and mask (a prepared 4D mask)")
    layers = find_layers(model)
    position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
    # Both builders are transformers' public masking_utils, which each model's own forward calls too.
    if mask is None and (getattr(model.config, "is_decoder", False) or is_causal(model)):
        mask = create_causal_mask(config=model.config, inputs_embeds=hidden, attention_mask=attention_mask,
                                  cache=None, position_ids=position_ids)
    elif mask is None:
        mask = create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=attention_mask)
    extra: dict = {}
    if not hasattr(model, "embeddings"):  # decoders (GPT-2, Llama) take positions in every block
        extra["position_ids"] = position_ids
        if hasattr(model, "rotary_emb"):  # Llama family: rotary embeddings are computed per pass
            extra["position_embeddings"] = model.rotary_emb(hidden, position_ids=position_ids)
    for layer in layers[depth:]:
        hidden = layer(hidden, attention_mask=mask, **extra)
        if isinstance(hidden, tuple):  # older block implementations return (states, ...)
            hidden = hidden[0]
    final_norm = getattr(model, "ln_f", None) or getattr(model, "norm", None)
    if isinstance(final_norm, nn.Module):
        hidden = final_norm(hidden)
    return hidden


class PrefixMemo:
    """Frozen-prefix states of evaluation rows, computed on a row's first sight and reused.

    `states(backbone, inputs)` turns a tokenized batch of one text field into `PrefixStates`:
    rows seen before come from memory, the others run embeddings + blocks 0..depth-1 as one
    sub-batch (eval mode, no grad). A row is keyed by its real tokens and its other per-row
    inputs (a generation row's source length), so the same text in another batch or split hits.
    Rows past `memory_mb` are computed again whenever they are seen (exact, only slower).
    """

    def __init__(self, depth: int, memory_mb: float) -> None:
        self.depth, self.budget = depth, memory_mb * 2**20
        self.rows: dict[bytes, torch.Tensor] = {}
        self.nbytes = 0
        self.hits = self.misses = 0

    @torch.no_grad()
    def states(self, backbone: nn.Module, inputs: dict[str, torch.Tensor]) -> PrefixStates:
        mask = inputs["attention_mask"]
        lengths = mask.sum(1).tolist()
        keys = [_row_key(inputs, row, length) for row, length in enumerate(lengths)]
        found = {row: self.rows[key] for row, key in enumerate(keys) if key in self.rows}
        missing = [row for row in range(len(keys)) if row not in found]
        self.hits, self.misses = self.hits + len(found), self.misses + len(missing)
        if missing:
            computed = run_prefix(backbone, {k: v[missing] for k, v in inputs.items()}, self.depth)
            for position, row in enumerate(missing):
                found[row] = computed[position, :lengths[row]]
                size = found[row].numel() * found[row].element_size()
                if self.nbytes + size <= self.budget:
                    self.rows[keys[row]], self.nbytes = found[row].clone(), self.nbytes + size
        first = found[0]
        hidden = first.new_zeros(len(keys), mask.shape[1], first.shape[-1])
        for row, states in found.items():
            hidden[row, :states.shape[0]] = states
        return PrefixStates(hidden, mask, self.depth)

    def describe(self) -> dict:
        return {"depth": self.depth, "rows": len(self.rows), "megabytes": round(self.nbytes / 2**20, 1),
                "hits": self.hits, "misses": self.misses}


def _row_key(inputs: dict[str, torch.Tensor], row: int, length: int) -> bytes:
    """One row's identity: its real tokens' ids (and token types ...) and its per-row scalars."""
    parts = []
    for name in sorted(inputs):
        values = inputs[name][row]
        parts.append(name.encode() + (values[:length] if values.dim() else values).cpu().numpy().tobytes())
    return b"|".join(parts)


class PrefixCache:
    """Packed prefix states of every (example, text field); `states(indices)` re-pads a batch."""

    def __init__(self, depth: int, fields: dict[str, _FieldStore], storage: str, note: str,
                 tmp: tempfile.TemporaryDirectory | None = None) -> None:
        self.depth = depth
        self.fields = fields
        self.storage = storage  # "memory" or "disk"
        self.note = note  # why this storage was chosen (goes into the run record)
        self._tmp = tmp  # the disk shards' folder, removed by close()

    def __len__(self) -> int:
        return len(next(iter(self.fields.values())))

    def states(self, indices: Sequence[int], dtype: torch.dtype) -> dict[str, PrefixStates]:
        return {name: store.batch(indices, self.depth, dtype) for name, store in self.fields.items()}

    def nbytes(self) -> int:
        return sum(store.nbytes() for store in self.fields.values())

    def describe(self) -> dict:
        return {"depth": self.depth, "storage": self.storage, "note": self.note,
                "megabytes": round(self.nbytes() / 2**20, 1), "examples": len(self)}

    def close(self) -> None:
        if self._tmp is not None:
            self.fields = {}
            self._tmp.cleanup()
            self._tmp = None


class _FieldStore:
    """All examples' states for one text field, packed: rows[offsets[i]:offsets[i+1]]."""

    def __init__(self, rows, offsets: np.ndarray) -> None:
        self.rows = rows  # torch tensor (memory) or np.memmap float16 (disk), shape (tokens, H)
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def nbytes(self) -> int:
        return int(self.rows.nbytes) if isinstance(self.rows, np.ndarray) else self.rows.numel() * self.rows.element_size()

    def batch(self, indices: Sequence[int], depth: int, dtype: torch.dtype) -> PrefixStates:
        lengths = [int(self.offsets[i + 1] - self.offsets[i]) for i in indices]
        hidden = torch.zeros(len(indices), max(lengths), self.rows.shape[1], dtype=dtype)
        mask = torch.zeros(len(indices), max(lengths), dtype=torch.long)
        for row, (i, length) in enumerate(zip(indices, lengths)):
            chunk = self.rows[self.offsets[i]:self.offsets[i + 1]]
            hidden[row, :length] = torch.from_numpy(np.array(chunk)) if isinstance(chunk, np.ndarray) else chunk
            mask[row, :length] = 1
        return PrefixStates(hidden, mask, depth)


def build_prefix_cache(
    model: nn.Module,
    examples: Sequence,
    collate: Callable[[Sequence], dict],
    depth: int,
    *,
    batch_size: int,
    memory_mb: float,
    device: torch.device | str = "cpu",
    disk_dir: str | Path | None = None,
    show_progress: bool = True,
) -> PrefixCache:
    """Run embeddings + blocks 0..depth-1 once over `examples` (eval mode, no grad) and keep the
    real tokens' states. `collate(examples)` gives the task's batch; every entry of its "inputs"
    dict is one text field. Spills to float16 disk shards when the estimate exceeds `memory_mb`
    or memory runs out."""
    was_training = model.training
    model.eval()
    token_counts = _token_counts(examples, collate, batch_size)
    hidden_size = int(getattr(model.config, "hidden_size", None) or model.config.n_embd)
    dtype = next(model.parameters()).dtype
    estimate_mb = sum(token_counts.values()) * hidden_size * torch.finfo(dtype).bits / 8 / 2**20
    storage, note = "memory", f"{estimate_mb:.0f} MB fits the {memory_mb:.0f} MB budget"
    if estimate_mb > memory_mb:
        storage, note = "disk", (f"{estimate_mb:.0f} MB exceeds the {memory_mb:.0f} MB memory budget "
                                 "(cache_memory_mb): float16 shards on disk")
    try:
        cache = _fill(model, examples, collate, depth, batch_size, token_counts, hidden_size,
                      storage, note, dtype, device, disk_dir, show_progress)
    except (MemoryError, torch.OutOfMemoryError) as exc:
        if storage == "disk":
            raise
        note = f"ran out of memory holding {estimate_mb:.0f} MB in memory ({type(exc).__name__}): float16 shards on disk"
        cache = _fill(model, examples, collate, depth, batch_size, token_counts, hidden_size,
                      "disk", note, dtype, device, disk_dir, show_progress)
    if cache.storage == "disk":
        print(f"telly: frozen-prefix cache: {cache.note}", file=sys.stderr)
    model.train(was_training)
    return cache


def _token_counts(examples, collate, batch_size) -> dict[str, int]:
    counts: dict[str, int] = {}
    for start in range(0, len(examples), batch_size):
        for name, inputs in collate(examples[start:start + batch_size])["inputs"].items():
            counts[name] = counts.get(name, 0) + int(inputs["attention_mask"].sum())
    return counts


@torch.no_grad()
def _fill(model, examples, collate, depth, batch_size, token_counts, hidden_size, storage, note,
          dtype, device, disk_dir, show_progress) -> PrefixCache:
    tmp = None
    rows: dict = {}
    if storage == "disk":
        tmp = tempfile.TemporaryDirectory(prefix="telly-prefix-", dir=disk_dir)
        for name, count in token_counts.items():
            rows[name] = np.lib.format.open_memmap(Path(tmp.name) / f"{name}.npy", mode="w+",
                                                   dtype=np.float16, shape=(count, hidden_size))
    else:
        rows = {name: torch.empty(count, hidden_size, dtype=dtype) for name, count in token_counts.items()}
    lengths: dict[str, list[int]] = {name: [] for name in token_counts}
    cursor = dict.fromkeys(token_counts, 0)
    starts = range(0, len(examples), batch_size)
    for start in progress_bar(starts, desc=f"prefix cache (blocks 0..{depth - 1})", disable=not show_progress, leave=False):
        for name, inputs in collate(examples[start:start + batch_size])["inputs"].items():
            inputs = {k: v.to(device) for k, v in inputs.items()}
            hidden = run_prefix(model, inputs, depth)
            mask = inputs["attention_mask"].bool()
            packed = hidden[mask].cpu()  # real tokens only, row-major: example by example
            lengths[name].extend(mask.sum(1).tolist())
            end = cursor[name] + packed.shape[0]
            if storage == "disk":
                rows[name][cursor[name]:end] = packed.to(torch.float16).numpy()
            else:
                rows[name][cursor[name]:end] = packed
            cursor[name] = end
    fields = {}
    for name in token_counts:
        if storage == "disk":
            rows[name].flush()
            rows[name] = np.load(Path(tmp.name) / f"{name}.npy", mmap_mode="r")
        fields[name] = _FieldStore(rows[name], np.concatenate([[0], np.cumsum(lengths[name])]).astype(np.int64))
    return PrefixCache(depth, fields, storage, note, tmp)
