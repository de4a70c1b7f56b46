"""Every layer's representations of a list of inputs from ONE forward pass, cached on disk.

`layer_features(backbone, texts, max_length=...)` runs the backbone once per batch with
`output_hidden_states=True`, which returns all L+1 hidden states (0 = the embeddings' output,
k = block k's output). Every state is the residual stream as its block leaves it: a pre-norm
decoder's (Llama, SmolLM2) last hidden state from transformers has the final norm applied and the
others do not, so the last block's output is taken with a forward hook before that norm (for a
post-norm encoder such as BERT the two are the same tensor). Layer-wise probing, RSA and CKA all
read these arrays: nothing ever runs L+1 truncated forward passes. Pooling is the mean over real
tokens (the attention mask), so padding never leaks into a representation. Token-level states
(optional) keep only real tokens, in float16, with the tokenizer's character offsets so that
word-level labels can be aligned to sub-tokens.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from telly.backbones import Backbone, cache_dir, find_layers
from telly.progress import progress_bar

# Bump when the extraction changes, so stale caches are never reused (2: the last state is the
# last block's output, before a decoder's final norm).
FEATURES_FORMAT = 2
POOLING = "mean"


@dataclass
class LayerFeatures:
    """All layers' representations of `n` inputs.

    pooled: (L+1, n, d) float32, mean over each input's real tokens; layer 0 = embeddings.
    tokens: when kept, (L+1, T, d) float16 states of every real token of every input, inputs
        concatenated in order (memory-mapped when read from the cache); else None.
    spans: (n, 2) int64 [start, end) rows of `tokens` that belong to each input.
    offsets: (T, 2) int32 character offsets [start, end) of each token in its input text
        (special tokens such as [CLS]/[SEP] have (0, 0)).
    lengths: (n,) int64 number of real tokens per input after truncation.
    key: the cache key (a content hash of the model, the inputs and the settings); None when
        computed with cache=False (hashing every weight is not free).
    """

    pooled: np.ndarray
    lengths: np.ndarray
    key: str | None
    tokens: np.ndarray | None = None
    spans: np.ndarray | None = None
    offsets: np.ndarray | None = None

    @property
    def num_layers(self) -> int:
        """L: the number of transformer blocks (there are L+1 hidden states)."""
        return self.pooled.shape[0] - 1

    def __len__(self) -> int:
        return self.pooled.shape[1]

    def token_states(self, i: int) -> np.ndarray:
        """(L+1, t_i, d) float16 states of input i's real tokens (needs keep_tokens=True)."""
        self._need_tokens()
        start, end = self.spans[i]
        return self.tokens[:, start:end]

    def token_offsets(self, i: int) -> np.ndarray:
        """(t_i, 2) character offsets of input i's real tokens in its text."""
        self._need_tokens()
        start, end = self.spans[i]
        return self.offsets[start:end]

    def _need_tokens(self) -> None:
        if self.tokens is None:
            raise ValueError("these features were computed without keep_tokens=True")


def model_fingerprint(backbone: Backbone) -> str:
    """Name, source and a cheap digest of the weights (so seeds and checkpoints never collide)."""
    digest = hashlib.sha256(f"{backbone.name}\0{backbone.source}\0".encode())
    with torch.no_grad():
        for name, tensor in backbone.model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            # Shape, a few leading values and the sum: different weights differ here in practice.
            head = flat[:64].to(torch.float64).cpu().numpy()
            total = float(flat.to(torch.float64).sum()) if flat.numel() else 0.0
            digest.update(f"{name}:{tuple(tensor.shape)}:{total!r}".encode())
            digest.update(head.tobytes())
    return digest.hexdigest()[:24]


def features_key(backbone: Backbone, texts: Sequence[str], max_length: int, mixed_precision: str = "no") -> str:
    precision = "" if mixed_precision == "no" else f"{mixed_precision}\0"  # float32 keys as before
    digest = hashlib.sha256(f"{FEATURES_FORMAT}\0{model_fingerprint(backbone)}\0{max_length}\0"
                            f"{POOLING}\0{len(texts)}\0{precision}".encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def _encode(backbone: Backbone, texts: list[str], max_length: int) -> dict:
    """Tokenise with right padding: real tokens keep positions 0..t-1 for encoders and decoders
    alike, and a causal model's real tokens never attend to the pads after them."""
    tokenizer = backbone.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        encoded = tokenizer(texts, truncation=True, max_length=max_length, padding=True,
                            return_tensors="pt", return_offsets_mapping=True)
    finally:
        tokenizer.padding_side = side
    return encoded


def _model_inputs(backbone: Backbone, encoded: dict, device: torch.device) -> dict:
    accepted = {"input_ids", "attention_mask"}
    if "token_type_ids" in encoded and getattr(backbone.config, "type_vocab_size", 0):
        accepted.add("token_type_ids")  # BERT/RoBERTa; decoders such as SmolLM2 take none
    return {k: v.to(device) for k, v in encoded.items() if k in accepted}


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(b, d) float32 mean of (b, t, d) states over the real tokens of `mask` (b, t): a batched
    matmul, with no (b, t, d) temporary."""
    weights = mask.float()[:, None, :]
    return torch.bmm(weights, hidden.float())[:, 0] / weights.sum(2).clamp(min=1)


def block_outputs(backbone: Backbone, inputs: dict) -> tuple[torch.Tensor, ...]:
    """The L+1 states (b, t, d) of one batch: the embeddings' output, then each block's output.
    transformers' hidden states, except the last: a pre-norm decoder returns it after its final
    norm, so the last block's output comes from a forward hook instead."""
    captured: list[torch.Tensor] = []

    def keep(module, args, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    hook = find_layers(backbone.model)[-1].register_forward_hook(keep)
    try:
        states = backbone.model(**inputs, output_hidden_states=True).hidden_states
    finally:
        hook.remove()
    if len(states) != backbone.num_layers + 1:
        raise RuntimeError(f"{backbone.name} returned {len(states)} hidden states, expected "
                           f"{backbone.num_layers + 1}")
    return (*states[:-1], captured[-1])


def _compute(backbone: Backbone, texts: list[str], max_length: int, batch_size: int,
             keep_tokens: bool, progress: bool) -> dict[str, np.ndarray]:
    model = backbone.model
    model.eval()
    device = next(model.parameters()).device
    num_states = backbone.num_layers + 1
    # Batch inputs of similar length together (less padding); results go back in input order.
    lengths = np.array([len(ids) for ids in backbone.tokenizer(
        texts, truncation=True, max_length=max_length)["input_ids"]], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    pooled = np.zeros((num_states, len(texts), backbone.hidden_size), dtype=np.float32)
    token_parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    batches = range(0, len(texts), batch_size)
    with torch.inference_mode():
        for start in progress_bar(batches, desc=f"features {backbone.name}", disable=not progress,
                          unit="batch"):
            index = order[start:start + batch_size]
            encoded = _encode(backbone, [texts[i] for i in index], max_length)
            hidden_states = block_outputs(backbone, _model_inputs(backbone, encoded, device))
            mask = encoded["attention_mask"].to(device)
            for layer, hidden in enumerate(hidden_states):
                pooled[layer, index] = masked_mean(hidden, mask).cpu().numpy()
            if keep_tokens:
                states = torch.stack(hidden_states).float()  # (L+1, b, t, d)
                offsets = encoded["offset_mapping"].numpy()
                for row, i in enumerate(index):
                    real = mask[row].bool().cpu()
                    token_parts[int(i)] = (states[:, row][:, real].half().cpu().numpy(),
                                           offsets[row][real.numpy()].astype(np.int32))
    result = {"pooled": pooled, "lengths": lengths}
    if keep_tokens:
        parts = [token_parts[i] for i in range(len(texts))]
        ends = np.cumsum([p[1].shape[0] for p in parts])
        result["spans"] = np.stack([ends - [p[1].shape[0] for p in parts], ends], axis=1)
        result["tokens"] = np.concatenate([p[0] for p in parts], axis=1)
        result["offsets"] = np.concatenate([p[1] for p in parts], axis=0)
    return result


def layer_features(backbone: Backbone, texts: Sequence[str], *, max_length: int,
                   batch_size: int = 32, keep_tokens: bool = False, cache: bool = True,
                   progress: bool = True, mixed_precision: str = "no") -> LayerFeatures:
    """Every layer's representation of each text, from one forward pass per batch.

    Args:
        backbone: a `telly.backbones.Backbone` (encoder or decoder; it is put in eval mode).
        texts: the inputs, each tokenised alone and truncated to `max_length` tokens.
        max_length: maximum tokens per input (special tokens included).
        batch_size: inputs per forward pass.
        keep_tokens: also keep token-level states (float16, real tokens only) and the tokenizer's
            character offsets; see `LayerFeatures.token_states` / `token_offsets`.
        cache: read/write `cache_dir()/features/<key>/`, keyed by a hash of the model (name,
            source incl. checkpoint, a digest of its weights), the texts, max_length and pooling.
        progress: show a tqdm bar over batches.
        mixed_precision: "bf16" runs the forward passes under bf16 autocast (pass the profile's
            setting), "no" in float32; the cache key tells the two apart.

    Returns: LayerFeatures with pooled (L+1, n, d) float32 mean-pooled states (layer 0 =
    embeddings).
    """
    texts = list(texts)
    if not texts:
        raise ValueError("layer_features needs at least one text")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts[{bad[0]}] is a {type(texts[bad[0]]).__name__}, expected str")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    autocast = precision_autocast(mixed_precision, next(backbone.model.parameters()).device)
    if not cache:
        with autocast or contextlib.nullcontext():
            return LayerFeatures(key=None, **_compute(backbone, texts, max_length, batch_size, keep_tokens, progress))
    key = features_key(backbone, texts, max_length, mixed_precision)
    folder = cache_dir() / "features" / key
    if (folder / "meta.json").exists():
        loaded = _read(folder, key, keep_tokens)
        if loaded is not None:
            return loaded
    with autocast or contextlib.nullcontext():
        arrays = _compute(backbone, texts, max_length, batch_size, keep_tokens, progress)
    _write(folder, arrays, {"model": backbone.name, "source": backbone.source, "n": len(texts),
                            "max_length": max_length, "pooling": POOLING, "mixed_precision": mixed_precision,
                            "keep_tokens": keep_tokens, "format": FEATURES_FORMAT})
    return LayerFeatures(key=key, **arrays)


MIXED_PRECISION = ("no", "bf16")


def precision_autocast(mixed_precision: str, device: torch.device) -> torch.autocast | None:
    """bf16 autocast on `device` for "bf16", None for "no" (float32); anything else is an error.
    The one place a profile's `mixed_precision` becomes a context (features and the trainer)."""
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {mixed_precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16) if mixed_precision == "bf16" else None


def _read(folder: Path, key: str, keep_tokens: bool) -> LayerFeatures | None:
    meta = json.loads((folder / "meta.json").read_text())
    if keep_tokens and not meta.get("keep_tokens"):
        return None  # cached without token states: recompute (and overwrite with them)
    arrays = {"pooled": np.load(folder / "pooled.npy"), "lengths": np.load(folder / "lengths.npy")}
    if keep_tokens:
        arrays["tokens"] = np.load(folder / "tokens.npy", mmap_mode="r")
        arrays["spans"] = np.load(folder / "spans.npy")
        arrays["offsets"] = np.load(folder / "offsets.npy")
    return LayerFeatures(key=key, **arrays)


def _write(folder: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write into a temporary folder and rename it into place: readers never see half a cache."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        (tmp / "meta.json").write_text(json.dumps(meta))
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
