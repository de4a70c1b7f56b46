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


def movement_curve(before: np.ndarray, after: np.ndarray) -> list[dict]:
    """Per layer: debiased CKA and RSA between the two models' pooled states, and the movement,
    1 - the lower of the two (the more cautious reading)."""
    return [row | {"movement": 1.0 - min(row[m] for m in MEASURES)} for row in layer_similarity(before, after, MEASURES)]


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
