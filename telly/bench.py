"""Benchmarks: what freezing saves, measured side by side in one run on one machine.

`telly bench --profile P --out DIR` writes DIR/bench.json and DIR/bench.md with
  * training: one epoch's train time and peak memory of full fine-tuning, Telly-K uncached and
    cached (K in 0, L/2, L-2, L-1), LoRA and BitFit, on `unixcoder-shape` and on `--model`;
    ratios to full fine-tuning, the compute limit (L-K)/L beside every cached ratio, and the
    one-time cost of building the frozen-prefix cache with the epoch after which it pays back;
  * probing: all layers' features from one forward pass against L+1 truncated forwards;
  * similarity: RSA, linear CKA and debiased CKA over 13 layers of n x 768 features;
  * corpus: loading the corpus cold (an empty TELLY_CACHE) and from its cache.

How it measures (the same for every section):
  * Variants are interleaved: repeat r runs every variant once, in an order rotated by r, so
    drifting machine load hits all of them; each figure is the median over the repeats.
  * The "epoch" of the training rows is a fixed dataset: `bench_steps` batches of
    `bench_batch_size` code-search examples (code cut at `bench_code_tokens` tokens, queries at
    `max_text_tokens`), trained with AdamW. One untimed warm-up step precedes each timed epoch.
    Ratios and the cache's payback (in epochs) do not depend on the dataset size: the cache is
    built over the same examples one epoch trains on, so both scale with it.
  * Peak memory is the peak of memory held by tensors while training (weights, gradients,
    optimizer state, activations, an in-memory prefix cache). On CUDA: torch.cuda
    max_memory_allocated over one training step. On CPU: the bytes of the variant's live tensors
    (parameters, buffers, optimizer state, in-memory cache) at the start of one training step,
    plus the peak of the allocations and frees the torch profiler (profile_memory=True) records
    during that step. Unlike process RSS, this does not depend on what earlier variants left in
    the allocator, and it excludes the interpreter and libraries, like the CUDA figure.
  * On CUDA the forward passes run under bf16 autocast (AMP); on CPU everything is float32.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from telly.profiles import Profile, get_profile

# The reference records the README's table comes from (a checkout's bench/results/).
REFERENCE_DIR = Path(__file__).resolve().parent.parent / "bench" / "results"
SHAPE_MODEL = "unixcoder-shape"  # the paper's backbone size; the acceptance targets apply to it
BENCH_TASK = "code-search"
SECTIONS = ("corpus", "similarity", "probing", "training")
SIMILARITY_LAYERS = 13
SIMILARITY_DIM = 768
# Acceptance targets (issue 8), stated for the UniXcoder shape.
TARGET_CACHED_EPOCH_RATIO = 0.25  # cached Telly-(L-2) epoch time / full
TARGET_LIMIT_FACTOR = 1.3  # cached Telly-K ratio / compute limit, for every K >= L/2
TARGET_CACHED_MEMORY_RATIO = 0.5  # cached Telly-(L-2) peak memory / full


# ----------------------------------------------------------------------------- the harness

class Stopwatch:
    """Named wall-clock durations of one variant run (synchronising the device around each)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter,
                 sync: Callable[[], None] | None = None) -> None:
        self.clock = clock
        self.sync = sync or (lambda: None)
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def measure(self, name: str):
        self.sync()
        start = self.clock()
        yield
        self.sync()
        self.seconds[name] = self.seconds.get(name, 0.0) + self.clock() - start


@dataclass
class Runs:
    """Every repeat's durations of one variant, and what the variant reported about itself."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def median(self, name: str) -> float:
        return float(statistics.median(self.seconds[name]))


Variant = Callable[[Stopwatch, int], "dict | None"]


def interleave(variants: Mapping[str, Variant], repeats: int, *,
               clock: Callable[[], float] = time.perf_counter, sync: Callable[[], None] | None = None,
               desc: str = "bench", progress: bool = True) -> dict[str, Runs]:
    """Run every variant `repeats` times, interleaved: repeat r runs all of them once, the order
    rotated by r so that no variant always runs first. A variant is called as fn(stopwatch, repeat),
    times what it wants with `stopwatch.measure(name)` and may return a dict of facts (kept in
    Runs.info; later repeats update earlier ones)."""
    from tqdm.auto import tqdm

    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if not variants:
        raise ValueError("no variants to measure")
    names = list(variants)
    runs = {name: Runs() for name in names}
    bar = tqdm(total=repeats * len(names), desc=desc, disable=not progress, leave=False)
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            bar.set_postfix_str(name)
            watch = Stopwatch(clock, sync)
            info = variants[name](watch, repeat)
            if not watch.seconds:
                raise RuntimeError(f"variant {name!r} measured nothing (use stopwatch.measure)")
            for measure, seconds in watch.seconds.items():
                runs[name].seconds.setdefault(measure, []).append(seconds)
            runs[name].info.update(info or {})
            bar.update()
    bar.close()
    return runs


def ratio_to(values: Mapping[str, float], reference: str) -> dict[str, float]:
    """Every value divided by the reference variant's value."""
    if reference not in values:
        raise ValueError(f"reference variant {reference!r} is not among {sorted(values)}")
    base = values[reference]
    if not base > 0:
        raise ValueError(f"reference variant {reference!r} has value {base!r}; ratios need a positive one")
    return {name: value / base for name, value in values.items()}


def payback_epochs(build_seconds: float, cached_epoch: float, other_epoch: float) -> float | None:
    """Epochs after which building the cache once has paid for itself against `other_epoch`
    (C + E*cached < E*other  <=>  E > C / (other - cached)); None when it never does."""
    saving = other_epoch - cached_epoch
    return build_seconds / saving if saving > 0 else None


# ----------------------------------------------------------------------------- memory

def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated over one training step (all tensors on the GPU)"
    return ("bytes of the variant's live tensors at the start of one training step + the peak of the "
            "allocations the torch profiler (profile_memory=True) records during it")


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (shared storage counted once)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        if tensor is None or tensor.device.type != "cpu":
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


def peak_memory_bytes(step: Callable[[], None], device: torch.device,
                      resident: Callable[[], int]) -> int:
    """Peak tensor memory of one call of `step` (see the module docstring). `resident()` gives the
    bytes of the tensors alive before the step (CPU only: CUDA counts them itself)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    before = resident()
    return before + profiled_peak_bytes(step)


# ----------------------------------------------------------------------------- training

@dataclass(frozen=True)
class TrainVariant:
    method: str  # full | telly | lora | bitfit (telly.baselines.METHODS)
    freeze: int = -1
    cached: bool = False

    @property
    def name(self) -> str:
        if self.method != "telly":
            return self.method
        return f"telly-{self.freeze}" + ("-cached" if self.cached else "")

    @property
    def label(self) -> str:
        names = {"full": "Full fine-tuning", "lora": "LoRA", "bitfit": "BitFit"}
        if self.method != "telly":
            return names[self.method]
        return f"Telly-{self.freeze} " + ("cached" if self.cached else "uncached")


def freeze_depths(num_layers: int) -> list[int]:
    """The K the bench measures: 0, L/2, L-2 and L-1."""
    if num_layers < 2:
        raise ValueError(f"the training bench needs a model with 2+ layers, got {num_layers}")
    return sorted({0, num_layers // 2, num_layers - 2, num_layers - 1})


def training_variants(num_layers: int) -> list[TrainVariant]:
    depths = freeze_depths(num_layers)
    return [TrainVariant("full"),
            *(TrainVariant("telly", k, cached) for k in depths for cached in (False, True)),
            TrainVariant("lora"), TrainVariant("bitfit")]


def compute_limit(num_layers: int, freeze: int) -> float:
    """(L-K)/L: the share of full fine-tuning's block work left when blocks 0..K-1 never run."""
    return (num_layers - freeze) / num_layers


def paper_estimate(num_layers: int, freeze: int) -> float:
    """(L + 2(L-K)) / 3L: uncached Telly still runs all L blocks forward (backward ~ 2 forwards)."""
    return (num_layers + 2 * (num_layers - freeze)) / (3 * num_layers)


def bench_profile(profile: Profile) -> Profile:
    """The profile the training rows run with: the bench's batch and code length."""
    steps, batch = profile.bench_steps, profile.bench_batch_size
    return replace(profile, batch_size=batch, max_code_tokens=profile.bench_code_tokens,
                   train_examples=steps * batch, valid_examples=batch, test_examples=batch)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync_for(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class TrainingWorkload:
    """One backbone's training rows: every variant trains a fresh copy of the same weights on the
    same batches, through the trainer's public pieces (task model, apply_method, prefix cache)."""

    def __init__(self, backbone, profile: Profile, device: torch.device, examples: Sequence | None = None):
        from telly.tasks import get_task

        self.backbone = backbone
        self.profile = bench_profile(profile)
        self.device = device
        self.task = get_task(BENCH_TASK)
        self.examples = list(examples) if examples is not None else self.task.load_data(self.profile).train
        batch, steps = self.profile.batch_size, self.profile.bench_steps
        if len(self.examples) < steps * batch:
            raise ValueError(f"the training bench needs bench_steps x bench_batch_size = {steps} x {batch} "
                             f"examples for one epoch, got {len(self.examples)}")
        self.examples = self.examples[:steps * batch]
        self.batches = [list(range(start, start + batch)) for start in range(0, steps * batch, batch)]

    def collate(self, rows):
        return self.task.collate(rows, self.backbone.tokenizer, self.profile)

    def run(self, variant: TrainVariant, watch: Stopwatch, measure_memory: bool) -> dict:
        """Build the variant, (build its cache,) warm up one step, time one epoch; optionally
        measure one more step's peak memory. Returns the variant's facts."""
        from telly.backbones import cache_dir
        from telly.baselines import apply_method
        from telly.prefix_cache import build_prefix_cache
        from telly.tasks import move_to

        backbone = replace(self.backbone, model=copy.deepcopy(self.backbone.model))
        model = self.task.build_model(backbone)
        apply_method(model, variant.method, variant.freeze)
        trainable = [p for p in model.parameters() if p.requires_grad]
        model.to(self.device).train()
        optimizer = torch.optim.AdamW(trainable, lr=self.profile.learning_rate, eps=1e-8)
        cache = None
        if variant.cached:
            with watch.measure("cache_seconds"), _autocast(self.device):
                cache = build_prefix_cache(
                    model.backbone, self.examples, self.collate, variant.freeze,
                    batch_size=self.profile.batch_size, memory_mb=self.profile.cache_memory_mb,
                    device=self.device, disk_dir=cache_dir(), show_progress=False)
        state_dtype = next(model.parameters()).dtype

        def step(indices: list[int]) -> None:
            batch = self.collate([self.examples[i] for i in indices])
            if cache is not None:
                batch["inputs"] = cache.states(indices, state_dtype)
            with _autocast(self.device):
                loss = model(move_to(batch, self.device))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step(self.batches[0])  # warm-up: first-call allocations, optimizer state
        with watch.measure("epoch_seconds"):
            for indices in self.batches:
                step(indices)
        info = {"trainable_parameters": sum(p.numel() for p in trainable),
                "total_parameters": sum(p.numel() for p in model.parameters())}
        if cache is not None:
            info |= {"cache_megabytes": cache.nbytes() / 2**20, "cache_storage": cache.storage}
        if measure_memory:
            def resident() -> int:
                state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
                held = cache.nbytes() if cache is not None and cache.storage == "memory" else 0
                return tensor_bytes([*model.parameters(), *model.buffers(), *state]) + held

            info["peak_memory_bytes"] = peak_memory_bytes(lambda: step(self.batches[0]), self.device, resident)
        if cache is not None:
            cache.close()
        return info


def training_rows(backbone, profile: Profile, device: torch.device, *, examples: Sequence | None = None,
                  clock: Callable[[], float] = time.perf_counter, progress: bool = True) -> tuple[list[dict], list[dict]]:
    """(one row per training variant, one row per cached depth about the cache's cost)."""
    workload = TrainingWorkload(backbone, profile, device, examples)
    num_layers = backbone.num_layers
    variants = {v.name: v for v in training_variants(num_layers)}
    runs = interleave({name: (lambda watch, repeat, v=v: workload.run(v, watch, measure_memory=repeat == 0))
                       for name, v in variants.items()},
                      profile.bench_repeats, clock=clock, sync=_sync_for(device),
                      desc=f"training {backbone.name}", progress=progress)
    epoch = {name: r.median("epoch_seconds") for name, r in runs.items()}
    memory = {name: float(r.info["peak_memory_bytes"]) for name, r in runs.items()}
    time_ratio, memory_ratio = ratio_to(epoch, "full"), ratio_to(memory, "full")
    rows = []
    for name, variant in variants.items():
        run = runs[name]
        limit = compute_limit(num_layers, variant.freeze) if variant.cached else None
        rows.append({
            "model": backbone.name, "num_layers": num_layers, "variant": name, "label": variant.label,
            "method": variant.method, "freeze": variant.freeze, "cached": variant.cached,
            "epoch_seconds": epoch[name], "epoch_seconds_runs": run.seconds["epoch_seconds"],
            "ratio_to_full": time_ratio[name],
            "compute_limit": limit,
            "ratio_to_limit": time_ratio[name] / limit if limit else None,
            "paper_estimate": (paper_estimate(num_layers, variant.freeze)
                               if variant.method == "telly" and not variant.cached else None),
            "peak_memory_mb": memory[name] / 2**20, "peak_memory_ratio": memory_ratio[name],
            "trainable_parameters": run.info["trainable_parameters"],
            "total_parameters": run.info["total_parameters"],
            "cache_seconds": run.median("cache_seconds") if variant.cached else None,
            "cache_megabytes": run.info.get("cache_megabytes"),
            "cache_storage": run.info.get("cache_storage"),
        })
    cache_rows = []
    for row in rows:
        if not row["cached"]:
            continue
        uncached = epoch[TrainVariant("telly", row["freeze"]).name]
        cache_rows.append({
            "model": row["model"], "freeze": row["freeze"], "cache_seconds": row["cache_seconds"],
            "cache_megabytes": row["cache_megabytes"], "cache_storage": row["cache_storage"],
            "cached_epoch_seconds": row["epoch_seconds"], "uncached_epoch_seconds": uncached,
            "full_epoch_seconds": epoch["full"],
            "payback_epochs": payback_epochs(row["cache_seconds"], row["epoch_seconds"], uncached),
            "payback_epochs_vs_full": payback_epochs(row["cache_seconds"], row["epoch_seconds"], epoch["full"]),
        })
    return rows, cache_rows


# ----------------------------------------------------------------------------- probing

def _length_sorted_batches(tokenizer, texts: Sequence[str], max_length: int, batch_size: int):
    lengths = [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]
    order = np.argsort(-np.asarray(lengths), kind="stable")
    for start in range(0, len(texts), batch_size):
        yield order[start:start + batch_size]


def truncated_layer_features(backbone, texts: Sequence[str], *, max_length: int, batch_size: int) -> np.ndarray:
    """What probing costs without one all-layer pass: for each layer k = 0..L, a forward pass
    through the embeddings and blocks 0..k-1 only, mean-pooled. Returns (L+1, n, d) like
    `telly.features.layer_features(...).pooled`."""
    from telly.features import masked_mean
    from telly.prefix_cache import run_prefix

    model = backbone.model.eval()
    device = next(model.parameters()).device
    tokenizer = backbone.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    pooled = np.zeros((backbone.num_layers + 1, len(texts), backbone.hidden_size), dtype=np.float32)
    try:
        with torch.inference_mode():
            for k in range(backbone.num_layers + 1):
                for index in _length_sorted_batches(tokenizer, texts, max_length, batch_size):
                    encoded = tokenizer([texts[i] for i in index], truncation=True, max_length=max_length,
                                        padding=True, return_tensors="pt")
                    inputs = {n: t.to(device) for n, t in encoded.items()
                              if n in ("input_ids", "attention_mask")
                              or (n == "token_type_ids" and getattr(backbone.config, "type_vocab_size", 0))}
                    if k < backbone.num_layers:
                        hidden = run_prefix(model, inputs, k)
                    else:
                        hidden = model(**inputs).last_hidden_state
                    pooled[k, index] = masked_mean(hidden, inputs["attention_mask"]).cpu().numpy()
    finally:
        tokenizer.padding_side = side
    return pooled


def probing_bench(backbone, texts: Sequence[str], *, max_length: int, batch_size: int, repeats: int,
                  device: torch.device, clock: Callable[[], float] = time.perf_counter,
                  progress: bool = True) -> dict:
    """All layers from one pass (telly.features) against L+1 truncated forwards."""
    from telly.features import layer_features

    texts = list(texts)
    backbone.model.to(device)

    def one_pass(watch, _repeat):
        with watch.measure("seconds"):
            layer_features(backbone, texts, max_length=max_length, batch_size=batch_size, cache=False,
                           progress=False)

    def truncated(watch, _repeat):
        with watch.measure("seconds"):
            truncated_layer_features(backbone, texts, max_length=max_length, batch_size=batch_size)

    runs = interleave({"one_pass": one_pass, "truncated": truncated}, repeats, clock=clock,
                      sync=_sync_for(device), desc=f"probing {backbone.name}", progress=progress)
    one, many = runs["one_pass"].median("seconds"), runs["truncated"].median("seconds")
    layers = backbone.num_layers
    return {"model": backbone.name, "num_layers": layers, "texts": len(texts), "max_length": max_length,
            "one_pass_seconds": one, "truncated_seconds": many, "speedup": many / one,
            # Blocks run: L(L+1)/2 over all truncated passes against L in one pass.
            "speedup_limit": (layers + 1) / 2,
            "runs": {name: r.seconds["seconds"] for name, r in runs.items()}}


# ----------------------------------------------------------------------------- similarity

def similarity_bench(n: int, *, layers: int = SIMILARITY_LAYERS, dim: int = SIMILARITY_DIM, repeats: int,
                     seed: int = 0, clock: Callable[[], float] = time.perf_counter, progress: bool = True) -> dict:
    """Time RSA, linear CKA and debiased CKA between two (layers, n, dim) stacks of random features
    (the time does not depend on the values)."""
    from telly.similarity import layer_similarity

    rng = np.random.default_rng(seed)
    first = rng.standard_normal((layers, n, dim), dtype=np.float32)
    second = first + rng.standard_normal((layers, n, dim), dtype=np.float32)

    def measure(measures):
        def run(watch, _repeat):
            with watch.measure("seconds"):
                layer_similarity(first, second, measures)
        return run

    runs = interleave({m: measure((m,)) for m in ("rsa", "cka", "cka_debiased")}, repeats,
                      clock=clock, desc="similarity", progress=progress)
    return {"n": n, "layers": layers, "dim": dim,
            **{f"{m}_seconds": r.median("seconds") for m, r in runs.items()},
            "runs": {m: r.seconds["seconds"] for m, r in runs.items()}}


# ----------------------------------------------------------------------------- corpus

@contextlib.contextmanager
def _telly_cache(path: str):
    previous = os.environ.get("TELLY_CACHE")
    os.environ["TELLY_CACHE"] = path
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TELLY_CACHE", None)
        else:
            os.environ["TELLY_CACHE"] = previous


def corpus_bench(source: str | Path = "stdlib", *, repeats: int,
                 clock: Callable[[], float] = time.perf_counter, progress: bool = True) -> dict:
    """Corpus load time cold (a fresh, empty TELLY_CACHE each repeat: every file parsed) against
    cached (the same process reading the cache that the first cold load wrote). The files
    themselves are in the OS page cache after the first read either way."""
    from telly.corpus import load_corpus

    functions: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="telly-bench-cache-") as root:
        caches: list[str] = []  # fresh TELLY_CACHE dirs, one per cold load; the first is kept warm

        def cold(watch, _repeat):
            caches.append(tempfile.mkdtemp(dir=root))
            with _telly_cache(caches[-1]), watch.measure("seconds"):
                corpus = load_corpus(source, progress=False)
            functions["cold"] = len(corpus)

        def cached(watch, _repeat):
            # interleave runs "cold" first in repeat 0, so its cache exists by now
            with _telly_cache(caches[0]), watch.measure("seconds"):
                corpus = load_corpus(source, progress=False)
            functions["cached"] = len(corpus)
            return {"fingerprint": corpus.fingerprint}

        runs = interleave({"cold": cold, "cached": cached}, repeats, clock=clock, desc="corpus",
                          progress=progress)
    if functions["cold"] != functions["cached"]:
        raise RuntimeError(f"corpus {source}: the cold load found {functions['cold']} functions, "
                           f"the cached one {functions['cached']}")
    cold_s, cached_s = runs["cold"].median("seconds"), runs["cached"].median("seconds")
    return {"source": str(source), "functions": functions["cold"], "fingerprint": runs["cached"].info["fingerprint"],
            "cold_seconds": cold_s, "cached_seconds": cached_s, "speedup": cold_s / cached_s,
            "runs": {name: r.seconds["seconds"] for name, r in runs.items()}}


# ----------------------------------------------------------------------------- acceptance

def acceptance(rows: Sequence[Mapping]) -> list[dict]:
    """The issue's targets, checked on every model's rows (binding at the UniXcoder shape)."""
    checks = []

    def check(row, target, value, threshold):
        met = value <= threshold
        checks.append({"model": row["model"], "binding": row["model"] == SHAPE_MODEL, "target": target,
                       "value": value, "threshold": threshold, "met": met,
                       "missed_by": None if met else value / threshold - 1})

    for row in rows:
        if not row["cached"]:
            continue
        layers, k = row["num_layers"], row["freeze"]
        if k == layers - 2:
            check(row, f"cached Telly-{k} epoch time <= {TARGET_CACHED_EPOCH_RATIO}x full",
                  row["ratio_to_full"], TARGET_CACHED_EPOCH_RATIO)
        if k >= layers / 2:
            check(row, f"cached Telly-{k} epoch ratio <= {TARGET_LIMIT_FACTOR}x its compute limit "
                  f"{row['compute_limit']:.3f}", row["ratio_to_full"], TARGET_LIMIT_FACTOR * row["compute_limit"])
        if k == layers - 2:
            check(row, f"cached Telly-{k} peak memory <= {TARGET_CACHED_MEMORY_RATIO}x full",
                  row["peak_memory_ratio"], TARGET_CACHED_MEMORY_RATIO)
    return checks


# ----------------------------------------------------------------------------- the whole bench

def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform module says."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bench_models(model: str) -> list[str]:
    """Training rows run at the paper's size and on the chosen model."""
    return [SHAPE_MODEL] if model == SHAPE_MODEL else [SHAPE_MODEL, model]


def run_bench(profile: str | Profile = "laptop", out: str | Path = "runs/bench", *, model: str = "minilm-l6",
              models: Sequence[str] | None = None, sections: Sequence[str] = SECTIONS,
              corpus_source: str | Path = "stdlib", training_examples: Sequence | None = None,
              device: torch.device | str | None = None, progress: bool = True) -> dict:
    """Run the benchmarks and write OUT/bench.json and OUT/bench.md; returns the record.

    model: the model of the probing row and the second training model (the first is always
    `unixcoder-shape` unless `models` lists the training models explicitly). sections: any of
    corpus, similarity, probing, training. training_examples: code-search examples to train on
    (default: the profile's sample of the embedded corpus).
    """
    from telly import backbones
    from telly.results import device_description, provenance, write_json

    started, cpu_started = time.perf_counter(), time.process_time()
    profile = get_profile(profile)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise ValueError(f"unknown bench section(s) {unknown or list(sections)}; expected some of {list(SECTIONS)}")
    device = torch.device(device) if device is not None else default_device()
    models = list(models) if models is not None else bench_models(model)
    load_start = os.getloadavg()
    record: dict = {
        "kind": "bench", "profile": profile.name, "device": device_description(device), "cpu": cpu_model(),
        "device_type": device.type, "amp": "bf16 autocast" if device.type == "cuda" else None,
        "threads": torch.get_num_threads(), "repeats": profile.bench_repeats,
        "timing": (f"median of {profile.bench_repeats} interleaved repeat(s); the variants' order "
                   "rotates each repeat"),
        "memory_method": memory_method(device), "sections": list(sections),
    }
    corpus_fingerprint = None
    record["section_seconds"] = {}
    for section in SECTIONS:  # always in this order: cheap sections first
        if section not in sections:
            continue
        tick = time.perf_counter()
        if section == "corpus":
            record["corpus"] = corpus_bench(corpus_source, repeats=profile.bench_repeats, progress=progress)
            corpus_fingerprint = record["corpus"]["fingerprint"]
        elif section == "similarity":
            record["similarity"] = similarity_bench(profile.bench_similarity_inputs,
                                                    repeats=profile.bench_repeats, progress=progress)
        elif section == "probing":
            from telly.corpus import load_corpus, sample

            texts = [f.code_without_doc for f in sample(load_corpus(corpus_source, progress=False),
                                                         profile.bench_probe_texts)]
            record["probing"] = probing_bench(backbones.load(model), texts, max_length=profile.max_code_tokens,
                                              batch_size=profile.feature_batch_size,
                                              repeats=profile.bench_repeats, device=device, progress=progress)
        else:
            shaped = bench_profile(profile)
            record["epoch"] = {
                "task": BENCH_TASK, "steps": profile.bench_steps, "batch_size": profile.bench_batch_size,
                "examples": profile.bench_steps * profile.bench_batch_size,
                "code_tokens": shaped.max_code_tokens, "query_tokens": shaped.max_text_tokens,
                "optimizer": "AdamW", "warmup_steps_untimed": 1,
            }
            record["training"], record["cache"] = [], []
            for name in models:
                rows, cache_rows = training_rows(backbones.load(name), profile, device,
                                                 examples=training_examples, progress=progress)
                record["training"] += rows
                record["cache"] += cache_rows
            record["acceptance"] = acceptance(record["training"])
        record["section_seconds"][section] = time.perf_counter() - tick
    record["load_average"] = {"start": list(load_start), "end": list(os.getloadavg())}
    record["wall_seconds"] = time.perf_counter() - started
    # CPU time well below wall time x threads means the process waited for a busy machine.
    record["process_cpu_seconds"] = time.process_time() - cpu_started
    record["provenance"] = provenance(model=",".join(models), profile=profile.name,
                                      corpus_fingerprint=corpus_fingerprint, device=device)
    out = Path(out)
    write_json(out / "bench.json", record)
    (out / "bench.md").write_text(markdown(record))
    return record


def reference_path(profile: str | Profile, device_type: str = "cpu", root: str | Path | None = None) -> Path:
    """Where the shipped reference record of a profile lives: bench/results/<profile>-<cpu|cuda>.json
    (what the README table shows; `telly bench --reference` writes it)."""
    return Path(root or REFERENCE_DIR) / f"{get_profile(profile).name}-{device_type}.json"


def _covers(record: Mapping, profile: Profile, model: str) -> bool:
    return (record.get("profile") == profile.name and set(record.get("sections", [])) >= set(SECTIONS)
            and any(r["model"] == model for r in record.get("training", [])))


def load_or_run(profile: str | Profile = "laptop", out: str | Path = "runs/laptop/bench", *, model: str = "minilm-l6",
                run: bool = True, reference_root: str | Path | None = None, progress: bool = True) -> dict:
    """The bench record chapter 4 shows, with `origin` saying where it came from:
    "store" (OUT/bench.json holds this profile's full bench with `model`'s rows), else "run" (run
    now, when `run`), else "reference" (the record shipped in bench/results/, measured earlier
    on the machine it names)."""
    from telly.results import read_json

    path = Path(out) / "bench.json"
    profile = get_profile(profile)
    if path.exists():
        record = read_json(path)
        if _covers(record, profile, model):
            return {**record, "origin": "store"}
    if run:
        return {**run_bench(profile, out, model=model, progress=progress), "origin": "run"}
    reference = reference_path(profile, default_device().type, reference_root)
    if reference.exists():
        record = read_json(reference)
        if _covers(record, profile, model):
            return {**record, "origin": "reference"}
    raise FileNotFoundError(
        f"no {profile.name} bench with {model} in {path} nor in the shipped reference {reference}; "
        f"run `telly bench --profile {profile.name} --model {model}` (make bench) first, or let the "
        "chapter run it (run_bench=True)")


def origin_note(record: Mapping, out: str | Path) -> str:
    """One sentence for the page: which run produced these numbers and how to measure this machine."""
    when = record["provenance"]["date"][:10]
    if record.get("origin") == "reference":
        return (f"**These are the reference numbers shipped with Telly**, measured by `make bench` on "
                f"{record['device']} ({record.get('cpu') or record['device_type']}) on {when}: this build "
                f"did not run the `{record['profile']}` bench (this one ran {record['wall_seconds'] / 60:.0f} minutes "
                f"there; its profile leaves it out of book builds). `telly bench --profile {record['profile']}` "
                f"writes `{Path(out) / 'bench.json'}` on your machine; the next build shows that instead.")
    how = "ran it for this build" if record.get("origin") == "run" else "was run on this machine before this build"
    return (f"The `{record['profile']}` bench {how} ({record['device']}, {when}); it is read from "
            f"`{Path(out) / 'bench.json'}`.")


# ----------------------------------------------------------------------------- reporting

def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _params(count: int) -> str:
    return f"{count / 1e6:.2f}M"


def markdown(record: Mapping) -> str:
    """The bench record as markdown tables (what bench.md and the README show)."""
    cpu = f" ({record['cpu']})" if record.get("cpu") and record["device_type"] == "cpu" else ""
    lines = [f"Device: {record['device']}{cpu}" + (f", {record['amp']}" if record.get("amp") else "")
             + f"; profile `{record['profile']}`; {record['timing']}; torch {record['provenance']['versions']['torch']}; "
             f"{record['provenance']['date']}; load average {record['load_average']['start'][0]:.1f} at the start, "
             f"{record['load_average']['end'][0]:.1f} at the end; {record['wall_seconds']:.0f} s wall, "
             f"{record['process_cpu_seconds']:.0f} s CPU.", ""]
    if "training" in record:
        epoch = record["epoch"]
        lines += [f"Training: one epoch = {epoch['steps']} AdamW steps over {epoch['examples']} {epoch['task']} "
                  f"examples (batch {epoch['batch_size']}, code <= {epoch['code_tokens']} tokens, query <= "
                  f"{epoch['query_tokens']} tokens), after 1 untimed warm-up step. Peak memory: "
                  f"{record['memory_method']}.", ""]
        for model in dict.fromkeys(r["model"] for r in record["training"]):
            rows = [r for r in record["training"] if r["model"] == model]
            lines += [f"**{model}** (L = {rows[0]['num_layers']}, {_params(rows[0]['total_parameters'])} parameters)", "",
                      "| variant | trainable | epoch s | ratio to full | compute limit (L-K)/L | peak memory MB | memory ratio |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
            for r in rows:
                limit = "-" if r["compute_limit"] is None else f"{r['compute_limit']:.3f}"
                lines.append(f"| {r['label']} | {_params(r['trainable_parameters'])} | {_seconds(r['epoch_seconds'])} | "
                             f"{_ratio(r['ratio_to_full'])} | {limit} | {r['peak_memory_mb']:.0f} | "
                             f"{_ratio(r['peak_memory_ratio'])} |")
            lines.append("")
        lines += ["Frozen-prefix cache: one-time build cost, and the epoch after which it has paid for itself.", "",
                  "| model | K | build s | cached epoch s | uncached epoch s | pays back vs uncached (epochs) | vs full (epochs) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for c in record["cache"]:
            lines.append(f"| {c['model']} | {c['freeze']} | {_seconds(c['cache_seconds'])} | "
                         f"{_seconds(c['cached_epoch_seconds'])} | {_seconds(c['uncached_epoch_seconds'])} | "
                         f"{_payback(c['payback_epochs'])} | {_payback(c['payback_epochs_vs_full'])} |")
        lines += ["", "Acceptance (issue 8; binding at the UniXcoder shape, other models for reference):", "",
                  "| model | target | value | threshold | result |", "|---|---|---:|---:|---|"]
        for a in record["acceptance"]:
            result = "met" if a["met"] else f"MISSED by {100 * a['missed_by']:.0f}%"
            model = a["model"] if a["binding"] else f"{a['model']} (reference)"
            lines.append(f"| {model} | {a['target']} | {a['value']:.3f} | {a['threshold']:.3f} | {result} |")
        lines.append("")
    if "probing" in record:
        p = record["probing"]
        lines += [f"Probing features ({p['model']}, {p['texts']} texts x <= {p['max_length']} tokens): all "
                  f"{p['num_layers'] + 1} layers from one pass {_seconds(p['one_pass_seconds'])} s; per-layer "
                  f"truncated forwards {_seconds(p['truncated_seconds'])} s; speedup {p['speedup']:.2f}x "
                  f"(limit (L+1)/2 = {p['speedup_limit']:.1f}x).", ""]
    if "similarity" in record:
        s = record["similarity"]
        lines += [f"Similarity ({s['n']:,} inputs x {s['layers']} layers x d = {s['dim']}): RSA "
                  f"{_seconds(s['rsa_seconds'])} s, linear CKA {_seconds(s['cka_seconds'])} s, debiased CKA "
                  f"{_seconds(s['cka_debiased_seconds'])} s.", ""]
    if "corpus" in record:
        c = record["corpus"]
        lines += [f"Corpus ({c['source']}, {c['functions']:,} functions): cold load {_seconds(c['cold_seconds'])} s, "
                  f"cached {_seconds(c['cached_seconds'])} s ({c['speedup']:.0f}x).", ""]
    return "\n".join(lines)


def _payback(epochs: float | None) -> str:
    if epochs is None:
        return "never"
    return f"{epochs:.2f} (after epoch {max(1, math.ceil(epochs))})"


def summary_text(record: Mapping) -> str:
    """A paragraph of prose about the bench record, every number read from it."""
    parts = [f"Measured on {record['device']} ({record['timing']})."]
    for model in dict.fromkeys(r["model"] for r in record.get("training", [])):
        rows = {r["variant"]: r for r in record["training"] if r["model"] == model}
        layers = next(iter(rows.values()))["num_layers"]
        deep = TrainVariant("telly", layers - 2)
        cached, uncached = rows[TrainVariant("telly", layers - 2, True).name], rows[deep.name]
        parts.append(
            f"On {model} one epoch of full fine-tuning took {_seconds(rows['full']['epoch_seconds'])} s. "
            f"Telly-{layers - 2} took {uncached['ratio_to_full']:.2f}x of that when the frozen blocks run "
            f"every batch (the paper's way; compute estimate {uncached['paper_estimate']:.2f}x) and "
            f"{cached['ratio_to_full']:.2f}x from the frozen-prefix cache, against a compute limit of "
            f"{cached['compute_limit']:.2f}x; its peak memory was {cached['peak_memory_ratio']:.2f}x full "
            f"fine-tuning's. LoRA took {rows['lora']['ratio_to_full']:.2f}x and BitFit "
            f"{rows['bitfit']['ratio_to_full']:.2f}x of full fine-tuning's epoch time.")
        cache = next(c for c in record["cache"] if c["model"] == model and c["freeze"] == layers - 2)
        payback = cache["payback_epochs"]
        parts.append(f"Building that cache cost {_seconds(cache['cache_seconds'])} s once, "
                     + (f"repaid against uncached Telly-{layers - 2} after {payback:.2f} epochs."
                        if payback is not None else f"which never pays back against uncached Telly-{layers - 2}."))
    missed = [a for a in record.get("acceptance", []) if a["binding"] and not a["met"]]
    binding = [a for a in record.get("acceptance", []) if a["binding"]]
    if binding:
        parts.append(f"Of the {len(binding)} acceptance targets at the UniXcoder shape, "
                     + (f"{len(binding) - len(missed)} were met; missed: "
                        + "; ".join(f"{a['target']} ({a['value']:.3f}, {100 * a['missed_by']:.0f}% over)" for a in missed)
                        + "." if missed else "all were met."))
    if "probing" in record:
        p = record["probing"]
        parts.append(f"Extracting all {p['num_layers'] + 1} layers of {p['model']} in one pass was "
                     f"{p['speedup']:.1f}x faster than one truncated forward per layer (the block count "
                     f"alone predicts {p['speedup_limit']:.1f}x).")
    if "similarity" in record:
        s = record["similarity"]
        parts.append(f"RSA over {s['n']:,} inputs and {s['layers']} layers took {_seconds(s['rsa_seconds'])} s; "
                     f"linear CKA {_seconds(s['cka_seconds'])} s.")
    if "corpus" in record:
        c = record["corpus"]
        parts.append(f"Loading the corpus from its cache took {_seconds(c['cached_seconds'])} s against "
                     f"{_seconds(c['cold_seconds'])} s cold.")
    return " ".join(parts)


def update_readme(path: str | Path, record: Mapping) -> Path:
    """Replace the CPU or GPU table (by the record's device) between the README's markers
    `<!-- bench:cpu:start -->` ... `<!-- bench:cpu:end -->` (or `gpu`); appends them if absent."""
    path = Path(path)
    kind = "gpu" if record["device_type"] == "cuda" else "cpu"
    start, end = f"<!-- bench:{kind}:start -->", f"<!-- bench:{kind}:end -->"
    text = path.read_text() if path.exists() else ""
    block = f"{start}\n{markdown(record)}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    elif start in text or end in text:
        raise ValueError(f"{path}: has only one of the markers {start} / {end}")
    else:
        text = text.rstrip("\n") + f"\n\n## Latest {kind.upper()} bench\n\n{block}\n"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- CLI

def add_cli(subparsers) -> None:
    from telly.cli import add_common

    parser = subparsers.add_parser("bench", help="benchmarks: training time and memory by method, "
                                   "probing, similarity, corpus", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(parser, out="runs/<profile>/bench")  # the book's results store reads it there
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--corpus", default="stdlib", help="corpus source: 'stdlib' or a directory of Python files")
    parser.add_argument("--readme", default=None,
                        help="also write the table into this README between its bench:cpu / bench:gpu markers")
    parser.add_argument("--reference", action="store_true",
                        help="also keep the record as the shipped reference, bench/results/<profile>-<cpu|cuda>.json, "
                             "which chapter 4 shows when a book build does not run the bench")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice; the record says which)")
    parser.set_defaults(handler=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    from telly.backbones import BackboneUnavailable

    if args.threads is not None:
        if args.threads < 1:
            print(f"telly bench: error: --threads must be at least 1, got {args.threads}", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    out = Path(args.out.replace("<profile>", args.profile))
    try:
        record = run_bench(args.profile, out, model=args.model,
                           sections=[s.strip() for s in args.sections.split(",") if s.strip()],
                           corpus_source=args.corpus)
    except (ValueError, FileNotFoundError, BackboneUnavailable) as exc:
        print(f"telly bench: error: {exc}", file=sys.stderr)
        return 2
    if args.readme:
        update_readme(args.readme, record)
    if args.reference:
        from telly.results import write_json

        write_json(reference_path(args.profile, record["device_type"]), record)
    print(markdown(record))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'} "
          f"in {record['wall_seconds']:.0f} s")
    return 0
