"""Telly-K: freeze the embeddings and the bottom K transformer blocks, with exact parameter counts."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from telly.backbones import Backbone, find_embeddings, find_layers


@dataclass(frozen=True)
class FreezeReport:
    freeze: int
    num_layers: int
    trainable_parameters: int
    total_parameters: int

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_parameters / self.total_parameters

    def to_dict(self) -> dict:
        return asdict(self) | {"trainable_fraction": self.trainable_fraction}


def _parts(model_or_backbone: nn.Module | Backbone) -> tuple[nn.Module, nn.Module, nn.ModuleList]:
    """(module whose parameters are counted, its backbone, the backbone's blocks)."""
    if isinstance(model_or_backbone, Backbone):
        return model_or_backbone.model, model_or_backbone.model, model_or_backbone.layers
    root = model_or_backbone
    # A task model wraps its backbone; the backbone is the module that owns a config.
    inner = getattr(root, "backbone", root)
    inner = inner.model if isinstance(inner, Backbone) else inner
    return root, inner, find_layers(inner)


def check_depth(k: int, num_layers: int | None = None) -> None:
    """The one check of a freeze depth: an integer in -1..L-1 (-1 trains everything); without L,
    only that it is an integer of at least -1. Out of range is an error naming the valid range."""
    valid = isinstance(k, int) and not isinstance(k, bool) and k >= -1
    if not valid or (num_layers is not None and k > num_layers - 1):
        where = f"-1..{num_layers - 1} for a {num_layers}-layer model" if num_layers is not None else "-1 or more"
        raise ValueError(f"freeze depth must be an integer in {where}, got {k!r}")


def freeze_bottom(model_or_backbone: nn.Module | Backbone, k: int) -> FreezeReport:
    """Freeze the bottom of the network: k=-1 trains everything; k=0 freezes the embeddings
    (and an unused pooler); k>=1 also freezes blocks 0..k-1. Task heads stay trainable."""
    root, backbone, layers = _parts(model_or_backbone)
    num_layers = len(layers)
    check_depth(k, num_layers)
    for parameter in root.parameters():
        parameter.requires_grad_(True)
    if k >= 0:
        frozen = [*find_embeddings(backbone), *layers[:k]]
        if getattr(backbone, "pooler", None) is not None:  # BERT's pooler: unused by our heads
            frozen.append(backbone.pooler)
        for module in frozen:
            for parameter in module.parameters():
                parameter.requires_grad_(False)
    return parameter_report(root, k, num_layers)


def parameter_report(model: nn.Module, k: int, num_layers: int) -> FreezeReport:
    # Tied weights appear once in parameters(), so shared embeddings are not counted twice.
    params = list(model.parameters())
    return FreezeReport(
        freeze=k,
        num_layers=num_layers,
        trainable_parameters=sum(p.numel() for p in params if p.requires_grad),
        total_parameters=sum(p.numel() for p in params),
    )
