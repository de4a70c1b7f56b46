"""Choosing the freeze depth K before training, from how far each layer moves in a short pilot.

Telly-auto (`telly.methods.TellyAuto`) fine-tunes a copy of the whole model for a share of the
first epoch, then compares every layer of the copy with the pre-trained model on the validation
inputs: `movement_curve` gives per layer 1 - the lower of debiased CKA and RSA (RQ2's measures, from
`telly.similarity`), and `deepest_still` picks the deepest K such that every layer at or below the
output of block K-1 moved less than the threshold. Freezing the embeddings and blocks 0..K-1 fixes
exactly those layers (layer 0 is the embeddings' output, layer i block i-1's), so K is the deepest
freeze the pilot says the model would not have used. At least the top block always trains.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch

from telly.backbones import Backbone
from telly.features import block_outputs, masked_mean
from telly.similarity import layer_similarity

MEASURES = ("cka_debiased", "rsa")
# The gradient selector's share of the busiest block's relative gradient norm under which a block counts
# as quiet. Not yet set on MiniLM's laptop runs (issue 23 asks for that before any SmolLM2 run).
GRADIENT_THRESHOLD = 0.5


@torch.no_grad()
def pooled_layers(backbone: Backbone, batches: Iterable[Mapping[str, torch.Tensor]]) -> np.ndarray:
    """(L+1, n, d): every layer's mean-pooled states of every row of `batches` (tokenizer outputs of
    one text field each, run in eval mode)."""
    was_training = backbone.model.training
    backbone.model.eval()
    layers: list[list[np.ndarray]] = []
    for inputs in batches:
        states = block_outputs(backbone, dict(inputs))
        pooled = [masked_mean(state, inputs["attention_mask"]).cpu().numpy() for state in states]
        layers = [[p] for p in pooled] if not layers else [kept + [p] for kept, p in zip(layers, pooled)]
    backbone.model.train(was_training)
    return np.stack([np.concatenate(rows) for rows in layers])


def movement_curve(before: np.ndarray | Sequence[np.ndarray], after: np.ndarray | Sequence[np.ndarray]) -> list[dict]:
    """Per layer: debiased CKA and RSA between the two models' pooled states, and the movement,
    1 - the lower of the two (the more cautious reading)."""
    return [row | {"movement": 1.0 - min(row[m] for m in MEASURES)} for row in layer_similarity(before, after, MEASURES)]


def dominant_dimensions(states: np.ndarray, count: int) -> np.ndarray:
    """(L+1, count): per layer, the `count` columns of `states` (L+1, n, d) with the largest mean square
    over the rows, the largest first. Linear CKA weighs a column by its variance and cosine RSA by its
    size, so a few huge columns (massive activations, in decoders such as SmolLM2) can decide both alone."""
    if not 0 < count < states.shape[-1]:
        raise ValueError(f"count must be in 1..{states.shape[-1] - 1} (the columns of a layer but one), got {count}")
    return np.argsort(-np.square(states).mean(axis=1), axis=1, kind="stable")[:, :count]


def magnitude_share(states: np.ndarray, dims: np.ndarray) -> list[float]:
    """Per layer, the share of the states' summed squares that the columns `dims[layer]` hold."""
    squares = np.square(states).sum(axis=1)
    return [float(q[d].sum() / max(q.sum(), 1e-30)) for q, d in zip(squares, dims, strict=True)]


def movement_without(before: np.ndarray, after: np.ndarray, dims: np.ndarray) -> list[dict]:
    """`movement_curve` with the columns `dims[layer]` of each layer left out of both models' states."""
    keep = [np.setdiff1d(np.arange(before.shape[-1]), d) for d in dims]
    return movement_curve([layer[:, k] for layer, k in zip(before, keep, strict=True)],
                          [layer[:, k] for layer, k in zip(after, keep, strict=True)])


def deepest_still(curve: Sequence[Mapping], threshold: float) -> int:
    """K: the deepest depth whose frozen layers (0..K) all moved less than `threshold`, at most L-1;
    -1 (freeze nothing) when even the embeddings' output moved."""
    movements = [row["movement"] for row in sorted(curve, key=lambda row: row["layer"])]
    still = 0
    while still < len(movements) and movements[still] < threshold:
        still += 1
    return min(still - 1, len(movements) - 2)


def piloted(backbone: Backbone, model: torch.nn.Module) -> Backbone:
    """`backbone` with the pilot's copy of its weights (same tokenizer, name and kind)."""
    return replace(backbone, model=model)


class GradientNorms:
    """A pilot's other signal, in the spirit of AutoFreeze: per block, the mean over the pilot's steps
    of the gradient norm relative to the weight norm (read by hooks as each gradient is accumulated,
    so the training step itself is untouched). `remove()` takes the hooks off."""

    def __init__(self, layers: Sequence[torch.nn.Module]) -> None:
        self.steps: dict[int, list[float]] = {i: [] for i in range(len(layers))}
        self._sums = dict.fromkeys(self.steps, 0.0)  # this step's squared gradient norm so far, per block
        self._seen = dict.fromkeys(self.steps, 0)  # and how many of the block's gradients it holds
        self._handles = [parameter.register_post_accumulate_grad_hook(self._hook(index, layer))
                         for index, layer in enumerate(layers) for parameter in layer.parameters()]

    def _hook(self, index: int, layer: torch.nn.Module):
        count = sum(1 for _ in layer.parameters())

        def add(parameter: torch.Tensor) -> None:
            self._sums[index] += float(parameter.grad.float().pow(2).sum())
            self._seen[index] += 1
            if self._seen[index] == count:  # the block's every gradient is in: one step's relative norm
                weight = sum(float(p.detach().float().pow(2).sum()) for p in layer.parameters()) ** 0.5
                self.steps[index].append(self._sums[index] ** 0.5 / max(weight, 1e-12))
                self._sums[index], self._seen[index] = 0.0, 0
        return add

    def curve(self) -> list[float]:
        """Per block, the mean relative gradient norm over the steps, as a share of the largest block's."""
        means = [float(np.mean(values)) if values else 0.0 for values in self.steps.values()]
        top = max(means) if means and max(means) > 0 else 1.0
        return [m / top for m in means]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def deepest_quiet(shares: Sequence[float], threshold: float) -> int:
    """K by the gradient signal: the deepest depth whose blocks 0..K-1 all drew less than `threshold`
    of the busiest block's relative gradient norm (0: none did), at most L-1."""
    quiet = 0
    while quiet < len(shares) and shares[quiet] < threshold:
        quiet += 1
    return min(quiet, len(shares) - 1)
