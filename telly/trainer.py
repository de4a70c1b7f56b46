"""The Telly-K trainer: fine-tune a backbone on a task with the bottom K blocks frozen, and measure it.

Read top to bottom, `finetune` does:
  1. resolve the run (task, model, method, freeze depth, seed, profile) and its record path;
  2. load the backbone and the task data, build the task model, choose what trains (baselines.py);
  3. zero-shot: score the pre-trained model on the test set when the task allows it (code search);
  4. frozen-prefix cache: for Telly-K (K >= 0) run embeddings + blocks 0..K-1 once (prefix_cache.py);
  5. train with AdamW + linear warmup/decay under Accelerate (same code for `accelerate launch`),
     timing each epoch's training apart from its validation, early stopping on the validation metric;
  6. restore the best epoch, score the test set with bootstrap 95% CIs (stats.py);
  7. save the best backbone (HF base-model keys) and head as safetensors, then the JSON record.
The record is written last and atomically, so its presence means the run finished.

Several processes: `accelerate launch --multi_gpu --num_processes N -m telly.cli finetune ...` on
GPUs, or `torchrun --nproc_per_node N -m telly.cli finetune ...` (gloo on CPU). The profile's
batch_size is the global batch, split across processes; code search gathers every process's code
embeddings so its in-batch negatives are the whole global batch, as with one process.

Peak memory: on GPU, torch.cuda.max_memory_allocated over training; on CPU, the peak resident set
size above its level when training started, sampled every 50 ms with psutil (allocations that live
shorter than that can be missed; memory held before the run is not counted).
"""
from __future__ import annotations

import argparse
import hashlib
import re
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from telly.profiles import Profile, get_profile

WEIGHTS = "backbone.safetensors"
HEAD_WEIGHTS = "head.safetensors"


# ----------------------------------------------------------------------------- run identity

def slug(text: str) -> str:
    """A file-name-safe form of a model name or path."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_.") or "model"


def data_location(data_path: str | Path | None) -> str | None:
    """The absolute form of a real dataset path, as records keep it (None: the offline corpus)."""
    return str(Path(data_path).expanduser().resolve()) if data_path else None


def data_tag(data_path: str | Path) -> str:
    """Names a real dataset in run ids: its file or folder name and a hash of its absolute path."""
    location = data_location(data_path)
    return f"{slug(Path(location).name)}-{hashlib.sha256(location.encode()).hexdigest()[:8]}"


def run_name(task: str, model: str, method: str, freeze: int, seed: int, profile: str,
             cache: bool = True, data_path: str | Path | None = None) -> str:
    """Deterministic run id: the same settings always map to the same record path; a run on a real
    dataset (`data_path`) never shares its id with the offline-corpus run of the same variant."""
    variant = f"telly{freeze}" if method == "telly" else method
    if method == "telly" and not cache:
        variant += "-nocache"
    name = f"{task}__{slug(model)}__{variant}__seed{seed}__{profile}"
    return f"{name}__data-{data_tag(data_path)}" if data_path else name


def normalise_method(method: str, freeze: int) -> str:
    """Telly with K = -1 freezes nothing: it is full fine-tuning, recorded as such."""
    return "full" if method == "telly" and freeze == -1 else method


def record_path(out: str | Path, task: str, model: str, method: str, freeze: int, seed: int,
                profile: str, cache: bool = True, data_path: str | Path | None = None) -> Path:
    method = normalise_method(method, freeze)
    return Path(out) / f"{run_name(task, model, method, freeze, seed, profile, cache, data_path)}.json"


# ----------------------------------------------------------------------------- measurement

class PeakMemory:
    """Peak memory of a block of work in MB (see the module docstring for how)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = 0.0
        self.method = ("cuda max_memory_allocated" if device.type == "cuda"
                       else "cpu peak RSS above start, psutil sampled every 50 ms")

    @contextmanager
    def track(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            yield self
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        import psutil

        process = psutil.Process()
        start = process.memory_info().rss
        peak = [start]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], process.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield self
        finally:
            done.set()
            sampler.join()
            peak[0] = max(peak[0], process.memory_info().rss)
            self.peak_mb = (peak[0] - start) / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _count(parameters) -> tuple[int, int]:
    params = list(parameters)
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _set_dropout(model: torch.nn.Module, p: float) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
    for config in {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}.values():
        for key in ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop"):
            if hasattr(config, key):  # attention dropout is a functional call reading the config
                setattr(config, key, p)
    for module in model.modules():
        if hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = p


# ----------------------------------------------------------------------------- the run

def finetune(task, model: str = "minilm-l6", freeze: int = -1, *, method: str = "telly",
             profile: str | Profile = "laptop", seed: int = 0, out: str | Path = "runs",
             cache: bool = True, save_epoch_checkpoints: bool = False, data_path: str | None = None,
             lora_r: int = 8, lora_targets: list[str] | None = None, dropout: float | None = None,
             head_learning_rate: float | None = None,
             mixed_precision: str = "no", progress: bool = True) -> dict:
    """Fine-tune `model` on `task` and write one JSON record (returned) plus the best weights.

    method: "telly" (freeze embeddings + blocks 0..freeze-1; freeze=-1 is full fine-tuning),
    "full", "lora" (peft, r=`lora_r` on query/value) or "bitfit". cache: train Telly-K from the
    frozen-prefix cache (False = the paper's Telly, frozen blocks run every batch with dropout).
    dropout: override every dropout probability (0.0 makes runs identical across process counts).
    head_learning_rate: the task head's learning rate (default: the task's head_lr_scale x the profile's).
    """
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
    from accelerate.utils import set_seed
    from safetensors.torch import save_file
    from transformers import get_linear_schedule_with_warmup
    from tqdm.auto import tqdm

    from telly import backbones, stats
    from telly.baselines import METHODS, apply_method
    from telly.prefix_cache import build_prefix_cache
    from telly.results import provenance, write_json
    from telly.tasks import get_task, move_to

    # 1. The run: what it is and where its record goes.
    started = time.perf_counter()
    profile = get_profile(profile)
    task = get_task(task, **({"data_path": data_path} if data_path else {}))
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    method = normalise_method(method, freeze)
    use_cache = cache and method == "telly" and freeze >= 0
    name = run_name(task.name, model, method, freeze, seed, profile.name, cache or method != "telly", data_path)
    out = Path(out)
    run_dir = out / name
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision,
        dataloader_config=DataLoaderConfiguration(split_batches=True),  # batch_size = global batch
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    device, main = accelerator.device, accelerator.is_main_process
    set_seed(seed)

    # 2. Backbone, data, task model; which parameters train.
    backbone = backbones.load(model)
    if not -1 <= freeze <= backbone.num_layers - 1:
        raise ValueError(f"freeze depth must be in -1..{backbone.num_layers - 1} for {model} "
                         f"({backbone.num_layers} layers), got {freeze}")
    data = task.load_data(profile)
    task_model = task.build_model(backbone)
    if dropout is not None:
        _set_dropout(task_model, dropout)
    tokenizer = backbone.tokenizer
    zero_shot = _zero_shot(task, task_model, data, tokenizer, profile, model, out, device, main) \
        if task.zero_shot else None
    method_config = apply_method(task_model, method, freeze, lora_r=lora_r, lora_targets=lora_targets)
    trainable, total = _count(task_model.parameters())
    backbone_trainable, backbone_total = _count(task_model.backbone.parameters())
    task_model.to(device)

    # 3. Frozen-prefix cache: the bottom K blocks run once, here, not in every epoch.
    prefix_cache, cache_seconds = None, 0.0
    if use_cache:
        _sync(device)
        tick = time.perf_counter()
        prefix_cache = build_prefix_cache(
            task_model.backbone, data.train, lambda rows: task.collate(rows, tokenizer, profile), freeze,
            batch_size=profile.batch_size, memory_mb=profile.cache_memory_mb, device=device,
            disk_dir=backbones.cache_dir(), show_progress=progress and main)
        _sync(device)
        cache_seconds = time.perf_counter() - tick
    state_dtype = next(task_model.parameters()).dtype

    def make_batch(indices: list[int]) -> dict:
        batch = task.collate([data.train[i] for i in indices], tokenizer, profile)
        if prefix_cache is not None:
            batch["inputs"] = prefix_cache.states(indices, state_dtype)
        return batch

    # 4. Optimiser and schedule over every epoch's steps.
    steps_per_epoch = -(-len(data.train) // profile.batch_size)
    # The head may learn faster than the pre-trained weights (Task.head_lr_scale, e.g. a randomly
    # initialised classifier that must learn something within a short laptop budget).
    head_learning_rate = head_learning_rate or task.head_lr_scale * profile.learning_rate
    head_ids = {id(p) for p in task_model.head.parameters()}
    groups = [{"params": [p for p in task_model.parameters() if p.requires_grad and id(p) not in head_ids]},
              {"params": [p for p in task_model.head.parameters() if p.requires_grad], "lr": head_learning_rate}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=profile.learning_rate, eps=1e-8)
    total_steps = steps_per_epoch * profile.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(profile.warmup_ratio * total_steps), total_steps)
    wrapped, optimizer, scheduler = accelerator.prepare(task_model, optimizer, scheduler)

    # 5. Train; validate after each epoch; keep the best epoch's trainable weights.
    epochs, best, best_state, since_best = [], None, None, 0
    memory = PeakMemory(device)
    with memory.track():
        for epoch in range(1, profile.epochs + 1):
            order = np.random.default_rng([seed, epoch]).permutation(len(data.train)).tolist()
            loader = accelerator.prepare_data_loader(torch.utils.data.DataLoader(
                order, batch_size=profile.batch_size, shuffle=False, collate_fn=make_batch))
            wrapped.train()
            losses = []
            _sync(device)
            tick = time.perf_counter()
            for batch in tqdm(loader, desc=f"{name} epoch {epoch}", disable=not (progress and main), leave=False):
                loss = wrapped(move_to(batch, device))
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.detach().float().item())
            _sync(device)
            train_seconds = time.perf_counter() - tick
            tick = time.perf_counter()
            valid = _evaluate(task, accelerator.unwrap_model(wrapped), data.valid, tokenizer, profile)
            eval_seconds = time.perf_counter() - tick
            epochs.append({"epoch": epoch, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
                           "train_loss": float(np.mean(losses)), "valid": valid.metrics})
            if save_epoch_checkpoints and main:
                _save_weights(task_model, run_dir / f"epoch-{epoch}", save_file)
            if best is None or valid.metrics[task.metric] > best["valid"][task.metric]:
                best, since_best = epochs[-1], 0
                best_state = {k: v.detach().clone() for k, v in task_model.named_parameters() if v.requires_grad}
            else:
                since_best += 1
                if since_best >= profile.patience:
                    break
    if prefix_cache is not None:
        cache_info = prefix_cache.describe()
        prefix_cache.close()

    # 6. Test at the best epoch, with bootstrap CIs over test examples.
    task_model.load_state_dict(best_state, strict=False)
    test = _evaluate(task, task_model, data.test, tokenizer, profile)
    test_ci = stats.bootstrap_ci(test.per_example, task.score, samples=profile.bootstrap_samples, seed=seed)

    # 7. Weights, then the record (last: its presence means the run finished).
    best_epoch = best["epoch"]
    record = {
        "run": name, "task": task.name, "model": model, "method": method, "freeze": freeze,
        "seed": seed, "profile": profile.name, "status": "finished",
        "method_config": method_config, "task_config": task.config.to_dict(),
        "cache": cache_info if prefix_cache is not None else None,
        "uses_cache": use_cache,
        "dropout_override": dropout,
        "metric": task.metric,
        "data": {"source": data.source, "fingerprint": data.fingerprint, "sizes": data.sizes(),
                 "path": data_location(data_path)},
        "parameters": {"trainable": trainable, "total": total, "backbone_trainable": backbone_trainable,
                       "backbone_total": backbone_total, "num_layers": backbone.num_layers},
        "batch_size": profile.batch_size, "num_processes": accelerator.num_processes,
        "learning_rate": profile.learning_rate, "head_learning_rate": head_learning_rate,
        "steps_per_epoch": steps_per_epoch,
        "epochs": epochs, "epochs_run": len(epochs), "epochs_to_best": best_epoch,
        "cache_seconds": cache_seconds,
        "epoch_seconds": float(np.mean([e["train_seconds"] for e in epochs])),
        "time_to_best_seconds": cache_seconds + sum(e["train_seconds"] for e in epochs[:best_epoch]),
        "valid": best["valid"],
        "test": test.metrics, "test_ci": test_ci,
        "test_per_example": {k: np.asarray(v).tolist() for k, v in test.per_example.items()},
        "zero_shot": zero_shot,
        # Generation tasks: decode time, degenerate-output report, example outputs (None otherwise).
        "generation": test.extras or None,
        "peak_memory_mb": memory.peak_mb, "peak_memory_method": memory.method,
        "weights": str(run_dir / WEIGHTS),
        "provenance": provenance(model=model, profile=profile.name, corpus_fingerprint=data.fingerprint,
                                 seed=seed, device=device) | {"backbone": backbone.describe()},
    }
    record["wall_seconds"] = time.perf_counter() - started
    if main:
        _save_weights(task_model, run_dir, save_file)
        write_json(out / f"{name}.json", record)
    accelerator.wait_for_everyone()
    return record


def _evaluate(task, model, examples, tokenizer, profile):
    was_training = model.training
    model.eval()
    with torch.no_grad():
        result = task.evaluate(model, examples, tokenizer, profile, profile.batch_size)
    model.train(was_training)
    return result


def _save_weights(task_model, directory: Path, save_file) -> None:
    """backbone.safetensors (HF base-model keys) and head.safetensors, each written atomically."""
    from telly.baselines import backbone_state_dict

    directory.mkdir(parents=True, exist_ok=True)
    head = {k: v.detach().cpu().contiguous() for k, v in task_model.head.state_dict().items()}
    for filename, tensors in ((WEIGHTS, backbone_state_dict(task_model)), (HEAD_WEIGHTS, head)):
        partial = directory / f".{filename}.partial"
        save_file(tensors, str(partial))
        partial.replace(directory / filename)


def _zero_shot(task, task_model, data, tokenizer, profile, model, out, device, main) -> dict:
    """Test metrics of the pre-trained model (fresh head); computed once per (task, model, profile, data)."""
    from telly import stats
    from telly.results import provenance, read_json, write_json

    path = Path(out) / "zero-shot" / f"{task.name}__{slug(model)}__{profile.name}.json"
    if path.exists():
        stored = read_json(path)
        if stored.get("data_fingerprint") == data.fingerprint:
            return stored
    task_model.to(device)
    result = _evaluate(task, task_model, data.test, tokenizer, profile)
    record = {
        "task": task.name, "model": model, "profile": profile.name, "data_fingerprint": data.fingerprint,
        "test": result.metrics,
        "test_ci": stats.bootstrap_ci(result.per_example, task.score, samples=profile.bootstrap_samples),
        "test_per_example": {k: np.asarray(v).tolist() for k, v in result.per_example.items()},
        "provenance": provenance(model=model, profile=profile.name, corpus_fingerprint=data.fingerprint,
                                 device=device),
    }
    if main:
        write_json(path, record)
    return record


# ----------------------------------------------------------------------------- CLI

def add_cli(subparsers) -> None:
    from telly.cli import add_common

    parser = subparsers.add_parser("finetune", help="fine-tune one variant (Telly-K, full, LoRA, BitFit)",
                                   description=finetune.__doc__)
    add_common(parser, out="runs")
    parser.add_argument("--task", required=True, help="code-search, clone-detection, code-summarization, "
                        "code-generation or code-completion")
    parser.add_argument("--freeze", type=int, default=-1, help="K: freeze embeddings + blocks 0..K-1 (-1: none)")
    parser.add_argument("--method", default="telly", help="telly (default), full, lora or bitfit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help="run the frozen blocks every batch (the paper's Telly) instead of caching them")
    parser.add_argument("--data", dest="data_path", default=None, help="real dataset path (default: offline corpus)")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-targets", default=None, help="comma-separated module names (default: query,value)")
    parser.add_argument("--save-epoch-checkpoints", action="store_true")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.set_defaults(handler=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    from telly.backbones import BackboneUnavailable

    try:
        record = finetune(
            args.task, args.model, args.freeze, method=args.method, profile=args.profile, seed=args.seed,
            out=args.out, cache=args.cache, save_epoch_checkpoints=args.save_epoch_checkpoints,
            data_path=args.data_path, lora_r=args.lora_r,
            lora_targets=args.lora_targets.split(",") if args.lora_targets else None,
            mixed_precision=args.mixed_precision)
    except (ValueError, FileNotFoundError, BackboneUnavailable) as exc:
        print(f"telly finetune: error: {exc}", file=sys.stderr)
        return 2
    print(summary(record))
    return 0


def summary(record: dict) -> str:
    ci = record["test_ci"][record["metric"]]
    return (f"{record['run']}: test {record['metric']} {ci['value']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}], "
            f"{record['parameters']['backbone_trainable'] / 1e6:.2f}M trainable backbone parameters, "
            f"epoch {record['epoch_seconds']:.1f}s, best at epoch {record['epochs_to_best']} "
            f"({record['time_to_best_seconds']:.1f}s)")
