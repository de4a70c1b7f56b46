"""Which parameters a fine-tuning method trains: full, Telly-K, LoRA (peft) and BitFit.

All four go through the same trainer and produce the same records, so the book compares them on
one clock. `apply_method` sets requires_grad (and, for LoRA, wraps the backbone in peft adapters);
`backbone_state_dict` gives the backbone's weights under the HF base model's own keys (LoRA
adapters merged in), which is what `telly.backbones.load(..., checkpoint=run_dir)` reads.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from telly.freezing import freeze_bottom

METHODS = ("full", "telly", "lora", "bitfit")

# Attention projections LoRA adapts by default, per architecture family (query and value).
LORA_DEFAULT_TARGETS = (("query", "value"), ("q_proj", "v_proj"), ("c_attn",))


def default_lora_targets(backbone: nn.Module) -> list[str]:
    names = {name.rsplit(".", 1)[-1] for name, _ in backbone.named_modules()}
    for targets in LORA_DEFAULT_TARGETS:
        if set(targets) <= names:
            return list(targets)
    raise ValueError(f"{type(backbone).__name__}: no query/value projections found for LoRA; "
                     "pass lora_targets with the module names to adapt")


def apply_method(task_model: nn.Module, method: str, freeze: int = -1, *, lora_r: int = 8,
                 lora_alpha: int | None = None, lora_dropout: float = 0.1,
                 lora_targets: list[str] | None = None) -> dict:
    """Make the right parameters trainable for `method`; returns the method's settings for the record.

    full: everything (freeze must be -1). telly: embeddings + blocks 0..freeze-1 frozen.
    lora: backbone frozen, rank-`lora_r` adapters on the query/value projections (peft), head trained.
    bitfit: only the backbone's bias terms, and the head, are trained.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if method != "telly" and freeze != -1:
        raise ValueError(f"method {method!r} trains no frozen prefix: freeze must be -1, got {freeze}")
    if method in ("full", "telly"):
        return {"freeze": freeze_bottom(task_model, freeze).freeze}
    if method == "bitfit":
        freeze_bottom(task_model, -1)
        for name, parameter in task_model.backbone.named_parameters():
            parameter.requires_grad_(name.endswith("bias"))
        return {}
    from peft import LoraConfig, get_peft_model

    targets = list(lora_targets) if lora_targets else default_lora_targets(task_model.backbone)
    config = LoraConfig(r=lora_r, lora_alpha=lora_alpha or 2 * lora_r, lora_dropout=lora_dropout,
                        target_modules=targets, bias="none")
    task_model.backbone = get_peft_model(task_model.backbone, config)  # freezes the base weights
    for parameter in task_model.head.parameters():
        parameter.requires_grad_(True)
    return {"lora_r": lora_r, "lora_alpha": config.lora_alpha, "lora_dropout": lora_dropout,
            "lora_targets": targets}


def base_model(task_model: nn.Module) -> nn.Module:
    """The HF base model inside a task model (unwrapping peft's adapters)."""
    backbone = task_model.backbone
    return backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone


def backbone_state_dict(task_model: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's weights keyed as the HF base model's state_dict (LoRA merged in a copy)."""
    backbone = task_model.backbone
    if hasattr(backbone, "merge_and_unload"):
        backbone = copy.deepcopy(backbone).merge_and_unload()
    return {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
