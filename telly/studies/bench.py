"""RQ3 cost: what freezing saves, measured side by side in one run on one machine.

`run_bench(profile, out)` (`telly bench --profile P --out DIR`) writes DIR/bench.json and
DIR/bench.md with
  * training: one epoch's train time and peak memory of full fine-tuning, Telly-K uncached and
    cached (K in 0, L/2, L-2, L-1), LoRA and BitFit, on `unixcoder-shape`, on `model` and on the
    profile's extra backbones (the code-aware decoder smollm2-135m, at its own input length);
    ratios to full fine-tuning, the compute limit (L-K)/L beside every cached ratio, and the
    one-time cost of building the frozen-prefix cache with the epoch after which it pays back;
    and on each of those models bf16 autocast against float32 side by side (one full training
    step and one forward pass, same weights and batch), with the CPU's bf16 units named;
  * probing: all layers' features from one forward pass against L+1 truncated forwards;
  * similarity: RSA, linear CKA and debiased CKA over 13 layers of n x 768 features;
  * corpus: loading the corpus cold (an empty TELLY_CACHE) and from its cache.
`load_or_run` is what chapter 4 calls: the stored bench when it is current, else a new run, else
the reference record shipped with the package (telly/report/reference/).

How it measures (the same for every section):
  * Variants are interleaved: repeat r runs every variant once, in an order rotated by r, so
    drifting machine load hits all of them; each figure is the median over the repeats.
  * The "epoch" of the training rows is a fixed dataset: `bench_steps` batches of
    `bench_batch_size` code-search examples (code cut at `bench_code_tokens` tokens, queries at
    `max_text_tokens`), trained with the trainer's AdamW and its one training step
    (`telly.trainer.train_step`). One untimed warm-up step on a copy of the model precedes each
    timed epoch. Ratios and the cache's payback (in epochs) do not depend on the dataset size: the
    cache is built over the same examples one epoch trains on, so both scale with it.
  * Peak memory is the trainer's measure (`telly.trainer.step_peak_memory`, taken on the warm-up
    step of the first repeat): the bytes the tensors of one training step hold at its peak
    (weights, gradients, optimizer state, activations, an in-memory prefix cache on a CPU). Unlike
    process RSS, it does not depend on what earlier variants left in the allocator, and it
    excludes the interpreter and libraries.
  * On CUDA the forward passes run under bf16 autocast (AMP); on CPU everything is float32 but in
    the precision rows, which time the same step and forward pass both ways.
"""
from __future__ import annotations

import contextlib
import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from telly.methods import BitFit, Full, LoRA, Telly
from telly.profiles import Profile, get_profile
from telly.progress import progress_bar
from telly.store import RunStore, Variant

SHAPE_MODEL = "unixcoder-shape"  # the paper's backbone size; the acceptance targets apply to it
BENCH_TASK = "code-search"
DOCUMENT = "bench"  # the store document: OUT/bench.json
SECTIONS = ("corpus", "similarity", "probing", "training")
SIMILARITY_LAYERS = 13
SIMILARITY_DIM = 768
# Acceptance targets (issue 8), stated for the UniXcoder shape.
TARGET_CACHED_EPOCH_RATIO = 0.25  # cached Telly-(L-2) epoch time / full
TARGET_LIMIT_FACTOR = 1.3  # cached Telly-K ratio / compute limit, for every K >= L/2
TARGET_CACHED_MEMORY_RATIO = 0.5  # cached Telly-(L-2) peak memory / full
# The code-aware decoder of the study trains on 128-token code (profile "study"): its rows use that
# length when the profile's bench_code_tokens is longer, so they time the steps the study takes.
MODEL_CODE_TOKENS = {"smollm2-135m": 128}
# CPU feature flags of bf16 arithmetic (x86 AMX and AVX-512 BF16, Arm BF16): without one, bf16
# autocast may run no faster than float32.
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


# ----------------------------------------------------------------------------- the harness

class Stopwatch:
    """Named wall-clock durations of one variant run (synchronising the device around each)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter,
                 sync: Callable[[], None] | None = None) -> None:
        self.clock = clock
        self.sync = sync or (lambda: None)
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def measure(self, name: str) -> Iterator[None]:
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


Measured = Callable[[Stopwatch, int], "dict | None"]


def interleave(variants: Mapping[str, Measured], repeats: int, *,
               clock: Callable[[], float] = time.perf_counter, sync: Callable[[], None] | None = None,
               desc: str = "bench", progress: bool = True) -> dict[str, Runs]:
    """Run every variant `repeats` times, interleaved: repeat r runs all of them once, the order
    rotated by r so that no variant always runs first. A variant is called as fn(stopwatch, repeat),
    times what it wants with `stopwatch.measure(name)` and may return a dict of facts (kept in
    Runs.info; later repeats update earlier ones)."""

    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if not variants:
        raise ValueError("no variants to measure")
    names = list(variants)
    runs = {name: Runs() for name in names}
    bar = progress_bar(total=repeats * len(names), desc=desc, disable=not progress, leave=False)
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


# ----------------------------------------------------------------------------- training

def freeze_depths(num_layers: int) -> list[int]:
    """The K the bench measures: 0, L/2, L-2 and L-1."""
    if num_layers < 2:
        raise ValueError(f"the training bench needs a model with 2+ layers, got {num_layers}")
    return sorted({0, num_layers // 2, num_layers - 2, num_layers - 1})


def training_variants(model: str, num_layers: int, profile: str, *, bitfit: bool = True) -> list[Variant]:
    """Full fine-tuning, Telly-K uncached and cached at every bench depth, LoRA and BitFit (left
    out with `bitfit=False`: a backbone without bias terms, such as SmolLM2's, has nothing for it to train)."""
    methods = [Full(), *(Telly(k, cache) for k in freeze_depths(num_layers) for cache in (False, True)),
               LoRA(), *([BitFit()] if bitfit else [])]
    return [Variant(BENCH_TASK, model, method, profile=profile) for method in methods]


def has_bias_terms(backbone) -> bool:
    """Whether the backbone has bias parameters, the only ones BitFit trains."""
    return any(name.endswith("bias") for name, _ in backbone.model.named_parameters())


def compute_limit(num_layers: int, freeze: int) -> float:
    """(L-K)/L: the share of full fine-tuning's block work left when blocks 0..K-1 never run."""
    return (num_layers - freeze) / num_layers


def paper_estimate(num_layers: int, freeze: int) -> float:
    """(L + 2(L-K)) / 3L: uncached Telly still runs all L blocks forward (backward ~ 2 forwards)."""
    return (num_layers + 2 * (num_layers - freeze)) / (3 * num_layers)


def bench_code_tokens(profile: Profile, model: str | None = None) -> int:
    """The code length `model`'s training rows use: the profile's bench_code_tokens, or the
    model's own length (MODEL_CODE_TOKENS) when that is shorter."""
    return min(profile.bench_code_tokens, MODEL_CODE_TOKENS.get(str(model), profile.bench_code_tokens))


def bench_profile(profile: Profile, model: str | None = None) -> Profile:
    """The profile the training rows of `model` run with: the bench's batch and code length."""
    steps, batch = profile.bench_steps, profile.bench_batch_size
    return replace(profile, batch_size=batch, max_code_tokens=bench_code_tokens(profile, model),
                   train_examples=steps * batch, valid_examples=batch, test_examples=batch)


def _autocast(device: torch.device) -> torch.autocast | None:
    """bf16 autocast on CUDA; None (float32) on a CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None


def _sync_for(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class TrainingWorkload:
    """One backbone's training rows: every variant trains a fresh copy of the same weights on the
    same batches, through the trainer's pieces (task model, method, prefix cache, optimizer, step)."""

    def __init__(self, backbone, profile: Profile, device: torch.device, examples: Sequence | None = None):
        from telly.tasks import get_task

        self.backbone = backbone
        self.profile = bench_profile(profile, backbone.name)
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

    def first_batch(self) -> dict:
        """The epoch's first batch, collated, on the device."""
        from telly.tasks import move_to

        return move_to(self.collate([self.examples[i] for i in self.batches[0]]), self.device)

    def run(self, variant: Variant, watch: Stopwatch, measure_memory: bool) -> dict:
        """Build the variant, (build its cache,) take one untimed warm-up step on a copy (measuring
        its peak memory when `measure_memory`), time one epoch. Returns the variant's facts."""
        from telly import trainer
        from telly.backbones import cache_dir
        from telly.prefix_cache import build_prefix_cache
        from telly.tasks import move_to

        backbone = replace(self.backbone, model=copy.deepcopy(self.backbone.model))
        model = self.task.build_model(backbone)
        variant.method.apply(model)
        model.to(self.device).train()
        make_optimizer = trainer.optimizer_factory(self.task, self.profile,
                                                   self.task.head_lr_scale * self.profile.learning_rate)
        cache = None
        if variant.method.cache:
            with watch.measure("cache_seconds"), _autocast(self.device) or contextlib.nullcontext():
                cache = build_prefix_cache(
                    model.backbone, self.examples, self.collate, variant.freeze,
                    batch_size=self.profile.batch_size, memory_mb=self.profile.cache_memory_mb,
                    device=self.device, disk_dir=cache_dir(), show_progress=False)
        state_dtype = next(model.parameters()).dtype

        def batch(indices: list[int]) -> dict:
            rows = self.collate([self.examples[i] for i in indices])
            if cache is not None:
                rows["inputs"] = cache.states(indices, state_dtype)
            return move_to(rows, self.device)

        in_memory_cache = cache.nbytes() if cache is not None and cache.storage == "memory" else 0
        peak_bytes = trainer.step_peak_memory(model, make_optimizer, batch(self.batches[0]), self.device,
                                              cache_bytes=in_memory_cache, autocast=_autocast(self.device),
                                              measure=measure_memory)
        optimizer = make_optimizer(model)
        with watch.measure("epoch_seconds"):
            for indices in self.batches:
                trainer.train_step(model, batch(indices), optimizer, autocast=_autocast(self.device))
        info = {"trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "total_parameters": sum(p.numel() for p in model.parameters())}
        if peak_bytes is not None:
            info["peak_memory_bytes"] = peak_bytes
        if cache is not None:
            info |= {"cache_megabytes": cache.nbytes() / 2**20, "cache_storage": cache.storage}
            cache.close()
        return info


def training_rows(backbone, profile: Profile, device: torch.device, *, examples: Sequence | None = None,
                  clock: Callable[[], float] = time.perf_counter, progress: bool = True) -> tuple[list[dict], list[dict]]:
    """(one row per training variant, one row per cached depth about the cache's cost)."""
    workload = TrainingWorkload(backbone, profile, device, examples)
    num_layers = backbone.num_layers
    variants = {v.method.tag: v for v in training_variants(backbone.name, num_layers, profile.name,
                                                            bitfit=has_bias_terms(backbone))}
    runs = interleave({name: (lambda watch, repeat, v=v: workload.run(v, watch, measure_memory=repeat == 0))
                       for name, v in variants.items()},
                      profile.bench_repeats, clock=clock, sync=_sync_for(device),
                      desc=f"training {backbone.name}", progress=progress)
    epoch = {name: r.median("epoch_seconds") for name, r in runs.items()}
    memory = {name: float(r.info["peak_memory_bytes"]) for name, r in runs.items()}
    time_ratio, memory_ratio = ratio_to(epoch, Full().tag), ratio_to(memory, Full().tag)
    rows = []
    for name, variant in variants.items():
        run, method = runs[name], variant.method
        limit = compute_limit(num_layers, variant.freeze) if method.cache else None
        rows.append({
            "model": backbone.name, "num_layers": num_layers, "variant": name, "label": variant.label,
            "method": method.name, "freeze": variant.freeze, "cached": method.cache,
            "batch_size": workload.profile.batch_size, "code_tokens": workload.profile.max_code_tokens,
            "epoch_seconds": epoch[name], "epoch_seconds_runs": run.seconds["epoch_seconds"],
            "ratio_to_full": time_ratio[name],
            "compute_limit": limit,
            "ratio_to_limit": time_ratio[name] / limit if limit else None,
            "paper_estimate": (paper_estimate(num_layers, variant.freeze)
                               if method.name == Telly.name and not method.cache else None),
            "peak_tensor_memory_mb": memory[name] / 2**20, "peak_memory_ratio": memory_ratio[name],
            "trainable_parameters": run.info["trainable_parameters"],
            "total_parameters": run.info["total_parameters"],
            "cache_seconds": run.median("cache_seconds") if method.cache else None,
            "cache_megabytes": run.info.get("cache_megabytes"),
            "cache_storage": run.info.get("cache_storage"),
        })
    cache_rows = []
    for row in rows:
        if not row["cached"]:
            continue
        uncached = epoch[Telly(row["freeze"], cache=False).tag]
        cache_rows.append({
            "model": row["model"], "freeze": row["freeze"], "cache_seconds": row["cache_seconds"],
            "cache_megabytes": row["cache_megabytes"], "cache_storage": row["cache_storage"],
            "cached_epoch_seconds": row["epoch_seconds"], "uncached_epoch_seconds": uncached,
            "full_epoch_seconds": epoch[Full().tag],
            "payback_epochs": payback_epochs(row["cache_seconds"], row["epoch_seconds"], uncached),
            "payback_epochs_vs_full": payback_epochs(row["cache_seconds"], row["epoch_seconds"],
                                                     epoch[Full().tag]),
        })
    return rows, cache_rows


# ----------------------------------------------------------------------------- precision

def bf16_units(cpuinfo: str | None = None) -> list[str] | None:
    """The BF16_FLAGS this machine's CPU reports (Linux /proc/cpuinfo "flags" or "Features");
    None where there is no /proc/cpuinfo to ask."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return [flag for flag in BF16_FLAGS if flag in flags]


def precision_row(backbone, profile: Profile, device: torch.device, *, examples: Sequence | None = None,
                  clock: Callable[[], float] = time.perf_counter, progress: bool = True) -> dict:
    """bf16 autocast against float32 on one backbone, interleaved: one full fine-tuning step (the
    trainer's AdamW and step) and one forward pass of the backbone over the same batch's code
    (every layer's states, as probing and similarity read them). Each precision takes one untimed
    warm-up call first. Ratios are bf16 time / float32 time."""
    from telly import trainer

    workload = TrainingWorkload(backbone, profile, device, examples)
    model = workload.task.build_model(replace(backbone, model=copy.deepcopy(backbone.model)))
    Full().apply(model)
    model.to(device)
    optimizer = trainer.optimizer_factory(workload.task, workload.profile, workload.task.head_lr_scale
                                          * workload.profile.learning_rate)(model)
    batch = workload.first_batch()
    code = {name: tensor for name, tensor in batch["inputs"]["code"].items() if name in ("input_ids", "attention_mask")
            or (name == "token_type_ids" and getattr(backbone.config, "type_vocab_size", 0))}
    contexts = {"fp32": contextlib.nullcontext, "bf16": lambda: torch.autocast(device.type, dtype=torch.bfloat16)}
    warmed: set[str] = set()

    def step(precision):
        def run(watch, _repeat):
            model.train()
            for timed in ([False] if precision + "step" not in warmed else []) + [True]:
                with watch.measure("seconds") if timed else contextlib.nullcontext():
                    trainer.train_step(model, batch, optimizer, autocast=contexts[precision]())
            warmed.add(precision + "step")
        return run

    def forward(precision):
        def run(watch, _repeat):
            model.eval()
            with torch.inference_mode(), contexts[precision]():
                for timed in ([False] if precision + "forward" not in warmed else []) + [True]:
                    with watch.measure("seconds") if timed else contextlib.nullcontext():
                        model.backbone(**code, output_hidden_states=True)
            warmed.add(precision + "forward")
        return run

    runs = interleave({f"{precision}_{kind}": (step if kind == "step" else forward)(precision)
                       for kind in ("step", "forward") for precision in contexts},
                      profile.bench_repeats, clock=clock, sync=_sync_for(device),
                      desc=f"precision {backbone.name}", progress=progress)
    seconds = {name: r.median("seconds") for name, r in runs.items()}
    return {"model": backbone.name, "num_layers": backbone.num_layers, "batch_size": workload.profile.batch_size,
            "code_tokens": workload.profile.max_code_tokens,
            **{f"{name}_seconds": value for name, value in seconds.items()},
            "step_ratio": seconds["bf16_step"] / seconds["fp32_step"],
            "forward_ratio": seconds["bf16_forward"] / seconds["fp32_forward"],
            "runs": {name: r.seconds["seconds"] for name, r in runs.items()}}


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
    from telly.features import block_outputs, masked_mean
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
                    else:  # the last block's output before a decoder's final norm, as layer_features takes it
                        hidden = block_outputs(backbone, inputs)[-1]
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
def _telly_cache(path: str) -> Iterator[None]:
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


def bench_models(model: str, profile: Profile | None = None) -> list[str]:
    """Training rows run at the paper's size, on the chosen model and on the profile's extra
    backbones (Profile.extra_probe_models: the code-aware decoder the laptop and paper profiles
    bring into the book; smoke brings none)."""
    extras = profile.extra_probe_models if profile is not None else ()
    return list(dict.fromkeys([SHAPE_MODEL, model, *extras]))


def bench_inputs(profile: Profile, sections: Sequence[str], models: Sequence[str],
                 corpus_source: str | Path) -> dict:
    """What a bench record was made from: the store's rule for whether a stored one is current."""
    return {"profile": profile.to_dict(), "sections": [s for s in SECTIONS if s in sections],
            "models": list(models), "corpus": str(corpus_source)}


def run_bench(profile: str | Profile = "laptop", out: str | Path = "runs/bench", *, model: str = "minilm-l6",
              models: Sequence[str] | None = None, sections: Sequence[str] = SECTIONS,
              corpus_source: str | Path = "stdlib", training_examples: Sequence | None = None,
              device: torch.device | str | None = None, progress: bool = True) -> dict:
    """Run the benchmarks and write OUT/bench.json and OUT/bench.md; returns the record.

    model: the model of the probing row and the second training model (the first is always
    `unixcoder-shape`, then the profile's extra backbones, unless `models` lists the training
    models explicitly; an extra backbone whose weights cannot be had is skipped, with the reason in
    `skipped_models`). sections: any of corpus, similarity, probing, training. training_examples:
    code-search examples to train on (default: the profile's sample of the embedded corpus).
    """
    from telly import backbones
    from telly.report.bench import markdown
    from telly.store import device_description, provenance
    from telly.studies.probing import unavailable_reason
    from telly.trainer import memory_method

    started, cpu_started = time.perf_counter(), time.process_time()
    profile = get_profile(profile)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise ValueError(f"unknown bench section(s) {unknown or list(sections)}; expected some of {list(SECTIONS)}")
    device = torch.device(device) if device is not None else default_device()
    models = list(models) if models is not None else bench_models(model, profile)
    load_start = os.getloadavg()
    record: dict = {
        "kind": "bench", "profile": profile.name,
        "inputs": bench_inputs(profile, sections, models, corpus_source),
        "device": device_description(device), "cpu": cpu_model(),
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
            record["training"], record["cache"], record["skipped_models"], record["not_applicable"] = [], [], {}, []
            record["precision"] = {"autocast": f"torch.autocast({device.type!r}, dtype=torch.bfloat16)",
                                   "bf16_units": bf16_units() if device.type == "cpu" else None, "rows": []}
            for name in models:
                reason = unavailable_reason(name) if name in profile.extra_probe_models else None
                if reason:
                    record["skipped_models"][name] = reason
                    continue
                backbone = backbones.load(name)
                if not has_bias_terms(backbone):
                    record["not_applicable"].append({"model": name, "method": BitFit.name,
                                                     "reason": "the backbone has no bias terms"})
                rows, cache_rows = training_rows(backbone, profile, device, examples=training_examples,
                                                 progress=progress)
                record["training"] += rows
                record["cache"] += cache_rows
                record["precision"]["rows"].append(precision_row(backbone, profile, device, examples=training_examples,
                                                                 progress=progress))
            record["acceptance"] = acceptance(record["training"])
        record["section_seconds"][section] = time.perf_counter() - tick
    record["load_average"] = {"start": list(load_start), "end": list(os.getloadavg())}
    record["wall_seconds"] = time.perf_counter() - started
    # CPU time well below wall time x threads means the process waited for a busy machine.
    record["process_cpu_seconds"] = time.process_time() - cpu_started
    record["provenance"] = provenance(model=",".join(models), profile=profile.name,
                                      corpus_fingerprint=corpus_fingerprint, device=device)
    out = Path(out)
    RunStore(out).write_document(DOCUMENT, record)
    (out / "bench.md").write_text(markdown(record))
    return record


def reference_path(profile: str | Profile, device_type: str = "cpu", root: str | Path | None = None) -> Path:
    """Where the reference record of a profile lives: <profile>-<cpu|cuda>.json in `root`, by
    default the package's telly/report/reference/ (what the README table shows; `telly bench
    --reference` writes it)."""
    folder = Path(root) if root is not None else Path(str(resources.files("telly.report") / "reference"))
    return folder / f"{get_profile(profile).name}-{device_type}.json"


def _covers(record: Mapping, profile: Profile, model: str) -> bool:
    """Whether a reference record (which may predate `inputs`) is this profile's full bench with
    `model`'s training rows."""
    return (record.get("profile") == profile.name and set(record.get("sections", [])) >= set(SECTIONS)
            and any(r["model"] == model for r in record.get("training", [])))


def load_or_run(profile: str | Profile = "laptop", out: str | Path = "runs/laptop/bench", *, model: str = "minilm-l6",
                models: Sequence[str] | None = None, corpus_source: str | Path = "stdlib",
                run: bool | None = None, reference_root: str | Path | None = None, progress: bool = True) -> dict:
    """The bench record chapter 4 shows, with `origin` saying where it came from: "store"
    (OUT/bench.json is the full bench of exactly these inputs), else "run" (run now, when `run`;
    None: the profile's book_runs_bench), else "reference" (the record shipped with the package,
    measured earlier on the machine it names)."""
    from telly.store import read_json

    profile = get_profile(profile)
    models = list(models) if models is not None else bench_models(model, profile)
    stored = RunStore(out).find_document(DOCUMENT, bench_inputs(profile, SECTIONS, models, corpus_source))
    if stored is not None:
        return {**stored, "origin": "store"}
    if profile.book_runs_bench if run is None else run:
        record = run_bench(profile, out, model=model, models=models, corpus_source=corpus_source,
                           progress=progress)
        return {**record, "origin": "run"}
    reference = reference_path(profile, default_device().type, reference_root)
    if reference.exists():
        record = read_json(reference)
        if _covers(record, profile, model):
            return {**record, "origin": "reference"}
    raise FileNotFoundError(
        f"no {profile.name} bench with {model} in {Path(out) / 'bench.json'} nor in the shipped reference "
        f"{reference}; run `telly bench --profile {profile.name} --model {model}` (make bench) first, or "
        "let the chapter run it (run_bench=True)")
