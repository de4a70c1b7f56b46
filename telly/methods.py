"""Fine-tuning methods as config dataclasses with the behaviour beside them (peft-style).

`Full()`, `Telly(freeze, cache)`, `LoRA(r, alpha, dropout, targets)` and `BitFit()` each validate
their settings when made and `.apply(task_model)` sets what trains (LoRA wraps the backbone in peft
adapters). All four go through the same trainer and produce the same records, so the book compares
them on one clock. `METHODS` is the registry the CLI takes its choices from; `make_method` builds
one from the CLI's words. `backbone_state_dict` gives the backbone's weights under the HF base
model's own keys (LoRA adapters merged in), which `telly.backbones.load(..., checkpoint=...)` reads.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn

from telly.freezing import check_depth, freeze_bottom

# Attention projections LoRA adapts by default, per architecture family (query and value).
LORA_DEFAULT_TARGETS = (("query", "value"), ("q_proj", "v_proj"), ("c_attn",))
# scope "attention+mlp" (issue 23's LoRA): every attention projection and the MLP's, per family; peft
# matches each name as a suffix of a module's dotted name ("output.dense" is not the pooler's "dense").
LORA_WIDE_TARGETS = (("query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"),
                     ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                     ("c_attn", "c_proj", "c_fc"))
LORA_SCOPES = {"attention": LORA_DEFAULT_TARGETS, "attention+mlp": LORA_WIDE_TARGETS}


class Method:
    """What every method offers: a registry name, its freeze depth, whether it trains from the
    frozen-prefix cache, a run-id tag, a label, the settings a record keeps, and `apply`."""

    name: ClassVar[str]
    freeze: int = -1
    cache: bool = False

    @property
    def tag(self) -> str:
        return self.name

    @property
    def label(self) -> str:  # pragma: no cover - every method names itself
        raise NotImplementedError

    def settings(self) -> dict:
        return asdict(self)

    def check_depth(self, num_layers: int) -> None:
        """Refuse a freeze depth the backbone does not have, before any work is done."""
        check_depth(self.freeze, num_layers)

    def apply(self, task_model: nn.Module) -> dict:  # pragma: no cover - every method applies itself
        raise NotImplementedError


@dataclass(frozen=True)
class Full(Method):
    """Full fine-tuning: every parameter trains."""

    name: ClassVar[str] = "full"
    label: ClassVar[str] = "Full fine-tuning"

    def apply(self, task_model: nn.Module) -> dict:
        return {"freeze": freeze_bottom(task_model, -1).freeze}


@dataclass(frozen=True)
class Telly(Method):
    """Telly-K: the embeddings and blocks 0..K-1 frozen. cache: train from the frozen-prefix cache
    (the frozen bottom runs once); False runs it every batch, as the paper did."""

    freeze: int
    cache: bool = True
    name: ClassVar[str] = "telly"

    def __post_init__(self) -> None:
        check_depth(self.freeze)
        if self.freeze == -1:
            raise ValueError("Telly-K needs K >= 0: K = -1 is full fine-tuning, Full()")

    @property
    def tag(self) -> str:
        return f"telly{self.freeze}" + ("" if self.cache else "-nocache")

    @property
    def label(self) -> str:
        return f"Telly-{self.freeze} " + ("cached" if self.cache else "uncached")

    def apply(self, task_model: nn.Module) -> dict:
        return {"freeze": freeze_bottom(task_model, self.freeze).freeze}


@dataclass(frozen=True)
class TellyAuto(Method):
    """Telly-auto: K chosen before training. A pilot of full fine-tuning for `pilot_share` of the first
    epoch's steps, on a copy; each layer's movement from the pre-trained model on the validation
    inputs (1 - the lower of debiased CKA and RSA); K = the deepest depth below which every layer
    moved less than `threshold` (`telly.selectors`); then cached Telly-K from the pre-trained
    weights. The trainer resolves it into Telly(K) (or Full() when even the embeddings moved)."""

    # Set on MiniLM-L6 at the laptop profile, on validation data, before any SmolLM2 run (issue 23).
    pilot_share: float = 0.5
    threshold: float = 0.002
    cache: bool = True
    # Where the defaults came from (`telly calibrate-auto`'s record, repository-relative); None: not
    # calibrated, and the study's SmolLM2 runs of chapter 5 refuse to start.
    calibration: ClassVar[str | None] = "book/records/minilm-l6/telly-auto-calibration.json"
    name: ClassVar[str] = "telly-auto"
    label: ClassVar[str] = "Telly-auto"

    def __post_init__(self) -> None:
        if not 0 < self.pilot_share <= 1:
            raise ValueError(f"Telly-auto's pilot share of the first epoch must be in (0, 1], got {self.pilot_share!r}")
        if not 0 < self.threshold < 1:
            raise ValueError(f"Telly-auto's movement threshold must be in (0, 1), got {self.threshold!r}")

    def check_depth(self, num_layers: int) -> None:
        """The depth is chosen later, within the backbone's range."""

    def resolved(self, freeze: int) -> Method:
        """The method the chosen depth makes: cached Telly-K, or full fine-tuning at K = -1."""
        return Full() if freeze == -1 else Telly(freeze, self.cache)

    def apply(self, task_model: nn.Module) -> dict:
        raise RuntimeError("Telly-auto chooses K first: the trainer applies resolved(K)")


@dataclass(frozen=True)
class LoRA(Method):
    """LoRA (peft): the backbone frozen, rank-r adapters on the attention projections, head trained."""

    r: int = 8
    alpha: int | None = None  # None: 2r
    dropout: float = 0.1
    targets: tuple[str, ...] | None = None  # None: the scope's projections of the architecture
    scope: str = "attention"  # "attention": query/value; "attention+mlp": every attention and MLP projection
    name: ClassVar[str] = "lora"
    label: ClassVar[str] = "LoRA"

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoRA rank r must be an integer >= 1, got {self.r!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if self.scope not in LORA_SCOPES:
            raise ValueError(f"LoRA scope must be one of {sorted(LORA_SCOPES)}, got {self.scope!r}")
        if self.targets is not None:
            object.__setattr__(self, "targets", tuple(self.targets))
            if not self.targets:
                raise ValueError("LoRA targets, when given, must name at least one module")

    @property
    def tag(self) -> str:
        return ("lora" if self.r == 8 else f"lora-r{self.r}") + ("" if self.scope == "attention" else "-mlp")

    def apply(self, task_model: nn.Module) -> dict:
        from peft import LoraConfig, get_peft_model

        targets = list(self.targets) if self.targets else default_lora_targets(task_model.backbone, self.scope)
        config = LoraConfig(r=self.r, lora_alpha=self.alpha or 2 * self.r, lora_dropout=self.dropout,
                            target_modules=targets, bias="none")
        task_model.backbone = get_peft_model(task_model.backbone, config)  # freezes the base weights
        for parameter in task_model.head.parameters():
            parameter.requires_grad_(True)
        return {"lora_r": self.r, "lora_alpha": config.lora_alpha, "lora_dropout": self.dropout,
                "lora_targets": targets}


@dataclass(frozen=True)
class BitFit(Method):
    """BitFit: only the backbone's bias terms (and the task head) train."""

    name: ClassVar[str] = "bitfit"
    label: ClassVar[str] = "BitFit"

    @staticmethod
    def bias_names(module: nn.Module) -> list[str]:
        """The bias parameters BitFit trains; none in Llama-style decoders such as SmolLM2."""
        return [name for name, _ in module.named_parameters() if name.endswith("bias")]

    def apply(self, task_model: nn.Module) -> dict:
        biases = self.bias_names(task_model.backbone)
        if not biases:
            raise ValueError(f"BitFit trains bias terms, and {type(task_model.backbone).__name__} has none")
        freeze_bottom(task_model, -1)
        for name, parameter in task_model.backbone.named_parameters():
            parameter.requires_grad_(name.endswith("bias"))
        return {"bias_tensors": len(biases)}


METHODS: dict[str, type[Method]] = {m.name: m for m in (Full, Telly, TellyAuto, LoRA, BitFit)}


def make_method(name: str, freeze: int = -1, cache: bool = True, **options) -> Method:
    """A method from the CLI's words. Telly with K = -1 freezes nothing: it is Full(). Other
    methods train no frozen prefix, so their freeze must be -1."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}")
    if name != "telly" and freeze != -1:
        raise ValueError(f"method {name!r} trains no frozen prefix: freeze must be -1, got {freeze}")
    if name == "telly":
        return Full() if freeze == -1 else Telly(freeze, cache)
    return METHODS[name](**options)


def default_lora_targets(backbone: nn.Module, scope: str = "attention") -> list[str]:
    """The first family of LORA_SCOPES[scope] whose every name ends some module's dotted name."""
    names = [name for name, _ in backbone.named_modules()]
    for targets in LORA_SCOPES[scope]:
        if all(any(n == t or n.endswith(f".{t}") for n in names) for t in targets):
            return list(targets)
    raise ValueError(f"{type(backbone).__name__}: no {scope} projections found for LoRA; "
                     "pass LoRA(targets=...) with the module names to adapt")


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
