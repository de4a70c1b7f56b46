"""RQ3 cost: what freezing saves, measured side by side in one run on one machine.

`run_bench(profile, out)` (`telly bench --profile P --out DIR`) writes DIR/bench.json (and the CLI
its table, DIR/bench.md) with
  * training: one epoch's train time and peak memory of full fine-tuning, Telly-K uncached and
    cached (K in 0, L/2, L-2, L-1), LoRA and BitFit, on `unixcoder-shape`, on `model` and on the
    profile's extra backbones (the code-aware decoder smollm2-135m, at its own input length);
    ratios to full fine-tuning, the compute limit (L-K)/L beside every cached ratio, and the
    one-time cost of building the frozen-prefix cache with the epoch after which it pays back;
    and on each of those models bf16 autocast against float32 side by side (one full training
    step and one forward pass, same weights and batch), with the CPU's bf16 units named;
  * probing: all layers' features from one forward pass against L+1 truncated forwards;
  * similarity: RSA, linear CKA and debiased CKA over 13 layers of n x 768 features;
  * corpus: loading the corpus cold (an empty TELLY_CACHE) and from its cache;
  * runs (only when asked for: `--sections runs`): whole fine-tuning runs of full fine-tuning,
    cached Telly-L/2 and Telly-(L-1) on the profile's bench_run_tasks at the profile's sizes,
    interleaved, with each run's wall time split into load, prepare, cache, train, eval, test, other.
The harness is `telly.studies.bench_harness`, what each section times `telly.studies.bench_workloads`;
this module runs the sections and checks the acceptance targets. `load_or_run` is what chapter 4 calls: the stored bench when it is current, else a new run, else
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

import os
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import torch

from telly import backbones
from telly.corpus import load_corpus, sample
from telly.jsonio import read_json
from telly.methods import BitFit
from telly.profiles import Profile
from telly.store import RunStore, bf16_units, cpu_model, device_description, provenance
from telly.studies.bench_harness import default_device
from telly.studies.bench_workloads import (
    BENCH_TASK,
    bench_profile,
    corpus_bench,
    precision_row,
    probing_bench,
    recorded_run_walls,
    run_walls,
    similarity_bench,
    training_rows,
)
from telly.studies.probing import unavailable_reason
from telly.trainer import memory_method

SHAPE_MODEL = "unixcoder-shape"  # the paper's backbone size; the acceptance targets apply to it
DOCUMENT = "bench"  # the store document: OUT/bench.json
SECTIONS = ("corpus", "similarity", "probing", "training")  # the default bench (chapter 4)
OPTIONAL_SECTIONS = ("runs",)  # whole fine-tuning runs: minutes to hours at a study's sizes
# Acceptance targets (issue 8), stated for the UniXcoder shape.
TARGET_CACHED_EPOCH_RATIO = 0.25  # cached Telly-(L-2) epoch time / full
TARGET_LIMIT_FACTOR = 1.3  # cached Telly-K ratio / compute limit, for every K >= L/2
TARGET_CACHED_MEMORY_RATIO = 0.5  # cached Telly-(L-2) peak memory / full
# Issue 22's targets for whole runs at the study's sizes: cached Telly-(L-1) and Telly-L/2 wall / full.
TARGET_RUN_RATIOS = {"deepest": 0.15, "half": 0.55}


def run_acceptance(sections: Sequence[Mapping]) -> list[dict]:
    """Issue 22's whole-run targets, per task: cached Telly-(L-1) and Telly-L/2 wall time / full's."""
    checks = []
    for section in sections:
        layers = section["num_layers"]
        for row in section["rows"]:
            share = {layers - 1: "deepest", layers // 2: "half"}.get(row["freeze"])
            if share is None:
                continue
            threshold = TARGET_RUN_RATIOS[share]
            checks.append({"task": section["task"], "model": section["model"], "freeze": row["freeze"],
                           **target_check(f"cached Telly-{row['freeze']} run wall time <= {threshold}x full",
                                          row["ratio_to_full"], threshold)})
    return checks


def recorded_runs(records: Sequence[Mapping]) -> dict:
    """Issue 22's whole-run targets checked on a study's own finished runs (`recorded_run_walls`): the
    runs section of a bench record, with how it was timed, for `telly.report.bench.runs_markdown`."""
    sections = recorded_run_walls(records)
    return {"runs": sections, "run_acceptance": run_acceptance(sections),
            "runs_timing": ("the study's own runs, one after another (not interleaved), each seed's Telly-K "
                            "against the same seed's full fine-tuning; medians over the seeds")}


def target_check(target: str, value: float, threshold: float) -> dict:
    """One target: met when `value` is at most `threshold`, else by how much it missed (a share)."""
    met = value <= threshold
    return {"target": target, "value": value, "threshold": threshold, "met": met,
            "missed_by": None if met else value / threshold - 1}


def acceptance(rows: Sequence[Mapping]) -> list[dict]:
    """The issue's targets, checked on every model's rows (binding at the UniXcoder shape)."""
    checks = []

    def check(row, target, value, threshold):
        checks.append({"model": row["model"], "binding": row["model"] == SHAPE_MODEL,
                       **target_check(target, value, threshold)})

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


def bench_models(model: str, profile: Profile | None = None) -> list[str]:
    """Training rows run at the paper's size, on the chosen model and on the profile's extra
    backbones (Profile.probing.extra_probe_models: the code-aware decoder the laptop and paper profiles
    bring into the book; smoke brings none)."""
    extras = profile.probing.extra_probe_models if profile is not None else ()
    return list(dict.fromkeys([SHAPE_MODEL, model, *extras]))


def bench_inputs(profile: Profile, sections: Sequence[str], models: Sequence[str],
                 corpus_source: str | Path) -> dict:
    """What a bench record was made from: the store's rule for whether a stored one is current."""
    return {"profile": profile.to_dict(), "sections": [s for s in (*SECTIONS, *OPTIONAL_SECTIONS) if s in sections],
            "models": list(models), "corpus": str(corpus_source)}


def run_bench(profile: Profile, out: str | Path = "runs/bench", *, model: str = "minilm-l6",
              models: Sequence[str] | None = None, sections: Sequence[str] = SECTIONS,
              corpus_source: str | Path = "stdlib", training_examples: Sequence | None = None,
              device: torch.device | str | None = None, progress: bool = True) -> dict:
    """Run the benchmarks and write OUT/bench.json; returns the record (`telly bench` also writes
    its table, `telly.report.bench.markdown`, as OUT/bench.md).

    model: the model of the probing row and the second training model (the first is always
    `unixcoder-shape`, then the profile's extra backbones, unless `models` lists the training
    models explicitly; an extra backbone whose weights cannot be had is skipped, with the reason in
    `skipped_models`). sections: any of corpus, similarity, probing, training. training_examples:
    code-search examples to train on (default: the profile's sample of the embedded corpus).
    """

    started, cpu_started = time.perf_counter(), time.process_time()
    known = (*SECTIONS, *OPTIONAL_SECTIONS)
    unknown = [s for s in sections if s not in known]
    if unknown or not sections:
        raise ValueError(f"unknown bench section(s) {unknown or list(sections)}; expected some of {list(known)}")
    device = torch.device(device) if device is not None else default_device()
    models = list(models) if models is not None else bench_models(model, profile)
    load_start = os.getloadavg()
    record: dict = {
        "kind": "bench", "profile": profile.name,
        "inputs": bench_inputs(profile, sections, models, corpus_source),
        "device": device_description(device), "cpu": cpu_model(),
        "device_type": device.type, "amp": "bf16 autocast" if device.type == "cuda" else None,
        "threads": torch.get_num_threads(), "repeats": profile.bench.bench_repeats,
        "timing": (f"median of {profile.bench.bench_repeats} interleaved repeat(s); the variants' order "
                   "rotates each repeat"),
        "memory_method": memory_method(device), "sections": list(sections),
    }
    corpus_fingerprint = None
    record["section_seconds"] = {}
    for section in (*SECTIONS, *OPTIONAL_SECTIONS):  # always in this order: cheap sections first
        if section not in sections:
            continue
        tick = time.perf_counter()
        if section == "corpus":
            record["corpus"] = corpus_bench(corpus_source, repeats=profile.bench.bench_repeats, progress=progress)
            corpus_fingerprint = record["corpus"]["fingerprint"]
        elif section == "similarity":
            record["similarity"] = similarity_bench(profile.bench.bench_similarity_inputs,
                                                    repeats=profile.bench.bench_repeats, progress=progress)
        elif section == "probing":
            texts = [f.code_without_doc for f in sample(load_corpus(corpus_source, progress=False),
                                                         profile.bench.bench_probe_texts)]
            record["probing"] = probing_bench(backbones.load(model), texts, max_length=profile.inputs.max_code_tokens,
                                              batch_size=profile.probing.feature_batch_size,
                                              repeats=profile.bench.bench_repeats, device=device, progress=progress)
        elif section == "runs":
            layers = backbones.load(model).num_layers
            record["runs"] = [run_walls(task, model, layers, profile, repeats=profile.bench.bench_repeats,
                                        progress=progress) for task in profile.bench.bench_run_tasks]
            record["run_acceptance"] = run_acceptance(record["runs"])
        else:
            shaped = bench_profile(profile)
            record["epoch"] = {
                "task": BENCH_TASK, "steps": profile.bench.bench_steps, "batch_size": profile.bench.bench_batch_size,
                "examples": profile.bench.bench_steps * profile.bench.bench_batch_size,
                "code_tokens": shaped.inputs.max_code_tokens, "query_tokens": shaped.inputs.max_text_tokens,
                "optimizer": "AdamW", "warmup_steps_untimed": 1,
            }
            record["training"], record["cache"], record["skipped_models"], record["not_applicable"] = [], [], {}, []
            record["precision"] = {"autocast": f"torch.autocast({device.type!r}, dtype=torch.bfloat16)",
                                   "bf16_units": bf16_units() if device.type == "cpu" else None, "rows": []}
            for name in models:
                reason = unavailable_reason(name) if name in profile.probing.extra_probe_models else None
                if reason:
                    record["skipped_models"][name] = reason
                    continue
                backbone = backbones.load(name)
                if not BitFit.bias_names(backbone.model):
                    record["not_applicable"].append({"model": name, "method": BitFit.name, "label": BitFit.label,
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
    return record


def reference_path(profile: Profile, device_type: str = "cpu", root: str | Path | None = None) -> Path:
    """Where the reference record of a profile lives: <profile>-<cpu|cuda>.json in `root`, by
    default the package's telly/report/reference/ (what the README table shows; `telly bench
    --reference` writes it)."""
    folder = Path(root) if root is not None else Path(str(resources.files("telly.report") / "reference"))
    return folder / f"{profile.name}-{device_type}.json"


def _covers(record: Mapping, profile: Profile, model: str) -> bool:
    """Whether a reference record (which may predate `inputs`) is this profile's full bench with
    `model`'s training rows."""
    return (record.get("profile") == profile.name and set(record.get("sections", [])) >= set(SECTIONS)
            and any(r["model"] == model for r in record.get("training", [])))


def load_or_run(profile: Profile, out: str | Path = "runs/laptop/bench", *, model: str = "minilm-l6",
                models: Sequence[str] | None = None, corpus_source: str | Path = "stdlib",
                run: bool | None = None, reference_root: str | Path | None = None, progress: bool = True) -> dict:
    """The bench record chapter 4 shows, with `origin` saying where it came from: "store"
    (OUT/bench.json is the full bench of exactly these inputs), else "run" (run now, when `run`;
    None: the profile's book_runs_bench), else "reference" (the record shipped with the package,
    measured earlier on the machine it names)."""
    models = list(models) if models is not None else bench_models(model, profile)
    stored = RunStore(out).find_document(DOCUMENT, bench_inputs(profile, SECTIONS, models, corpus_source))
    if stored is not None:
        return {**stored, "origin": "store"}
    if profile.bench.book_runs_bench if run is None else run:
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
