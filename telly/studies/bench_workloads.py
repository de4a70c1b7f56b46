"""What the bench (`telly.studies.bench`) times, section by section: training epochs of every method
and freeze depth (with the frozen-prefix cache's build and payback), bf16 against float32, whole
fine-tuning runs (the runs section), probing's one pass against truncated passes, the similarity
measures, and corpus loading.
"""
from __future__ import annotations

import contextlib
import copy
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from telly import trainer
from telly.backbones import cache_dir
from telly.batching import move_to
from telly.corpus import load_corpus
from telly.features import block_outputs, layer_features, masked_mean
from telly.methods import BitFit, Full, LoRA, Telly
from telly.prefix_cache import build_prefix_cache, run_prefix
from telly.profiles import Profile
from telly.similarity import layer_similarity
from telly.store import RunStore, Variant
from telly.studies.bench_harness import (
    Measured,
    Stopwatch,
    autocast_for,
    interleave,
    payback_epochs,
    ratio_to,
    sync_for,
)
from telly.tasks import get_task

BENCH_TASK = "code-search"
SIMILARITY_LAYERS = 13
SIMILARITY_DIM = 768
# The code-aware decoder of the study trains on 128-token code (profile "study"): its rows use that
# length when the profile's bench_code_tokens is longer, so they time the steps the study takes.
MODEL_CODE_TOKENS = {"smollm2-135m": 128}


# ----------------------------------------------------------------------------- training

def freeze_depths(num_layers: int) -> list[int]:
    """The K the bench measures: 0, L/2, L-2 and L-1."""
    if num_layers < 2:
        raise ValueError(f"the training bench needs a model with 2+ layers, got {num_layers}")
    return sorted({0, num_layers // 2, num_layers - 2, num_layers - 1})


def training_variants(model: str, num_layers: int, profile: Profile, *, bitfit: bool = True) -> list[Variant]:
    """Full fine-tuning, Telly-K uncached and cached at every bench depth, LoRA and BitFit (left
    out with `bitfit=False`: a backbone without bias terms, such as SmolLM2's, has nothing for it to train)."""
    methods = [Full(), *(Telly(k, cache) for k in freeze_depths(num_layers) for cache in (False, True)),
               LoRA(), *([BitFit()] if bitfit else [])]
    return [Variant(BENCH_TASK, model, profile, method) for method in methods]


def compute_limit(num_layers: int, freeze: int) -> float:
    """(L-K)/L: the share of full fine-tuning's block work left when blocks 0..K-1 never run."""
    return (num_layers - freeze) / num_layers


def paper_estimate(num_layers: int, freeze: int) -> float:
    """(L + 2(L-K)) / 3L: uncached Telly still runs all L blocks forward (backward ~ 2 forwards)."""
    return (num_layers + 2 * (num_layers - freeze)) / (3 * num_layers)


def bench_code_tokens(profile: Profile, model: str | None = None) -> int:
    """The code length `model`'s training rows use: the profile's bench_code_tokens, or the
    model's own length (MODEL_CODE_TOKENS) when that is shorter."""
    return min(profile.bench.bench_code_tokens, MODEL_CODE_TOKENS.get(str(model), profile.bench.bench_code_tokens))


def bench_profile(profile: Profile, model: str | None = None) -> Profile:
    """The profile the training rows of `model` run with: the bench's batch and code length."""
    steps, batch = profile.bench.bench_steps, profile.bench.bench_batch_size
    return profile.changed(batch_size=batch, max_code_tokens=bench_code_tokens(profile, model),
                   train_examples=steps * batch, valid_examples=batch, test_examples=batch)


class TrainingWorkload:
    """One backbone's training rows: every variant trains a fresh copy of the same weights on the
    same batches, through the trainer's pieces (task model, method, prefix cache, optimizer, step)."""

    def __init__(self, backbone, profile: Profile, device: torch.device, examples: Sequence | None = None):
        self.backbone = backbone
        self.profile = bench_profile(profile, backbone.name)
        self.device = device
        self.task = get_task(BENCH_TASK)
        self.examples = list(examples) if examples is not None else self.task.load_data(self.profile).train
        batch, steps = self.profile.training.batch_size, self.profile.bench.bench_steps
        if len(self.examples) < steps * batch:
            raise ValueError(f"the training bench needs bench_steps x bench_batch_size = {steps} x {batch} "
                             f"examples for one epoch, got {len(self.examples)}")
        self.examples = self.examples[:steps * batch]
        self.batches = [list(range(start, start + batch)) for start in range(0, steps * batch, batch)]

    def collate(self, rows):
        return self.task.collate(rows, self.backbone.tokenizer, self.profile)

    def first_batch(self) -> dict:
        """The epoch's first batch, collated, on the device."""
        return move_to(self.collate([self.examples[i] for i in self.batches[0]]), self.device)

    def run(self, variant: Variant, watch: Stopwatch, measure_memory: bool) -> dict:
        """Build the variant, (build its cache,) take one untimed warm-up step on a copy (measuring
        its peak memory when `measure_memory`), time one epoch. Returns the variant's facts."""

        backbone = replace(self.backbone, model=copy.deepcopy(self.backbone.model))
        model = self.task.build_model(backbone)
        variant.method.apply(model)
        model.to(self.device).train()
        make_optimizer = trainer.optimizer_factory(self.task, self.profile,
                                                   self.task.head_lr_scale * self.profile.training.learning_rate)
        cache = None
        if variant.method.cache:
            with watch.measure("cache_seconds"), autocast_for(self.device) or contextlib.nullcontext():
                cache = build_prefix_cache(
                    model.backbone, self.examples, self.collate, variant.freeze,
                    batch_size=self.profile.training.batch_size, memory_mb=self.profile.training.cache_memory_mb,
                    device=self.device, disk_dir=cache_dir(), show_progress=False)
        state_dtype = next(model.parameters()).dtype

        def batch(indices: list[int]) -> dict:
            rows = self.collate([self.examples[i] for i in indices])
            if cache is not None:
                rows["inputs"] = cache.states(indices, state_dtype)
            return move_to(rows, self.device)

        in_memory_cache = cache.nbytes() if cache is not None and cache.storage == "memory" else 0
        peak_bytes = trainer.step_peak_memory(model, make_optimizer, batch(self.batches[0]), self.device,
                                              cache_bytes=in_memory_cache, autocast=autocast_for(self.device),
                                              measure=measure_memory)
        optimizer = make_optimizer(model)
        with watch.measure("epoch_seconds"):
            for indices in self.batches:
                trainer.train_step(model, batch(indices), optimizer, autocast=autocast_for(self.device))
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
    variants = {v.method.tag: v for v in training_variants(backbone.name, num_layers, profile,
                                                            bitfit=bool(BitFit.bias_names(backbone.model)))}
    runs = interleave({name: (lambda watch, repeat, v=v: workload.run(v, watch, measure_memory=repeat == 0))
                       for name, v in variants.items()},
                      profile.bench.bench_repeats, clock=clock, sync=sync_for(device),
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
            "batch_size": workload.profile.training.batch_size, "code_tokens": workload.profile.inputs.max_code_tokens,
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

def precision_row(backbone, profile: Profile, device: torch.device, *, examples: Sequence | None = None,
                  clock: Callable[[], float] = time.perf_counter, progress: bool = True) -> dict:
    """bf16 autocast against float32 on one backbone, interleaved: one full fine-tuning step (the
    trainer's AdamW and step) and one forward pass of the backbone over the same batch's code
    (every layer's states, as probing and similarity read them). Each precision takes one untimed
    warm-up call first. Ratios are bf16 time / float32 time."""
    workload = TrainingWorkload(backbone, profile, device, examples)
    model = workload.task.build_model(replace(backbone, model=copy.deepcopy(backbone.model)))
    Full().apply(model)
    model.to(device)
    optimizer = trainer.optimizer_factory(workload.task, workload.profile, workload.task.head_lr_scale
                                          * workload.profile.training.learning_rate)(model)
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
                      profile.bench.bench_repeats, clock=clock, sync=sync_for(device),
                      desc=f"precision {backbone.name}", progress=progress)
    seconds = {name: r.median("seconds") for name, r in runs.items()}
    return {"model": backbone.name, "num_layers": backbone.num_layers, "batch_size": workload.profile.training.batch_size,
            "code_tokens": workload.profile.inputs.max_code_tokens,
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
                      sync=sync_for(device), desc=f"probing {backbone.name}", progress=progress)
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


# ----------------------------------------------------------------------------- whole runs

def run_depths(num_layers: int) -> list[int]:
    """The runs section's variants: full fine-tuning (-1), cached Telly-L/2 and Telly-(L-1)."""
    return [-1, num_layers // 2, num_layers - 1]


def run_walls(task: str, model: str, num_layers: int, profile: Profile, *, repeats: int,
              progress: bool = True) -> dict:
    """Whole fine-tuning runs (`telly.trainer.finetune`: load, cache, train, validation, test, writing)
    of full fine-tuning and cached Telly-K, interleaved, at the profile's sizes: each variant's median
    wall time, its split (the record's time_split, medians) and its ratio to full fine-tuning's. The
    task's preparation and zero-shot score are computed first, untimed, as a sweep's first run does
    once for all its runs."""
    variants = {Telly(k).label if k >= 0 else Full().label: Variant.of(task, model, k, profile=profile)
                for k in run_depths(num_layers)}
    with tempfile.TemporaryDirectory(prefix="telly-bench-runs-") as folder:
        store = RunStore(folder)
        shared = trainer.FineTuning(next(iter(variants.values())), store, mixed_precision=None, progress=False)
        shared.load(None)
        shared.before_training()
        del shared

        def measured(variant: Variant) -> Measured:
            def run(watch: Stopwatch, repeat: int) -> dict:
                with watch.measure("wall"):
                    record = trainer.finetune(variant, store, progress=False)
                for part, seconds in record["time_split"].items():
                    watch.seconds[part] = seconds
                return {"epochs_run": record["epochs_run"], "sizes": record["data"]["sizes"],
                        "data_fingerprint": record["data"]["fingerprint"], "freeze": variant.freeze}
            return run

        runs = interleave({label: measured(v) for label, v in variants.items()}, repeats,
                          desc=f"runs {task}", progress=progress)
    full = Full().label
    walls = {label: r.median("wall") for label, r in runs.items()}
    ratios = ratio_to(walls, full)
    return {"task": task, "model": model, "num_layers": num_layers, "profile": profile.name,
            "sizes": runs[full].info["sizes"], "data_fingerprint": runs[full].info["data_fingerprint"],
            "rows": [{"variant": label, "freeze": r.info["freeze"], "wall_seconds": walls[label],
                      "ratio_to_full": ratios[label], "epochs_run": r.info["epochs_run"],
                      "split": {part: r.median(part) for part in r.seconds if part != "wall"},
                      "runs": r.seconds["wall"]} for label, r in runs.items()]}


def recorded_run_walls(records: Sequence[dict]) -> list[dict]:
    """The runs section from a sweep's finished records instead of new runs: per task, full fine-tuning
    and each cached Telly-K, with the median over seeds of the wall time, of its split and of the
    ratio to the same seed's full fine-tuning (the seeds share data and order, so the pairs differ only
    by the freeze). The runs ran one after another, not interleaved: drift in the machine's load goes
    straight into the ratios."""
    by_task: dict[str, list[dict]] = {}
    for record in records:
        cached_or_full = record.get("method") == "full" or (record.get("method") == "telly" and record.get("uses_cache"))
        if not cached_or_full or record.get("status") != "finished":
            continue
        if "time_split" not in record:
            raise ValueError(f"record {record.get('run')!r} has no time_split: it predates the split the runs "
                             "section reads")
        by_task.setdefault(record["task"], []).append(record)
    sections = []
    for task, task_records in sorted(by_task.items()):
        by_freeze: dict[int, dict[int, dict]] = {}
        for record in task_records:
            by_freeze.setdefault(record["freeze"], {})[record["seed"]] = record
        full = by_freeze.get(-1)
        if not full:
            continue
        rows = []
        for freeze, by_seed in sorted(by_freeze.items()):
            seeds = sorted(set(by_seed) & set(full))
            if not seeds:
                continue
            runs = [by_seed[s] for s in seeds]
            epochs = sorted({r["epochs_run"] for r in runs})
            rows.append({"variant": runs[0]["label"], "freeze": freeze, "seeds": seeds,
                         "wall_seconds": statistics.median(r["wall_seconds"] for r in runs),
                         "ratio_to_full": statistics.median(by_seed[s]["wall_seconds"] / full[s]["wall_seconds"]
                                                            for s in seeds),
                         "epochs_run": f"{epochs[0]}-{epochs[-1]}" if len(epochs) > 1 else str(epochs[0]),
                         "split": {part: statistics.median(r["time_split"].get(part, 0.0) for r in runs)
                                   for part in runs[0]["time_split"]},
                         "runs": [r["wall_seconds"] for r in runs]})
        first = next(iter(full.values()))
        sections.append({"task": task, "model": first["model"], "num_layers": first["parameters"]["num_layers"],
                         "profile": first["profile"], "sizes": first["data"]["sizes"],
                         "data_fingerprint": first["data"]["fingerprint"], "rows": rows})
    return sections
