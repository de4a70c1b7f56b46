"""RQ3: fine-tune every (task, method, freeze depth, seed) variant, resumably, or read it back.

Each variant is one `telly.trainer.finetune` run whose record lands at a path fixed by its
`telly.store.Variant.run_id`. A record is written last and atomically, so a sweep killed mid-run
leaves the finished runs' records and nothing for the interrupted one: restarted with the same
arguments it skips the finished runs and redoes only that one. `force` reruns everything. A run
that fails (e.g. out of memory) is reported and the sweep goes on with the others.

`write_summary` tests the finished runs against full fine-tuning (paired non-inferiority over seeds
and test rows, Holm across depths; `telly.analysis.non_inferiority_summary`) and writes
summary.json beside the records: `telly sweep` and `freezing_study` both call it.

`freezing_study` is what chapter 3 runs: the classification and search tasks over one set of
depths, the slower generation tasks over another, each over the profile's seeds, then every
finished record of the model and their summary.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from telly.analysis import non_inferiority_summary
from telly.backbones import load
from telly.freezing import check_depth
from telly.jsonio import as_stored
from telly.layout import BENCH_DIR, SUMMARY
from telly.profiles import Profile
from telly.progress import progress_bar
from telly.store import RunStore, Variant, as_store
from telly.studies.bench import load_or_run
from telly.tasks import get_task
from telly.tasks.clone_detection import clone_baselines
from telly.trainer import finetune, finished_run

GENERATION_TASKS = ("code-summarization", "code-generation", "code-completion")


def parse_freeze(spec: str | Sequence[int], num_layers: int) -> list[int]:
    """Freeze depths from "-1,0,3", "-1..5", "all" (= -1..L-1) or a list of ints."""
    if isinstance(spec, (list, tuple)):
        depths = [int(k) for k in spec]
    else:
        depths = []
        for part in str(spec).replace(" ", "").split(","):
            if part == "all":
                depths.extend(range(-1, num_layers))
            elif ".." in part:
                low, high = part.split("..")
                depths.extend(range(int(low), int(high) + 1))
            elif part:
                try:
                    depths.append(int(part))
                except ValueError:
                    raise ValueError(f"freeze depth {part!r} is not an integer (use e.g. -1,0,3 or -1..5 or all)") from None
    for k in depths:
        check_depth(k, num_layers)
    return sorted(set(depths), key=depths.index)


def plan(tasks: Sequence[str], freezes: Sequence[int], seeds: Sequence[int], methods: Sequence[str], *,
         model: str, profile: Profile, cache: bool = True,
         data_paths: Mapping[str, str] | None = None) -> list[Variant]:
    """Variants in run order; Telly with K = -1 and the other methods collapse to one run each."""

    data_paths = dict(data_paths or {})
    unknown = sorted(set(data_paths) - set(tasks))
    if unknown:
        raise ValueError(f"data paths given for task(s) {unknown} that the sweep does not run ({', '.join(tasks)})")
    for task in tasks:
        get_task(task)  # unknown task -> ValueError listing the valid ones, before anything runs
    variants: list[Variant] = []
    for task in tasks:
        for method in methods:
            for freeze in (freezes if method == "telly" else [-1]):
                for seed in seeds:
                    variant = Variant.of(task, model, freeze, method=method, cache=cache, seed=seed,
                                         profile=profile, data_path=data_paths.get(task))
                    if variant not in variants:
                        variants.append(variant)
    return variants


def sweep(tasks: Sequence[str], freeze: str | Sequence[int] = "all", seeds: Sequence[int] = (0,), *,
          methods: Sequence[str] = ("telly",), model: str = "minilm-l6", profile: Profile,
          store: RunStore | str | Path = "runs", force: bool = False, cache: bool = True, progress: bool = True,
          data_paths: Mapping[str, str] | None = None, **finetune_options) -> dict:
    """Run every variant not already finished in `store`; returns {"records", "skipped", "failed"}.
    data_paths: task -> real dataset path (tasks not named use the offline corpus)."""

    num_layers = load(model).num_layers
    variants = plan(list(tasks), parse_freeze(freeze, num_layers), list(seeds), list(methods), model=model,
                    profile=profile, cache=cache, data_paths=data_paths)
    return run_variants(variants, store, force=force, progress=progress, **finetune_options)


def run_variants(variants: Sequence[Variant], store: RunStore | str | Path = "runs", *, force: bool = False,
                 progress: bool = True, **finetune_options) -> dict:
    """Fine-tune each variant not already finished in `store`, in order; a failed run is reported and
    the others go on. Returns {"records", "skipped", "failed"}."""
    store = as_store(store)
    records, skipped, failed = [], [], []
    bar = progress_bar(variants, desc="sweep", unit="run", disable=not progress)
    for variant in bar:
        bar.set_postfix_str(variant.run_id)
        record = None if force else finished_run(variant, store)
        if record is not None:
            records.append(record)
            skipped.append(variant.run_id)
            continue
        try:
            records.append(finetune(variant, store, progress=progress, **finetune_options))
        except (ValueError, RuntimeError, MemoryError, OSError) as exc:
            failed.append({"run": variant.run_id, "error": f"{type(exc).__name__}: {exc}"})
            print(f"telly sweep: {variant.run_id} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return {"records": records, "skipped": skipped, "failed": failed}


def trivial_baselines(tasks: Sequence[str], profile: Profile,
                      data_paths: Mapping[str, str | None] | None = None) -> dict:
    """task -> `telly.tasks.Evaluation` of the task's model-free answer (`Task.trivial_baseline`) on
    the profile's test split (the offline corpus, or the task's `data_paths` entry)."""

    data_paths = dict(data_paths or {})
    baselines = {}
    for name in tasks:
        task = get_task(name, data_path=data_paths.get(name))
        baselines[name] = task.trivial_baseline(task.load_data(profile), profile)
    return baselines


def summarise(records: Sequence[dict], profile: Profile) -> dict:
    """`telly.analysis.non_inferiority_summary` of `records`, each task's trivial baseline scored on
    the records' own data (without one, every task gets "no verdict")."""
    data_paths = {r["task"]: r["data"]["path"] for r in records}
    return non_inferiority_summary(records, profile, trivial=trivial_baselines(sorted(data_paths), profile, data_paths))


# Which verdict test made a summary.json: a new test makes every stored summary stale.
SUMMARY_TEST = ("two-level t, three verdicts, token-overlap clone baseline, Telly-auto one variant whatever K its "
                "seeds chose (2026-12-06)")


def write_summary(records: Sequence[dict], profile: Profile, store: RunStore | str | Path) -> dict:
    """The non-inferiority summary of `records` (`telly.analysis.non_inferiority_summary`, each
    task's trivial baseline scored on the records' own data) as summary.json in `store`; read back
    instead while summary.json was made from exactly these records under this profile."""

    store = as_store(store)
    inputs = {"profile": profile.to_dict(), "runs": sorted([r["run"], r["provenance"]["date"]] for r in records),
              "test": SUMMARY_TEST}
    stored = store.find_document(SUMMARY, inputs)
    if stored is not None:
        return stored
    document = summarise(records, profile) | {"inputs": inputs}
    store.write_document(SUMMARY, document)
    return as_stored(document)


def freezing_study(model: str, profile: Profile, store: RunStore | str | Path, *,
                   tasks: Sequence[str] = ("code-search", "clone-detection"),
                   generation_tasks: Sequence[str] = GENERATION_TASKS, freeze: str | None = None,
                   generation_freeze: str | None = None, seeds: Sequence[int] | None = None,
                   baselines: Sequence[str] = (), data: Mapping[str, str] | None = None,
                   generation_on_encoders: bool = False, progress: bool = True) -> dict:
    """Chapter 3's runs: `tasks` over `freeze` depths (default: the profile's sweep_freeze), the
    generation tasks over `generation_freeze` (the profile's generation_freeze), each over `seeds`
    (the profile's seeds of each task, `Profile.seeds_for`) with the `baselines` methods beside Telly-K; then every finished record of
    the model in the store and their summary (`write_summary`).

    A backbone that was not pre-trained to generate (an encoder such as MiniLM-L6) runs no generation
    task unless `generation_on_encoders`: its LM head would start from nothing, and on a laptop it
    decodes empty strings; `not_run` says so. Returns {"records", "failed", "ran": {task group:
    (records, read back)}, "not_run": {task: why}, "summary", "seeds"}."""
    store, data = as_store(store), dict(data or {})
    seeds_of = {task: list(profile.seeds_for(task) if seeds is None else seeds)
                for task in [*tasks, *generation_tasks]}
    not_run = {}
    if generation_tasks and not generation_on_encoders and not backbone_facts(model)["pretrained_generator"]:
        not_run = {task: (f"{model} is an encoder that was not pre-trained to generate text: its language-model "
                          "head would be learned from nothing, so its generation scores would say nothing about "
                          "freezing") for task in generation_tasks}
        generation_tasks = ()
    groups = ((list(tasks), profile.training.sweep_freeze if freeze is None else freeze),
              (list(generation_tasks), profile.generation.generation_freeze if generation_freeze is None else generation_freeze))
    failed, ran = [], {}
    for tasks_at_depths, depths in groups:
        by_seeds: dict[tuple[int, ...], list[str]] = {}
        for task in tasks_at_depths:
            by_seeds.setdefault(tuple(seeds_of[task]), []).append(task)
        for group_seeds, group in by_seeds.items():
            result = sweep(group, depths, group_seeds, methods=["telly", *baselines], model=model, profile=profile,
                           store=store, data_paths={t: p for t, p in data.items() if t in group}, progress=progress)
            failed += result["failed"]
            ran[", ".join(group)] = (len(result["records"]), len(result["skipped"]))
    records = store.records(model=model, profile=profile.name, tasks=[*tasks, *generation_tasks], data_paths=data)
    seeds = sorted(set().union(*seeds_of.values())) if seeds_of else []
    return {"records": records, "failed": failed, "ran": ran, "seeds": seeds, "seeds_of": seeds_of, "not_run": not_run,
            "summary": write_summary(records, profile, store)}


def bench_record(model: str, profile: Profile, store: RunStore | str | Path) -> dict | None:
    """The bench record chapter 4 shows (`telly.studies.bench.load_or_run` on STORE/bench, never run
    from here): its epoch ratios come from one process; None when there is none."""

    try:
        return load_or_run(profile, as_store(store).root / BENCH_DIR, model=model, run=False, progress=False)
    except FileNotFoundError:
        return None


def backbone_facts(model: str) -> dict:
    """What a page says about the backbone: name, source, architecture, layers, width, parameters, kind."""

    return load(model).describe()


def clone_baseline(profile: Profile, *, data_path: str | None = None, seed: int = 0) -> dict:
    """The references chapter 3 shows beside clone detection on the profile's split (always "clone",
    one side alone, token overlap: `telly.tasks.clone_detection.clone_baselines`)."""

    task = get_task("clone-detection", data_path=data_path)
    return clone_baselines(task.load_data(profile), profile, seed=seed)


def cache_check(task: str, model: str, freeze: int, profile: Profile, store: RunStore | str | Path, *,
                seed: int = 0, data_path: str | None = None, progress: bool = True) -> tuple[dict, dict]:
    """(cached, uncached) records of Telly-`freeze` on `task`, same seed: what caching changes.
    Runs whichever is not in the store yet."""

    store = as_store(store)
    pair = []
    for cache in (True, False):
        variant = Variant.of(task, model, freeze, cache=cache, seed=seed, profile=profile, data_path=data_path)
        pair.append(finished_run(variant, store) or finetune(variant, store, progress=progress))
    return pair[0], pair[1]
