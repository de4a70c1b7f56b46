"""The Telly-K trainer: fine-tune one variant (task, model, method, seed) and measure it.

Read top to bottom, `finetune` does (one `FineTuning` method per step):
  1. the run: its `telly.store.Variant` (task, model, method, seed, profile), where its record goes,
     the device and training precision under Accelerate (same code for `accelerate launch`);
  2. load the backbone (the method checks its freeze depth against it), the task data, the task model;
  3. before training: the task's preparation, the zero-shot test score and the validation score of
     the pre-trained model when the task allows it (code search); Telly-auto's pilot chooses K
     (selectors.py); the method sets what trains;
  4. frozen-prefix cache: for cached Telly-K run embeddings + blocks 0..K-1 once over the training
     split (prefix_cache.py), and once per validation and test row when first evaluated (PrefixMemo);
  5. AdamW (the profile's weight decay, gradient norm clipped) + linear warmup/decay, after one
     untimed warm-up step on a copy of the model that also measures peak memory;
  6. train, timing each epoch's training apart from its validation loss, early stopping on that loss;
  7. restore the best epoch; score the validation split once (where a task calibrates, its decision
     threshold is chosen here) and the test set, with bootstrap 95% CIs (stats.py);
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
from typing import NamedTuple

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from safetensors.torch import save_file
from transformers import get_linear_schedule_with_warmup

from telly import backbones, stats
from telly.batching import batches, move_to
from telly.features import precision_autocast
from telly.jsonio import as_stored
from telly.methods import TellyAuto, backbone_state_dict
from telly.prefix_cache import PrefixMemo, build_prefix_cache
from telly.profiles import Profile
from telly.progress import progress_bar
from telly.selectors import (
    GRADIENT_THRESHOLD,
    MEASURES,
    GradientNorms,
    deepest_quiet,
    deepest_still,
    movement_curve,
    piloted,
    pooled_layers,
)
from telly.store import HEAD_WEIGHTS, WEIGHTS, RunStore, Variant, as_store, provenance, slug
from telly.tasks import Task, get_task

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
    return {"name": "AdamW", "learning_rate": profile.training.learning_rate, "head_learning_rate": head_learning_rate,
            "eps": ADAM_EPS, "weight_decay": profile.training.weight_decay, "max_grad_norm": profile.training.max_grad_norm,
            "schedule": f"linear warm-up over {profile.training.warmup_ratio:.0%} of the steps, then linear decay to 0",
            "replication_package": REPLICATION_OPTIMIZER}


def optimizer_factory(task, profile: Profile, head_learning_rate: float):
    """model -> AdamW over its trainable parameters (the head at its own learning rate, the profile's
    weight decay) whose every step first clips the gradients' global norm at profile.training.max_grad_norm."""
    if not profile.training.max_grad_norm > 0:
        raise ValueError(f"profile {profile.name!r}: max_grad_norm must be positive, got {profile.training.max_grad_norm}")
    if profile.training.weight_decay < 0:
        raise ValueError(f"profile {profile.name!r}: weight_decay must be >= 0, got {profile.training.weight_decay}")

    def make(task_model: torch.nn.Module) -> torch.optim.Optimizer:
        head_ids = {id(p) for p in task_model.head.parameters()}
        groups = [{"params": [p for p in task_model.parameters() if p.requires_grad and id(p) not in head_ids]},
                  {"params": [p for p in task_model.head.parameters() if p.requires_grad], "lr": head_learning_rate}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=profile.training.learning_rate, eps=ADAM_EPS,
                                      weight_decay=profile.training.weight_decay)
        trained = [p for g in optimizer.param_groups for p in g["params"]]

        def clip(_optimizer, _args, _kwargs) -> None:
            torch.nn.utils.clip_grad_norm_(trained, profile.training.max_grad_norm)

        # A pre-step hook clips wherever a step is taken (the trainer, its warm-up step, the bench),
        # after a mixed-precision scaler has unscaled the gradients.
        optimizer.register_step_pre_hook(clip)
        return optimizer
    return make


# ----------------------------------------------------------------------------- the run

def finetune(variant: Variant, store: RunStore | str | Path = "runs", *, save_epoch_checkpoints: bool = False,
             dropout: float | None = None, head_learning_rate: float | None = None,
             mixed_precision: str | None = None, progress: bool = True,
             on_epoch: Callable[[dict, int], None] | None = None) -> dict:
    """Fine-tune `variant` under `variant.profile` and write its record (returned) and best weights
    into `store`.

    dropout: override every dropout probability (0.0 makes runs identical across process counts).
    head_learning_rate: the task head's learning rate (default: the task's head_lr_scale x the
    profile's). mixed_precision: "bf16" runs every training forward pass (and the frozen-prefix
    cache's) under bf16 autocast, "no" in float32 (default: the profile's); validation, test and
    decoding always run in float32. on_epoch(epoch_summary, max_epochs) is called after each epoch's
    validation (a live progress bar, for example).
    """
    run = FineTuning(variant, as_store(store), mixed_precision=mixed_precision, progress=progress)  # 1
    run.load(dropout)  # 2
    run.before_training()  # 3
    run.build_cache()  # 4
    run.set_up_optimiser(head_learning_rate)  # 5
    run.train(save_epoch_checkpoints=save_epoch_checkpoints, on_epoch=on_epoch)  # 6
    run.test()  # 7
    return run.finish()  # 8


def pilot_selection(variant: Variant, store: RunStore | str | Path = "runs") -> dict:
    """Telly-auto's pilot alone (steps 1-3 of `finetune`; nothing trains after it, no record is
    written): the selection a run of `variant` would record (its movement curve, chosen K, steps, seconds)."""
    return pilot_states(variant, store).selection


class Pilot(NamedTuple):
    """Telly-auto's pilot: its selection, the pooled states (L+1, n, d) its curve compares (the
    pre-trained model's and the pilot's, on the validation inputs), and the fingerprint of its data."""

    selection: dict
    before: np.ndarray
    after: np.ndarray
    data_fingerprint: str


def pilot_states(variant: Variant, store: RunStore | str | Path = "runs") -> Pilot:
    """`pilot_selection`, with the states its curve compares."""
    if not isinstance(variant.method, TellyAuto):
        raise ValueError(f"{variant.run_id}: a pilot needs method telly-auto, got {variant.method.name}")
    run = FineTuning(variant, as_store(store), mixed_precision=None, progress=False)
    run.load(None)
    run.before_training()
    return Pilot(run.selection, *run.pilot_states, run.data.fingerprint)


class FineTuning:
    """The state of one fine-tuning run, one method per numbered step of `finetune`."""

    def __init__(self, variant: Variant, store: RunStore, *, mixed_precision: str | None, progress: bool) -> None:
        # 1. The run: what it is, where its record goes, the device and the training precision.
        self.started, self.started_cpu = time.perf_counter(), time.process_time()
        self.variant, self.store, self.profile = variant, store, variant.profile
        self.task = task_of(variant)
        self.method, self.freeze = variant.method, variant.freeze
        self.name, self.run_dir = variant.run_id, store.run_dir(variant)
        self.mixed_precision = (self.profile.training.mixed_precision if mixed_precision is None
                                else mixed_precision)
        # Autocast is ours (train_step's `autocast`), not Accelerate's: Accelerate would wrap only
        # `forward`, while the warm-up step, the prefix cache and the bench need the same context.
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(), mixed_precision="no",
            dataloader_config=DataLoaderConfiguration(split_batches=True),  # batch_size = global batch
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        self.device, self.main = self.accelerator.device, self.accelerator.is_main_process
        self.progress = progress and self.main
        self.autocast = precision_autocast(self.mixed_precision, self.device)
        set_seed(variant.seed)

    def load(self, dropout: float | None) -> None:
        """2. Backbone, data and task model."""
        tick = time.perf_counter()
        self.backbone = backbones.load(self.variant.model)
        self.method.check_depth(self.backbone.num_layers)
        self.data = self.task.load_data(self.profile)
        self.task_model = self.task.build_model(self.backbone)
        self.dropout = dropout
        if dropout is not None:
            _set_dropout(self.task_model, dropout)
        self.tokenizer = self.backbone.tokenizer
        self.task_model.to(self.device)
        self.load_seconds = time.perf_counter() - tick

    def before_training(self) -> None:
        """3. What the pre-trained model needs and scores: the task's preparation on the training
        split, the zero-shot test score and the validation score before training (a fine-tune that
        ends below it unlearned the task); then the method decides what trains."""
        tick = time.perf_counter()
        task, model, profile = self.task, self.task_model, self.profile
        scored = task.has_zero_shot(self.backbone)
        self.valid_before = _prepared(task, model, self.data, self.tokenizer, profile, self.variant.model, self.store,
                                      self.main, score_valid=scored)
        self.zero_shot = _zero_shot(task, model, self.data, self.tokenizer, profile, self.variant.model,
                                    self.store, self.device, self.main) if scored else None
        self.prepare_seconds = time.perf_counter() - tick
        self.selection, self.pilot_seconds = None, 0.0
        if isinstance(self.method, TellyAuto):
            self.choose_depth()
        self.method_config = self.method.apply(model)
        self.trainable, self.total = _count(model.parameters())
        self.backbone_trainable, self.backbone_total = _count(model.backbone.parameters())
        model.to(self.device)

    def choose_depth(self) -> None:
        """Telly-auto: full fine-tuning of a copy for the pilot's share of the first epoch, each layer's
        movement from the pre-trained model on the validation inputs, K from the threshold; the run
        then trains cached Telly-K from the pre-trained weights (the copy is dropped). The pilot's time
        is part of the run's."""
        tick = time.perf_counter()
        auto, training, task = self.method, self.profile.training, self.task
        pilot = copy.deepcopy(self.task_model)
        optimizer = optimizer_factory(task, self.profile, task.head_lr_scale * training.learning_rate)(pilot)
        steps = max(1, round(auto.pilot_share * -(-len(self.data.train) // training.batch_size)))
        order = np.random.default_rng([self.variant.seed, 0]).permutation(len(self.data.train)).tolist()
        pilot.train()
        losses, gradients = [], GradientNorms(piloted(self.backbone, pilot.backbone).layers)
        for start in range(0, steps * training.batch_size, training.batch_size):
            rows = [self.data.train[i] for i in order[start:start + training.batch_size]]
            batch = move_to(task.collate(rows, self.tokenizer, self.profile), self.device)
            losses.append(train_step(pilot, batch, optimizer, autocast=self.autocast))
        gradients.remove()
        shares = gradients.curve()
        inputs = [move_to(field, self.device) for chunk in batches(self.data.valid, training.batch_size)
                  for field in task.collate(chunk, self.tokenizer, self.profile)["inputs"].values()]
        self.pilot_states = (pooled_layers(self.backbone, inputs),
                             pooled_layers(piloted(self.backbone, pilot.backbone), inputs))
        curve = movement_curve(*self.pilot_states)
        self.freeze = deepest_still(curve, auto.threshold)
        self.method = auto.resolved(self.freeze)
        self.pilot_seconds = time.perf_counter() - tick
        self.selection = {"method": auto.name, "pilot_share": auto.pilot_share, "calibration": auto.calibration,
                          "pilot_steps": steps,
                          "pilot_losses": losses, "threshold": auto.threshold, "measures": list(MEASURES),
                          "inputs": f"{len(self.data.valid)} validation examples, every text field",
                          "curve": curve, "chosen_freeze": self.freeze, "chosen": self.method.label,
                          "pilot_seconds": self.pilot_seconds,
                          # The other selectors issue 23 compares, read off the same pilot:
                          "alternatives": {
                              "gradient": {"shares": shares, "threshold": GRADIENT_THRESHOLD,
                                           "freeze": deepest_quiet(shares, GRADIENT_THRESHOLD),
                                           "rule": "blocks whose mean relative gradient norm stayed under the "
                                                   "threshold's share of the busiest block's"},
                              "half": {"freeze": self.backbone.num_layers // 2, "rule": "K = L/2, fixed"}}}

    def build_cache(self) -> None:
        """4. Frozen-prefix cache: the bottom K blocks run once, here, not in every epoch."""
        self.prefix_cache, self.cache_seconds = None, 0.0
        if self.method.cache:
            _sync(self.device)
            tick = time.perf_counter()
            with self.autocast or contextlib.nullcontext():  # the frozen blocks as uncached training runs them
                self.prefix_cache = build_prefix_cache(
                    self.task_model.backbone, self.data.train, lambda rows: self.task.collate(rows, self.tokenizer,
                                                                                               self.profile),
                    self.freeze, batch_size=self.profile.training.batch_size,
                    memory_mb=self.profile.training.cache_memory_mb, device=self.device,
                    disk_dir=backbones.cache_dir(), show_progress=self.progress)
            _sync(self.device)
            self.cache_seconds = time.perf_counter() - tick
        self.state_dtype = next(self.task_model.parameters()).dtype
        self.task_model.prefix_memo = (PrefixMemo(self.freeze, self.profile.training.cache_memory_mb)
                                       if self.method.cache else None)

    def make_batch(self, indices: list[int]) -> dict:
        """Training rows by index, their bottom blocks' states from the cache when there is one."""
        batch = self.task.collate([self.data.train[i] for i in indices], self.tokenizer, self.profile)
        if self.prefix_cache is not None:
            batch["inputs"] = self.prefix_cache.states(indices, self.state_dtype)
        return batch

    def set_up_optimiser(self, head_learning_rate: float | None) -> None:
        """5. Optimiser and schedule over every epoch's steps, after one untimed warm-up step on a copy
        of the model that measures peak memory. The head may learn faster than the pre-trained
        weights (Task.head_lr_scale, e.g. a randomly initialised classifier)."""
        training, train = self.profile.training, self.data.train
        self.steps_per_epoch = -(-len(train) // training.batch_size)
        self.head_learning_rate = head_learning_rate or self.task.head_lr_scale * training.learning_rate
        make_optimizer = optimizer_factory(self.task, self.profile, self.head_learning_rate)
        cache = self.prefix_cache
        in_memory_cache = cache.nbytes() if cache is not None and cache.storage == "memory" else 0
        first_batch = move_to(self.make_batch(list(range(min(training.batch_size, len(train))))), self.device)
        self.peak_bytes = step_peak_memory(self.task_model, make_optimizer, first_batch, self.device,
                                           cache_bytes=in_memory_cache, autocast=self.autocast)
        optimizer = make_optimizer(self.task_model)
        total_steps = self.steps_per_epoch * training.epochs
        scheduler = get_linear_schedule_with_warmup(optimizer, int(training.warmup_ratio * total_steps), total_steps)
        self.wrapped, self.optimizer, self.scheduler = self.accelerator.prepare(self.task_model, optimizer, scheduler)

    def train(self, *, save_epoch_checkpoints: bool, on_epoch: Callable[[dict, int], None] | None) -> None:
        """6. Train; the validation loss after each epoch; keep the best epoch's trainable weights
        (early stopping on that loss). The validation metrics wait for step 7: they choose nothing
        here, and decoding them every epoch would cost a generation task more than its training."""
        training, model, device = self.profile.training, self.task_model, self.device
        self.epochs, self.best, since_best = [], None, 0
        for epoch in range(1, training.epochs + 1):
            order = np.random.default_rng([self.variant.seed, epoch]).permutation(len(self.data.train)).tolist()
            loader = self.accelerator.prepare_data_loader(torch.utils.data.DataLoader(
                order, batch_size=training.batch_size, shuffle=False, collate_fn=self.make_batch))
            self.wrapped.train()
            losses = []
            _sync(device)
            tick = time.perf_counter()
            for batch in progress_bar(loader, desc=f"{self.name} epoch {epoch}", disable=not self.progress,
                                      leave=False):
                losses.append(train_step(self.wrapped, move_to(batch, device), self.optimizer, self.scheduler,
                                         backward=self.accelerator.backward, autocast=self.autocast))
            _sync(device)
            train_seconds = time.perf_counter() - tick
            tick = time.perf_counter()
            valid_loss = _valid_loss(self.task, model, self.data.valid, self.tokenizer, self.profile, device)
            eval_seconds = time.perf_counter() - tick
            self.epochs.append({"epoch": epoch, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
                                "train_loss": float(np.mean(losses)), "valid_loss": valid_loss})
            if on_epoch is not None:
                on_epoch(self.epochs[-1], training.epochs)
            if save_epoch_checkpoints and self.main:
                _save_weights(model, self.run_dir / f"epoch-{epoch}")
            if self.best is None or valid_loss < self.best["valid_loss"]:
                self.best, since_best = self.epochs[-1], 0
                self.best_state = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
            else:
                since_best += 1
                if since_best >= training.patience:
                    break
        self.cache_info = None
        if self.prefix_cache is not None:
            self.cache_info = self.prefix_cache.describe()
            self.prefix_cache.close()

    def test(self) -> None:
        """7. At the best epoch: the validation metrics (and the task's calibration, e.g. a clone
        threshold, chosen on them), then the test set with bootstrap CIs over test examples; rows
        sampled together (a clone pair's source function: "group") resample together."""
        tick = time.perf_counter()
        self.task_model.load_state_dict(self.best_state, strict=False)
        self.valid = self.task.calibrate(self.task_model, _evaluate(self.task, self.task_model, self.data.valid,
                                                                    self.tokenizer, self.profile))
        self.valid_seconds = time.perf_counter() - tick
        tick = time.perf_counter()
        self.test_result = _evaluate(self.task, self.task_model, self.data.test, self.tokenizer, self.profile)
        per_example = self.test_result.per_example
        self.test_ci = stats.bootstrap_ci(per_example, self.task.score, clusters=per_example.get("group"),
                                          samples=self.profile.statistics.bootstrap_samples, seed=self.variant.seed)
        self.test_seconds = time.perf_counter() - tick
        memo, self.task_model.prefix_memo = self.task_model.prefix_memo, None
        self.memo_info = memo.describe() if memo is not None else None

    def finish(self) -> dict:
        """8. Weights, then the record (last: its presence means the run finished)."""
        variant, profile, task, epochs = self.variant, self.profile, self.task, self.epochs
        best_epoch, use_cache, test = self.best["epoch"], self.method.cache, self.test_result
        record = {
            "run": self.name, "task": task.name, "model": variant.model, "method": variant.method.name,
            "freeze": self.freeze, "selection": self.selection, "seed": variant.seed, "profile": profile.name,
            "profile_settings": as_stored(profile.to_dict()), "status": "finished", "label": variant.label,
            "method_config": self.method_config, "task_config": task.config.to_dict(),
            "cache": self.cache_info, "uses_cache": use_cache, "evaluation_prefix_memo": self.memo_info,
            "dropout_override": self.dropout,
            "mixed_precision": {"training": self.mixed_precision,
                                "prefix_cache": self.mixed_precision if use_cache else None,
                                "evaluation": "no"},  # evaluation: validation, test, zero-shot, decoding
            "metric": task.metric,
            "data": {"source": self.data.source, "fingerprint": self.data.fingerprint, "sizes": self.data.sizes(),
                     "path": variant.data_path},
            "parameters": {"trainable": self.trainable, "total": self.total,
                           "backbone_trainable": self.backbone_trainable, "backbone_total": self.backbone_total,
                           "num_layers": self.backbone.num_layers},
            "batch_size": profile.training.batch_size, "num_processes": self.accelerator.num_processes,
            "learning_rate": profile.training.learning_rate, "head_learning_rate": self.head_learning_rate,
            "optimizer": optimizer_settings(profile, self.head_learning_rate),
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": epochs, "epochs_run": len(epochs), "epochs_to_best": best_epoch,
            "early_stopping": early_stopping_report(epochs, best_epoch),
            "cache_seconds": self.cache_seconds,
            "epoch_seconds": float(np.mean([e["train_seconds"] for e in epochs])),
            "time_to_best_seconds": self.cache_seconds + sum(e["train_seconds"] for e in epochs[:best_epoch]),
            "warm_up": "one untimed training step on a copy of the model before the first timed epoch",
            "valid": self.valid.metrics, "calibration": self.valid.extras.get("calibration"),
            "validation": VALIDATION,
            "test": test.metrics, "test_ci": self.test_ci,
            "test_per_example": {k: np.asarray(v).tolist() for k, v in test.per_example.items()},
            "zero_shot": self.zero_shot, "valid_before_training": self.valid_before,
            "training_check": training_check(epochs, task.chance_loss(self.data, profile)),
            # Generation tasks: decode time, degenerate-output report, example outputs (None otherwise).
            "generation": test.extras or None,
            "peak_tensor_memory_mb": self.peak_bytes / 2**20, "peak_memory_method": memory_method(self.device),
            "cache_megabytes": self.cache_info["megabytes"] if self.cache_info else 0.0,
            "weights": str(self.run_dir / WEIGHTS),
            "provenance": provenance(model=variant.model, profile=profile.name,
                                     corpus_fingerprint=self.data.fingerprint, seed=variant.seed,
                                     device=self.device) | {"backbone": self.backbone.describe()},
        }
        record["wall_seconds"] = time.perf_counter() - self.started
        # CPU time of all this process's threads: well under wall x threads means another process shared the CPU
        record["process_cpu_seconds"] = time.process_time() - self.started_cpu
        record["time_split"] = time_split(record["wall_seconds"], load=self.load_seconds,
                                          prepare=self.prepare_seconds, pilot=self.pilot_seconds,
                                          cache=self.cache_seconds,
                                          train=sum(e["train_seconds"] for e in epochs),
                                          eval=sum(e["eval_seconds"] for e in epochs) + self.valid_seconds,
                                          test=self.test_seconds)
        if self.main:
            _save_weights(self.task_model, self.run_dir)
            self.store.write_record(variant, record)
        self.accelerator.wait_for_everyone()
        return record


def task_of(variant: Variant) -> Task:
    """The task `variant` runs, on its data path when it names one."""
    return get_task(variant.task, data_path=variant.data_path)


def finished_run(variant: Variant, store: RunStore | str | Path) -> dict | None:
    """The stored record of `variant` when it is current: finished under its profile's settings and
    its task's current config."""
    return as_store(store).find(variant, task_of(variant).config.to_dict())


VALIDATION = ("the loss after every epoch (early stopping); the metrics, and a task's calibration, once, at the "
              "best epoch's weights")
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
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for chunk in batches(examples, profile.training.batch_size):
        total += float(model(move_to(task.collate(chunk, tokenizer, profile), device))) * len(chunk)
        count += len(chunk)
    model.train(was_training)
    return total / count


def _evaluate(task, model, examples, tokenizer, profile):
    was_training = model.training
    model.eval()
    with torch.no_grad():
        result = task.evaluate(model, examples, tokenizer, profile, profile.training.batch_size)
    model.train(was_training)
    return result


def _save_weights(task_model, directory: Path) -> None:
    """backbone.safetensors (HF base-model keys) and head.safetensors, each written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    head = {k: v.detach().cpu().contiguous() for k, v in task_model.head.state_dict().items()}
    for filename, tensors in ((WEIGHTS, backbone_state_dict(task_model)), (HEAD_WEIGHTS, head)):
        partial = directory / f".{filename}.partial"
        save_file(tensors, str(partial))
        partial.replace(directory / filename)


def memo_names(task: str, model: str, profile: str) -> dict[str, str]:
    """The store documents every run of (task, model, profile) shares: its preparation and validation
    score before training (`_prepared`), and its zero-shot test score (`_zero_shot`)."""
    return {memo: f"{memo}/{task}__{slug(model)}__{profile}" for memo in ("prepared", "zero-shot")}


def _prepared(task, task_model, data, tokenizer, profile, model, store: RunStore, main, *,
              score_valid: bool) -> dict | None:
    """Run the task's preparation (`Task.prepare`: what the fresh head takes from the training split)
    and score the pre-trained model on the validation split, or read both back: one store document per
    (task, model, profile), current while the data, task config and profile are the same, so that
    every seed and depth of a sweep reuses what the first run computed. Returns the validation
    metrics (None without `score_valid`)."""
    name = memo_names(task.name, model, profile.name)["prepared"]
    inputs = {"task": task.name, "task_config": task.describe(), "model": model, "profile": profile.to_dict(),
              "data_fingerprint": data.fingerprint, "valid_scored": score_valid}
    stored = store.find_document(name, inputs)
    if stored is not None:
        for key, buffer in task_model.head.named_buffers():
            buffer.copy_(torch.tensor(stored["head_buffers"][key], dtype=buffer.dtype))
        return stored["valid"]
    task.prepare(task_model, data, tokenizer, profile)
    valid = _evaluate(task, task_model, data.valid, tokenizer, profile).metrics if score_valid else None
    if main:
        store.write_document(name, {"task": task.name, "model": model, "profile": profile.name, "inputs": inputs,
                                    "head_buffers": {k: v.detach().cpu().tolist()
                                                     for k, v in task_model.head.named_buffers()},
                                    "valid": valid})
    return valid


def _zero_shot(task, task_model, data, tokenizer, profile, model, store: RunStore, device, main) -> dict:
    """Test metrics of the pre-trained model (fresh head); one store document per (task, model,
    profile), current while the data and profile are the same."""
    name = memo_names(task.name, model, profile.name)["zero-shot"]
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
                                      samples=profile.statistics.bootstrap_samples),
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
