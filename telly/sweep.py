"""`telly sweep`: every (task, method, freeze depth, seed) variant, resumable.

Each variant is one `telly.trainer.finetune` run whose record lands at a path fixed by its
settings. A record is written last and atomically, so a sweep killed mid-run leaves the finished
runs' records and nothing for the interrupted one: restarted with the same arguments it skips the
finished runs and redoes only that one. `--force` reruns everything. A run that fails (e.g. out of
memory) is reported and the sweep goes on with the others; the exit status says so.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from telly.profiles import Profile, get_profile


@dataclass(frozen=True)
class Variant:
    task: str
    method: str
    freeze: int
    seed: int


def parse_freeze(spec: str | list | tuple, num_layers: int) -> list[int]:
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
    bad = [k for k in depths if not -1 <= k <= num_layers - 1]
    if bad:
        raise ValueError(f"freeze depths {bad} out of range -1..{num_layers - 1} for a {num_layers}-layer model")
    return sorted(set(depths), key=depths.index)


def plan(tasks: list[str], freezes: list[int], seeds: list[int], methods: list[str]) -> list[Variant]:
    """Variants in run order; Telly with K=-1 and other methods' K collapse to one full/method run."""
    from telly.baselines import METHODS
    from telly.tasks import get_task
    from telly.trainer import normalise_method

    for task in tasks:
        get_task(task)  # unknown task -> ValueError listing the valid ones, before anything runs
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    variants: list[Variant] = []
    for task in tasks:
        for method in methods:
            depths = freezes if method == "telly" else [-1]
            for freeze in depths:
                for seed in seeds:
                    variant = Variant(task, normalise_method(method, freeze), freeze, seed)
                    if variant not in variants:
                        variants.append(variant)
    return variants


def sweep(tasks: list[str], freeze: str | list[int] = "all", seeds: list[int] = (0,), *,
          methods: list[str] = ("telly",), model: str = "minilm-l6", profile: str | Profile = "laptop",
          out: str | Path = "runs", force: bool = False, cache: bool = True, progress: bool = True,
          data_paths: Mapping[str, str] | None = None, **finetune_options) -> dict:
    """Run every variant not already finished under `out`; returns {"records", "skipped", "failed"}.
    data_paths: task -> real dataset path (tasks not named use the offline corpus)."""
    from telly.backbones import load
    from telly.results import read_json
    from telly.trainer import finetune, record_path

    profile = get_profile(profile)
    num_layers = load(model).num_layers
    variants = plan(list(tasks), parse_freeze(freeze, num_layers), list(seeds), list(methods))
    data_paths = dict(data_paths or {})
    unknown = sorted(set(data_paths) - set(tasks))
    if unknown:
        raise ValueError(f"data paths given for task(s) {unknown} that the sweep does not run ({', '.join(tasks)})")
    records, skipped, failed = [], [], []
    bar = tqdm(variants, desc="sweep", unit="run", disable=not progress)
    for variant in bar:
        data_path = data_paths.get(variant.task)
        path = record_path(out, variant.task, model, variant.method, variant.freeze, variant.seed,
                           profile.name, cache, data_path)
        bar.set_postfix_str(path.stem)
        if path.exists() and not force:
            try:
                record = read_json(path)
            except ValueError:
                record = None  # a damaged record counts as unfinished: run it again
            if record and record.get("status") == "finished":
                records.append(record)
                skipped.append(path.stem)
                continue
        try:
            records.append(finetune(variant.task, model, variant.freeze, method=variant.method,
                                    profile=profile, seed=variant.seed, out=out, cache=cache,
                                    progress=progress, data_path=data_path, **finetune_options))
        except (ValueError, RuntimeError, MemoryError, OSError) as exc:
            failed.append({"run": path.stem, "error": f"{type(exc).__name__}: {exc}"})
            print(f"telly sweep: {path.stem} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    return {"records": records, "skipped": skipped, "failed": failed}


def add_cli(subparsers) -> None:
    from telly.cli import add_common

    parser = subparsers.add_parser("sweep", help="fine-tune every freeze depth / method / seed (resumable)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(parser, out="runs")
    parser.add_argument("--tasks", default="code-search,clone-detection", help="comma-separated task names")
    parser.add_argument("--freeze", default="all",
                        help="depths: all (= -1..L-1, the default) or a list or range written with '=', "
                             "e.g. --freeze=-1,0,3 or --freeze=-1..5")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--methods", default="telly", help="comma-separated: telly, full, lora, bitfit")
    parser.add_argument("--no-cache", dest="cache", action="store_false", help="Telly-K without the prefix cache")
    parser.add_argument("--force", action="store_true", help="rerun variants that already have a record")
    parser.add_argument("--data", action="append", default=[], metavar="TASK=PATH",
                        help="a real dataset for one task (repeatable); other tasks use the offline corpus")
    parser.set_defaults(handler=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    from telly.backbones import BackboneUnavailable
    from telly.trainer import summary

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s]
        data_paths = dict(_task_path(text) for text in args.data)
        result = sweep(args.tasks.split(","), args.freeze, seeds, methods=args.methods.split(","),
                       model=args.model, profile=args.profile, out=args.out, force=args.force, cache=args.cache,
                       data_paths=data_paths)
    except (ValueError, FileNotFoundError, BackboneUnavailable) as exc:
        print(f"telly sweep: error: {exc}", file=sys.stderr)
        return 2
    for record in result["records"]:
        print(summary(record))
    print(f"{len(result['records'])} records ({len(result['skipped'])} already there), "
          f"{len(result['failed'])} failed", file=sys.stderr)
    return 1 if result["failed"] else 0


def _task_path(text: str) -> tuple[str, str]:
    task, sep, path = text.partition("=")
    if not sep or not task or not path:
        raise ValueError(f"--data expects TASK=PATH, got {text!r}")
    return task, path


# ----------------------------------------------------------------------------- reading a sweep back

def load_records(out: str | Path, *, model: str | None = None, profile: str | None = None,
                 tasks: list[str] | None = None, data_paths: Mapping[str, str] | None = None) -> list[dict]:
    """Finished fine-tuning records under `out` (top level), optionally filtered; for each task only
    the runs on its `data_paths` entry (default: the offline corpus), so real-data and offline runs
    never mix."""
    from telly.results import read_json
    from telly.trainer import data_location

    wanted_data = {task: data_location(path) for task, path in (data_paths or {}).items()}
    records = []
    for path in sorted(Path(out).glob("*.json")):
        record = read_json(path)
        if not isinstance(record, dict) or record.get("status") != "finished" or "freeze" not in record:
            continue
        if (model and record["model"] != model) or (profile and record["profile"] != profile) \
                or (tasks and record["task"] not in tasks) \
                or record["data"].get("path") != wanted_data.get(record["task"]):
            continue
        records.append(record)
    return records


def freeze_table(records: list[dict]):
    """One row per (task, method, freeze, cache) averaged over seeds: quality with its 95% CI, trainable
    parameters, epoch time, time to best, epochs to best, peak memory, and cost ratios to full
    fine-tuning of the same task (seed-averaged). With one seed the CI is the run's bootstrap CI;
    with several it is the mean of the per-seed bounds (approximate)."""
    import pandas as pd

    if not records:
        raise ValueError("no finished fine-tuning records to tabulate: run the sweep first")
    rows = []
    for r in records:
        metric = r["metric"]
        ci = r["test_ci"][metric]
        rows.append({"task": r["task"], "method": r["method"], "freeze": r["freeze"], "seed": r["seed"],
                     "uses_cache": r.get("uses_cache", False), "metric": metric, "value": ci["value"],
                     "low": ci["low"], "high": ci["high"],
                     "trainable_millions": r["parameters"]["backbone_trainable"] / 1e6,
                     "trainable_fraction": r["parameters"]["backbone_trainable"] / r["parameters"]["backbone_total"],
                     "epoch_seconds": r["epoch_seconds"], "cache_seconds": r.get("cache_seconds", 0.0),
                     "time_to_best_seconds": r["time_to_best_seconds"], "epochs_to_best": r["epochs_to_best"],
                     "peak_memory_mb": r["peak_memory_mb"],
                     "zero_shot": (r.get("zero_shot") or {}).get("test", {}).get(metric)})
    frame = pd.DataFrame(rows)
    keys = ["task", "method", "freeze", "uses_cache", "metric"]
    table = frame.groupby(keys, as_index=False).agg(
        value=("value", "mean"), low=("low", "mean"), high=("high", "mean"), seeds=("seed", "nunique"),
        trainable_millions=("trainable_millions", "first"), trainable_fraction=("trainable_fraction", "first"),
        epoch_seconds=("epoch_seconds", "mean"), cache_seconds=("cache_seconds", "mean"),
        time_to_best_seconds=("time_to_best_seconds", "mean"), epochs_to_best=("epochs_to_best", "mean"),
        peak_memory_mb=("peak_memory_mb", "mean"), zero_shot=("zero_shot", "first"))
    full = table[table.method == "full"].set_index("task")
    for column in ("epoch_seconds", "time_to_best_seconds"):
        table[f"{column}_ratio"] = [value / full.loc[task, column] if task in full.index else None
                                    for task, value in zip(table.task, table[column])]
    table["within_full_ci"] = [bool(row.value >= full.loc[row.task, "low"]) if row.task in full.index else None
                               for row in table.itertuples()]
    return table.sort_values(["task", "method", "freeze"]).reset_index(drop=True)


def compare_to_full(records: list[dict], task: str, *, samples: int = 1000, seed: int = 0):
    """Paired bootstrap of every variant against full fine-tuning (same seed, same test rows):
    difference = variant - full in the task's metric, its 95% CI and p-value; plus zero-shot vs full."""
    import numpy as np
    import pandas as pd

    from telly.stats import paired_bootstrap
    from telly.tasks import get_task

    scorer = get_task(task)
    chosen = [r for r in records if r["task"] == task and r["seed"] == seed]
    full = next((r for r in chosen if r["method"] == "full"), None)
    if full is None:
        raise ValueError(f"no full fine-tuning record for {task} (seed {seed}) to compare against")
    base = {k: np.asarray(v) for k, v in full["test_per_example"].items()}
    others = [(r["method"], r["freeze"], r.get("uses_cache", False), r["test_per_example"]) for r in chosen if r is not full]
    if full.get("zero_shot") and full["zero_shot"].get("data_fingerprint") == full["data"]["fingerprint"]:
        others.append(("zero-shot", -1, False, full["zero_shot"]["test_per_example"]))
    rows = []
    for method, freeze, cached, per_example in others:
        result = paired_bootstrap(base, {k: np.asarray(v) for k, v in per_example.items()}, scorer.score,
                                  samples=samples, seed=seed)[scorer.metric]
        rows.append({"task": task, "method": method, "freeze": freeze, "uses_cache": cached,
                     "difference": result["difference"], "low": result["low"], "high": result["high"],
                     "p_value": result["p_value"]})
    return pd.DataFrame(rows)


def freeze_findings(table, comparisons=None) -> str:
    """Markdown sentences, one paragraph per task, generated from the numbers in `table`
    (freeze_table) and, when given, `comparisons` (compare_to_full, all tasks concatenated)."""
    from telly.charts import freeze_label

    paragraphs = []
    for task, rows in table.groupby("task"):
        full = rows[rows.method == "full"]
        if full.empty:
            paragraphs.append(f"**{task}**: no full fine-tuning run yet, so nothing to compare against.")
            continue
        full = full.iloc[0]
        metric = full.metric
        telly = rows[(rows.method == "telly") & rows.uses_cache].sort_values("freeze")
        kept = telly[telly.within_full_ci]
        text = (f"**{task}**: full fine-tuning reaches {metric} {full.value:.3f} "
                f"(95% CI {full.low:.3f}-{full.high:.3f}).")
        if full.zero_shot is not None and full.zero_shot == full.zero_shot:
            text += f" The pre-trained model scores {full.zero_shot:.3f} before any fine-tuning"
            if comparisons is not None and not comparisons.empty:
                zero = comparisons[(comparisons.task == task) & (comparisons.method == "zero-shot")]
                if not zero.empty:
                    z = zero.iloc[0]
                    verdict = "a gain outside the paired 95% CI" if z.high < 0 else "not a significant gain"
                    text += (f"; fine-tuning adds {-z.difference:.4f} ({verdict}: "
                             f"zero-shot minus full is {z.difference:.4f}, CI {z.low:.4f} to {z.high:.4f})")
            text += "."
        if telly.empty:
            text += " No cached Telly-K run yet."
        elif kept.empty:
            text += f" No Telly-K run (K = {', '.join(map(str, telly.freeze))}) stays within that CI."
        else:
            deepest = kept.iloc[-1]
            text += (f" Telly-K stays within that CI for K = {', '.join(str(int(k)) for k in kept.freeze)}"
                     f" ({len(kept)} of {len(telly)} cached depth{'s' if len(telly) > 1 else ''} run); the deepest, {freeze_label(int(deepest.freeze))}, trains "
                     f"{deepest.trainable_fraction:.0%} of the backbone's parameters, its epoch takes "
                     f"{deepest.epoch_seconds_ratio:.2f}x the full fine-tuning epoch and it reaches its best "
                     f"validation score in {deepest.time_to_best_seconds_ratio:.2f}x the time.")
            missed = telly[~telly.within_full_ci]
            if not missed.empty:
                text += f" Below the CI: K = {', '.join(str(int(k)) for k in missed.freeze)}."
        paragraphs.append(text)
    return "\n\n".join(paragraphs)


def freeze_widget(task: str, model: str = "minilm-l6", profile: str = "laptop", out: str = "runs",
                  data_path: str | None = None):
    """An ipywidgets slider + button that fine-tunes the chosen Telly-K variant live (resuming from
    a record when one exists) and prints its summary. For the live notebook; inert when rendered."""
    import ipywidgets as widgets

    from telly.backbones import load
    from telly.trainer import finetune, record_path, summary
    from telly.results import read_json

    num_layers = load(model).num_layers
    slider = widgets.IntSlider(value=num_layers // 2, min=-1, max=num_layers - 1, description="K")
    button = widgets.Button(description="fine-tune")
    output = widgets.Output()

    def run(_):
        with output:
            output.clear_output()
            path = record_path(out, task, model, "telly", slider.value, 0, get_profile(profile).name,
                               data_path=data_path)
            record = read_json(path) if path.exists() else finetune(task, model, slider.value, profile=profile,
                                                                    out=out, data_path=data_path)
            print(summary(record))

    button.on_click(run)
    return widgets.VBox([widgets.HBox([slider, button]), output])


def degenerate_findings(records: list[dict]) -> str:
    """Markdown naming the generation runs whose test outputs are degenerate (empty or all alike,
    per `record["test"]["degenerate"]` / `record["generation"]["degenerate"]`), one line per task;
    "" when `records` hold no generation run."""
    from telly.charts import freeze_label

    lines = []
    for task in sorted({r["task"] for r in records if r.get("generation")}):
        runs = sorted((r for r in records if r["task"] == task and r.get("generation")),
                      key=lambda r: (r["method"] != "full", r["freeze"]))
        bad = []
        for r in runs:
            report = r["generation"].get("degenerate") or {}
            if r["test"].get("degenerate") or report.get("is_degenerate"):
                name = freeze_label(r["freeze"]) if r["method"] in ("telly", "full") else r["method"]
                bad.append(f"{name} ({'; '.join(report.get('reasons', [])) or 'flagged degenerate'})")
        metric = runs[0]["metric"]
        best = max(r["test"][metric] for r in runs)
        text = f"**{task}**: best test {metric} {best:.3f} over {len(runs)} runs; "
        text += (f"{len(bad)} of {len(runs)} runs produce degenerate outputs, so their scores are not "
                 f"evidence of generation quality: {', '.join(bad)}." if bad else "no run's outputs are degenerate.")
        lines.append(text)
    return "\n\n".join(lines)
