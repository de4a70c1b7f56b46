"""The Telly-K trainer: fine-tune one variant (task, model, method, seed) and measure it.

Read top to bottom, `finetune` does:
  1. resolve the run (a `telly.store.Variant`) and the profile it runs under;
  2. load the backbone and the task data, build the task model, let the method choose what trains;
  3. zero-shot: score the pre-trained model on the test set when the task allows it (code search);
  4. frozen-prefix cache: for cached Telly-K run embeddings + blocks 0..K-1 once (prefix_cache.py);
  5. one untimed warm-up step on a copy of the model, which also measures peak memory;
  6. train with AdamW (the profile's weight decay, gradient norm clipped) + linear warmup/decay
     under Accelerate (same code for `accelerate launch`),
     timing each epoch's training apart from its validation, early stopping on the validation loss;
  7. restore the best epoch, score the test set with bootstrap 95% CIs (stats.py);
  8. save the best backbone (HF base-model keys) and head as safetensors, then the JSON record.
The record is written last and atomically, so its presence means the run finished.

`train_step` is the one training step: the trainer and the bench both call it. Peak memory means
one thing in both (`step_peak_memory`): the bytes of the tensors one training step holds on the
training device at its peak (weights, gradients, optimizer state, activations, and on a CPU the
in-memory prefix cache), measured as the variant's live tensors before the step plus the peak of
what the step allocates (the torch profiler's allocator events on CPU, max_memory_allocated on CUDA).

Several processes: `accelerate launch --multi_gpu --num_processes N -m telly.cli finetune ...` on
GPUs, or `torchrun --nproc_per_node N -m telly.cli finetune ...` (gloo on CPU). The profile's
batch_size is the global batch, split across processes; code search gathers every process's code
embeddings so its in-batch negatives are the whole global batch, as with one process.
"""
from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from telly.profiles import Profile, get_profile
from telly.progress import progress_bar
from telly.store import HEAD_WEIGHTS, WEIGHTS, RunStore, Variant, as_store, as_stored, slug

# ----------------------------------------------------------------------------- one training step

def train_step(model: torch.nn.Module, batch: dict, optimizer, scheduler=None, *,
               backward: Callable[[torch.Tensor], None] | None = None,
               autocast: contextlib.AbstractContextManager | None = None) -> float:
    """Forward (under `autocast` when given), backward, optimizer and schedule step; the loss."""
    with autocast if autocast is not None else contextlib.nullcontext():
        loss = model(batch)
    (backward or torch.Tensor.backward)(loss)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach().float().item()


# ----------------------------------------------------------------------------- peak memory

def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return ("bytes of the variant's tensors on the GPU before one training step + the most the step "
                "allocated above that (torch.cuda.max_memory_allocated); the prefix cache lives in host "
                "memory and is reported as cache_megabytes")
    return ("bytes of the variant's live tensors before one training step (weights, buffers, optimizer "
            "state, the in-memory prefix cache) + the peak of the allocations the torch profiler "
            "(profile_memory=True) records during the step")


def tensor_bytes(tensors, device: torch.device) -> int:
    """Bytes of the distinct storages behind `tensors` on `device`'s type (shared storage once)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        if tensor is None or tensor.device.type != device.type:
            continue
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def profiled_peak_bytes(step: Callable[[], None]) -> int:
    """Peak of the CPU tensor memory allocated (minus freed) while `step` runs, from the torch
    profiler's allocator events; 0 when nothing outlives its own allocation."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def step_peak_memory(task_model: torch.nn.Module, make_optimizer, batch: dict, device: torch.device, *,
                     cache_bytes: int = 0, autocast=None, measure: bool = True) -> int | None:
    """One untimed training step on a copy of `task_model` (the real weights and the random state
    are left as they were): it warms up the allocator and kernels before the timed epochs and, when
    `measure`, returns the step's peak tensor bytes (see the module docstring). `cache_bytes`: the
    in-memory prefix cache the variant holds (counted on a CPU)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        warm = copy.deepcopy(task_model).to(device).train()
        optimizer = make_optimizer(warm)

        def step() -> None:
            train_step(warm, batch, optimizer, autocast=autocast)

        if not measure:
            step()
            return None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            step()
            torch.cuda.synchronize(device)
            added = torch.cuda.max_memory_allocated(device) - before
            resident = tensor_bytes([*warm.parameters(), *warm.buffers()], device)
            return int(resident + added)
        resident = tensor_bytes([*warm.parameters(), *warm.buffers()], device) + cache_bytes
        return int(resident + profiled_peak_bytes(step))


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


ADAM_EPS = 1e-8
REPLICATION_OPTIMIZER = ("the replication package's UniXcoder scripts: transformers.AdamW(model.parameters(), lr, "
                         "eps=1e-8), whose weight decay defaults to 0, and clip_grad_norm_(max_norm=1.0) every step")


def optimizer_settings(profile: Profile, head_learning_rate: float) -> dict:
    """What a record says about its optimiser, beside what the replication package used."""
    return {"name": "AdamW", "learning_rate": profile.learning_rate, "head_learning_rate": head_learning_rate,
            "eps": ADAM_EPS, "weight_decay": profile.weight_decay, "max_grad_norm": profile.max_grad_norm,
            "schedule": f"linear warm-up over {profile.warmup_ratio:.0%} of the steps, then linear decay to 0",
            "replication_package": REPLICATION_OPTIMIZER}


def optimizer_factory(task, profile: Profile, head_learning_rate: float):
    """model -> AdamW over its trainable parameters (the head at its own learning rate, the profile's
    weight decay) whose every step first clips the gradients' global norm at profile.max_grad_norm."""
    if not profile.max_grad_norm > 0:
        raise ValueError(f"profile {profile.name!r}: max_grad_norm must be positive, got {profile.max_grad_norm}")
    if profile.weight_decay < 0:
        raise ValueError(f"profile {profile.name!r}: weight_decay must be >= 0, got {profile.weight_decay}")

    def make(task_model: torch.nn.Module) -> torch.optim.Optimizer:
        head_ids = {id(p) for p in task_model.head.parameters()}
        groups = [{"params": [p for p in task_model.parameters() if p.requires_grad and id(p) not in head_ids]},
                  {"params": [p for p in task_model.head.parameters() if p.requires_grad], "lr": head_learning_rate}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=profile.learning_rate, eps=ADAM_EPS,
                                      weight_decay=profile.weight_decay)
        trained = [p for g in optimizer.param_groups for p in g["params"]]

        def clip(_optimizer, _args, _kwargs) -> None:
            torch.nn.utils.clip_grad_norm_(trained, profile.max_grad_norm)

        # A pre-step hook clips wherever a step is taken (the trainer, its warm-up step, the bench),
        # after a mixed-precision scaler has unscaled the gradients.
        optimizer.register_step_pre_hook(clip)
        return optimizer
    return make


# ----------------------------------------------------------------------------- the run

def finetune(variant: Variant, store: RunStore | str | Path = "runs", *, profile: Profile | str | None = None,
             save_epoch_checkpoints: bool = False, dropout: float | None = None,
             head_learning_rate: float | None = None, mixed_precision: str | None = None,
             progress: bool = True, on_epoch: Callable[[dict, int], None] | None = None) -> dict:
    """Fine-tune `variant` and write its record (returned) and best weights into `store`.

    profile: the settings to run under (default: the registered profile `variant.profile` names;
    a custom Profile must carry that name). dropout: override every dropout probability (0.0 makes
    runs identical across process counts). head_learning_rate: the task head's learning rate
    (default: the task's head_lr_scale x the profile's). mixed_precision: "bf16" runs every training
    forward pass (and the frozen-prefix cache's) under bf16 autocast, "no" in float32 (default: the
    profile's); validation, test and decoding always run in float32. on_epoch(epoch_summary,
    max_epochs) is called after each epoch's validation (a live progress bar, for example).
    """
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
    from accelerate.utils import set_seed
    from safetensors.torch import save_file
    from transformers import get_linear_schedule_with_warmup

    from telly import backbones, stats
    from telly.features import precision_autocast
    from telly.prefix_cache import build_prefix_cache
    from telly.store import provenance
    from telly.tasks import move_to

    # 1. The run: what it is and where its record goes.
    started = time.perf_counter()
    profile = get_profile(profile if profile is not None else variant.profile)
    if profile.name != variant.profile:
        raise ValueError(f"variant {variant.run_id} names profile {variant.profile!r}, but runs under {profile.name!r}")
    store = as_store(store)
    task = variant.make_task()
    method, freeze = variant.method, variant.freeze
    use_cache = method.cache
    name = variant.run_id
    run_dir = store.run_dir(variant)
    mixed_precision = profile.mixed_precision if mixed_precision is None else mixed_precision
    # Autocast is ours (train_step's `autocast`), not Accelerate's: Accelerate would wrap only
    # `forward`, while the warm-up step, the prefix cache and the bench need the same context.
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision="no",
        dataloader_config=DataLoaderConfiguration(split_batches=True),  # batch_size = global batch
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    device, main = accelerator.device, accelerator.is_main_process
    autocast = precision_autocast(mixed_precision, device)
    set_seed(variant.seed)

    # 2. Backbone, data, task model; which parameters train.
    tick = time.perf_counter()
    backbone = backbones.load(variant.model)
    if not -1 <= freeze <= backbone.num_layers - 1:
        raise ValueError(f"freeze depth must be in -1..{backbone.num_layers - 1} for {variant.model} "
                         f"({backbone.num_layers} layers), got {freeze}")
    data = task.load_data(profile)
    task_model = task.build_model(backbone)
    if dropout is not None:
        _set_dropout(task_model, dropout)
    tokenizer = backbone.tokenizer
    task_model.to(device)
    load_seconds, tick = time.perf_counter() - tick, time.perf_counter()
    task.prepare(task_model, data, tokenizer, profile)
    zero_shot = (_zero_shot(task, task_model, data, tokenizer, profile, variant.model, store, device, main)
                 if task.has_zero_shot(backbone) else None)
    # Where validation starts: a fine-tune that ends below the pre-trained model unlearned the task.
    valid_before = (_evaluate(task, task_model, data.valid, tokenizer, profile).metrics
                    if task.has_zero_shot(backbone) else None)
    prepare_seconds = time.perf_counter() - tick  # statistics, zero-shot and the pre-trained model's validation
    method_config = method.apply(task_model)
    trainable, total = _count(task_model.parameters())
    backbone_trainable, backbone_total = _count(task_model.backbone.parameters())
    task_model.to(device)

    # 3. Frozen-prefix cache: the bottom K blocks run once, here, not in every epoch.
    prefix_cache, cache_seconds = None, 0.0
    if use_cache:
        _sync(device)
        tick = time.perf_counter()
        with autocast or contextlib.nullcontext():  # the frozen blocks as uncached training runs them
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

    # 4. Optimiser and schedule over every epoch's steps. The head may learn faster than the
    # pre-trained weights (Task.head_lr_scale, e.g. a randomly initialised classifier).
    steps_per_epoch = -(-len(data.train) // profile.batch_size)
    head_learning_rate = head_learning_rate or task.head_lr_scale * profile.learning_rate
    make_optimizer = optimizer_factory(task, profile, head_learning_rate)
    in_memory_cache = prefix_cache.nbytes() if prefix_cache is not None and prefix_cache.storage == "memory" else 0
    peak_bytes = step_peak_memory(task_model, make_optimizer, move_to(make_batch(list(range(
        min(profile.batch_size, len(data.train))))), device), device, cache_bytes=in_memory_cache,
        autocast=autocast)
    optimizer = make_optimizer(task_model)
    total_steps = steps_per_epoch * profile.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(profile.warmup_ratio * total_steps), total_steps)
    wrapped, optimizer, scheduler = accelerator.prepare(task_model, optimizer, scheduler)

    # 5. Train; validate after each epoch; keep the best epoch's trainable weights.
    epochs, best, best_state, since_best = [], None, None, 0
    for epoch in range(1, profile.epochs + 1):
        order = np.random.default_rng([variant.seed, epoch]).permutation(len(data.train)).tolist()
        loader = accelerator.prepare_data_loader(torch.utils.data.DataLoader(
            order, batch_size=profile.batch_size, shuffle=False, collate_fn=make_batch))
        wrapped.train()
        losses = []
        _sync(device)
        tick = time.perf_counter()
        for batch in progress_bar(loader, desc=f"{name} epoch {epoch}", disable=not (progress and main), leave=False):
            losses.append(train_step(wrapped, move_to(batch, device), optimizer, scheduler,
                                     backward=accelerator.backward, autocast=autocast))
        _sync(device)
        train_seconds = time.perf_counter() - tick
        tick = time.perf_counter()
        valid = task.calibrate(task_model, _evaluate(task, task_model, data.valid, tokenizer, profile))
        valid_loss = _valid_loss(task, task_model, data.valid, tokenizer, profile, device)
        eval_seconds = time.perf_counter() - tick
        epochs.append({"epoch": epoch, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
                       "train_loss": float(np.mean(losses)), "valid_loss": valid_loss, "valid": valid.metrics,
                       "calibration": valid.extras.get("calibration")})
        if on_epoch is not None:
            on_epoch(epochs[-1], profile.epochs)
        if save_epoch_checkpoints and main:
            _save_weights(task_model, run_dir / f"epoch-{epoch}", save_file)
        if best is None or valid_loss < best["valid_loss"]:
            best, since_best = epochs[-1], 0
            best_state = {k: v.detach().clone() for k, v in task_model.named_parameters() if v.requires_grad}
            # The head's buffers too: a threshold calibrate chose belongs to this epoch's weights.
            best_state |= {f"head.{k}": v.detach().clone() for k, v in task_model.head.named_buffers()}
        else:
            since_best += 1
            if since_best >= profile.patience:
                break
    cache_info = None
    if prefix_cache is not None:
        cache_info = prefix_cache.describe()
        prefix_cache.close()

    # 6. Test at the best epoch, with bootstrap CIs over test examples.
    tick = time.perf_counter()
    task_model.load_state_dict(best_state, strict=False)
    test = _evaluate(task, task_model, data.test, tokenizer, profile)
    # Rows sampled together (a clone pair's source function: "group") resample together.
    test_ci = stats.bootstrap_ci(test.per_example, task.score, clusters=test.per_example.get("group"),
                                 samples=profile.bootstrap_samples, seed=variant.seed)

    test_seconds = time.perf_counter() - tick

    # 7. Weights, then the record (last: its presence means the run finished).
    best_epoch = best["epoch"]
    record = {
        "run": name, "task": task.name, "model": variant.model, "method": method.name, "freeze": freeze,
        "seed": variant.seed, "profile": profile.name, "profile_settings": as_stored(profile.to_dict()),
        "status": "finished", "label": variant.label,
        "method_config": method_config, "task_config": task.config.to_dict(),
        "cache": cache_info, "uses_cache": use_cache,
        "dropout_override": dropout,
        "mixed_precision": {"training": mixed_precision, "prefix_cache": mixed_precision if use_cache else None,
                            "evaluation": "no"},  # evaluation: validation, test, zero-shot, decoding
        "metric": task.metric,
        "data": {"source": data.source, "fingerprint": data.fingerprint, "sizes": data.sizes(),
                 "path": variant.data_path},
        "parameters": {"trainable": trainable, "total": total, "backbone_trainable": backbone_trainable,
                       "backbone_total": backbone_total, "num_layers": backbone.num_layers},
        "batch_size": profile.batch_size, "num_processes": accelerator.num_processes,
        "learning_rate": profile.learning_rate, "head_learning_rate": head_learning_rate,
        "optimizer": optimizer_settings(profile, head_learning_rate),
        "steps_per_epoch": steps_per_epoch,
        "epochs": epochs, "epochs_run": len(epochs), "epochs_to_best": best_epoch,
        "early_stopping": early_stopping_report(epochs, best_epoch),
        "cache_seconds": cache_seconds,
        "epoch_seconds": float(np.mean([e["train_seconds"] for e in epochs])),
        "time_to_best_seconds": cache_seconds + sum(e["train_seconds"] for e in epochs[:best_epoch]),
        "warm_up": "one untimed training step on a copy of the model before the first timed epoch",
        "valid": best["valid"], "calibration": best["calibration"],
        "test": test.metrics, "test_ci": test_ci,
        "test_per_example": {k: np.asarray(v).tolist() for k, v in test.per_example.items()},
        "zero_shot": zero_shot, "valid_before_training": valid_before,
        "training_check": training_check(epochs, task.chance_loss(data, profile)),
        # Generation tasks: decode time, degenerate-output report, example outputs (None otherwise).
        "generation": test.extras or None,
        "peak_tensor_memory_mb": peak_bytes / 2**20, "peak_memory_method": memory_method(device),
        "cache_megabytes": cache_info["megabytes"] if cache_info else 0.0,
        "weights": str(run_dir / WEIGHTS),
        "provenance": provenance(model=variant.model, profile=profile.name, corpus_fingerprint=data.fingerprint,
                                 seed=variant.seed, device=device) | {"backbone": backbone.describe()},
    }
    record["wall_seconds"] = time.perf_counter() - started
    record["time_split"] = time_split(record["wall_seconds"], load=load_seconds, prepare=prepare_seconds,
                                      cache=cache_seconds, train=sum(e["train_seconds"] for e in epochs),
                                      eval=sum(e["eval_seconds"] for e in epochs), test=test_seconds)
    if main:
        _save_weights(task_model, run_dir, save_file)
        store.write_record(variant, record)
    accelerator.wait_for_everyone()
    return record


CHANCE_SHARE = 0.95  # a last-epoch training loss at or above this share of the chance loss sits at chance


def training_check(epochs: list[dict], chance_loss: float | None) -> dict:
    """Whether training learned: a run is at chance when its last epoch's mean training loss sits at the
    loss of a model that ignores its input (`Task.chance_loss`) and fell less than the gap to that
    share from its first epoch (a loss still falling through chance, as a fresh classifier's does, is
    learning). At chance the run is degenerate and gets no verdict."""
    first, final = epochs[0]["train_loss"], epochs[-1]["train_loss"]
    at_chance = bool(chance_loss is not None and chance_loss > 0 and final >= CHANCE_SHARE * chance_loss
                     and first - final < (1 - CHANCE_SHARE) * chance_loss)
    return {"first_train_loss": first, "final_train_loss": final, "chance_loss": chance_loss, "at_chance": at_chance,
            "rule": (f"degenerate when the last epoch's training loss is at least {CHANCE_SHARE:.0%} of the chance loss "
                     f"and at most {1 - CHANCE_SHARE:.0%} of it below the first epoch's")}


def time_split(wall_seconds: float, **parts: float) -> dict[str, float]:
    """Where a run's wall time went: the named parts and "other" (warm-up step, memory measurement,
    optimiser set-up, writing), which is what the parts leave of the wall time."""
    return {**parts, "other": max(wall_seconds - sum(parts.values()), 0.0)}


EARLY_STOPPING = ("the validation loss: it moves smoothly with learning, where a metric on a validation split of "
                  "tens of examples has a standard error larger than any improvement bar one could set")


def early_stopping_report(epochs: list[dict], best_epoch: int) -> dict:
    """Which epoch won on the validation loss, and by how much over the best of the others."""
    best = epochs[best_epoch - 1]["valid_loss"]
    others = [e["valid_loss"] for e in epochs if e["epoch"] != best_epoch]
    return {"signal": "validation loss", "why": EARLY_STOPPING, "best_epoch": best_epoch, "best_valid_loss": best,
            "lead_over_other_epochs": (min(others) - best) if others else None}


@torch.no_grad()
def _valid_loss(task, model, examples, tokenizer, profile, device) -> float:
    """The training loss on the validation split in eval mode (no dropout), batches in file order,
    weighted by their sizes: early stopping's signal."""
    from telly.tasks import batches, move_to

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for chunk in batches(examples, profile.batch_size):
        total += float(model(move_to(task.collate(chunk, tokenizer, profile), device))) * len(chunk)
        count += len(chunk)
    model.train(was_training)
    return total / count


def _evaluate(task, model, examples, tokenizer, profile):
    was_training = model.training
    model.eval()
    with torch.no_grad():
        result = task.evaluate(model, examples, tokenizer, profile, profile.batch_size)
    model.train(was_training)
    return result


def _save_weights(task_model, directory: Path, save_file) -> None:
    """backbone.safetensors (HF base-model keys) and head.safetensors, each written atomically."""
    from telly.methods import backbone_state_dict

    directory.mkdir(parents=True, exist_ok=True)
    head = {k: v.detach().cpu().contiguous() for k, v in task_model.head.state_dict().items()}
    for filename, tensors in ((WEIGHTS, backbone_state_dict(task_model)), (HEAD_WEIGHTS, head)):
        partial = directory / f".{filename}.partial"
        save_file(tensors, str(partial))
        partial.replace(directory / filename)


def _zero_shot(task, task_model, data, tokenizer, profile, model, store: RunStore, device, main) -> dict:
    """Test metrics of the pre-trained model (fresh head); one store document per (task, model,
    profile), current while the data and profile are the same."""
    from telly import stats
    from telly.store import provenance

    name = f"zero-shot/{task.name}__{slug(model)}__{profile.name}"
    inputs = {"task": task.name, "task_config": task.describe(), "model": model, "profile": profile.to_dict(),
              "data_fingerprint": data.fingerprint}
    stored = store.find_document(name, inputs)
    if stored is not None:
        return stored
    result = _evaluate(task, task_model, data.test, tokenizer, profile)
    document = {
        "task": task.name, "model": model, "profile": profile.name, "inputs": inputs,
        "data_fingerprint": data.fingerprint,
        "test": result.metrics,
        "test_ci": stats.bootstrap_ci(result.per_example, task.score, clusters=result.per_example.get("group"),
                                      samples=profile.bootstrap_samples),
        "test_per_example": {k: np.asarray(v).tolist() for k, v in result.per_example.items()},
        "provenance": provenance(model=model, profile=profile.name, corpus_fingerprint=data.fingerprint,
                                 device=device),
    }
    if main:
        store.write_document(name, document)
    return as_stored(document)


def summary(record: dict) -> str:
    ci = record["test_ci"][record["metric"]]
    return (f"{record['run']}: test {record['metric']} {ci['value']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}], "
            f"{record['parameters']['backbone_trainable'] / 1e6:.2f}M trainable backbone parameters, "
            f"epoch {record['epoch_seconds']:.1f}s, best at epoch {record['epochs_to_best']} "
            f"({record['time_to_best_seconds']:.1f}s)")
