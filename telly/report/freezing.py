"""RQ3 in words and tables: pure functions of fine-tuning records (`telly.trainer.finetune`).

The verdict: `non_inferiority_summary` (what `telly sweep` writes as summary.json) tests every
variant against full fine-tuning of the same task, paired on the same seeds and test rows, and
names per task the largest freeze depth K for which Telly-K and every shallower depth swept are
non-inferior. Tables (`freeze_table`, `summary_table`, `paper_table`, `ours_table`,
`clone_baseline_table`), the sentences chapter 3 shows (`freeze_findings`, `generation_note`,
`degenerate_findings`, `clone_baseline_prose`, `cache_check_prose`) and example outputs of the
generation tasks. Records in, text or frames out: nothing here trains, loads a model or writes a file.

Epoch-time ratios come from two kinds of measurement and every table names its kind: runs in one
process with the variants interleaved (the bench, `telly.studies.bench`), or the sweep's separate
runs, each timed alone, so that whatever else the machine did meanwhile lands in their ratios. A
sentence quotes the bench's ratio wherever the bench measured that depth.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from telly.report.charts import freeze_label

ALPHA = 0.05  # level of each one-sided non-inferiority test, after Holm's correction
MIN_SEEDS = 3  # seeds a "keeps quality" verdict needs (DESIGN.md, "Statistics the book uses")
SWEEP_TIMING = "separate runs"
BENCH_TIMING = "one process"
_ZERO = "__zero__"  # the column of a reference that scores 0 on every resample


# ----------------------------------------------------------------------------- variants and seeds

def _variant_key(record: Mapping) -> tuple:
    """What makes runs the same variant apart from their seed."""
    return (record["task"], record["method"], int(record["freeze"]), bool(record.get("uses_cache", False)),
            json.dumps(record.get("method_config") or {}, sort_keys=True))


def _by_variant(records: Sequence[Mapping]) -> dict[tuple, dict[int, Mapping]]:
    """{variant key: {seed: record}}, refusing records of one task from different datasets."""
    datasets: dict[str, set] = {}
    for record in records:
        datasets.setdefault(record["task"], set()).add((record.get("data") or {}).get("fingerprint"))
    mixed = {task: sorted(map(str, prints)) for task, prints in datasets.items() if len(prints) > 1}
    if mixed:
        raise ValueError(f"records of one task come from different datasets {mixed}: pass the runs of one "
                         "dataset (RunStore.records(data_paths=...))")
    variants: dict[tuple, dict[int, Mapping]] = {}
    for record in records:
        runs = variants.setdefault(_variant_key(record), {})
        if record["seed"] in runs:
            raise ValueError(f"two records of one variant and seed: {runs[record['seed']]['run']} and {record['run']}")
        runs[record["seed"]] = record
    return variants


def run_name(record: Mapping) -> str:
    """A variant's name in tables and prose: Base (full), Telly-K (uncached when it ran without the
    prefix cache), or the method's label."""
    if record["method"] == "full":
        return freeze_label(-1)
    if record["method"] == "telly":
        return freeze_label(int(record["freeze"])) + ("" if record.get("uses_cache", True) else " uncached")
    return record.get("label", record["method"])


def _columns(record: Mapping) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in record["test_per_example"].items()}


def _clusters(columns: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The resampling unit when the task's rows come in groups (a function's pairs), else rows."""
    return columns.get("group")


def _scorer(task: str):
    from telly.tasks import get_task

    return get_task(task).score


def _quality(task: str, metric: str, runs: Sequence[Mapping], samples: int) -> tuple[float, float, float]:
    """(mean over seeds, low, high) of the test metric. One seed: the run's own bootstrap CI. Several:
    draws that resample the seeds and the test rows together, as the seeded difference to a reference
    that scores zero on every resample."""
    from telly import stats

    if len(runs) == 1:
        ci = runs[0]["test_ci"][metric]
        return ci["value"], ci["low"], ci["high"]
    score = _scorer(task)
    columns = [_columns(r) for r in runs]
    zero = {_ZERO: np.zeros(len(next(iter(columns[0].values()))))}

    def statistic(rows: dict[str, np.ndarray]) -> dict[str, float]:
        return {metric: 0.0} if _ZERO in rows else score(rows)

    value, draws = stats.seeded_difference_draws([zero] * len(runs), columns, statistic, metric,
                                                 clusters=_clusters(columns[0]), samples=samples)
    low, high = np.percentile(draws, [2.5, 97.5])
    return value, float(low), float(high)


# ----------------------------------------------------------------------------- the table

def freeze_table(records: list[dict], *, samples: int = 1000) -> pd.DataFrame:
    """One row per (task, method, freeze, cache) over its seeds: quality (the mean over seeds) with
    its 95% CI, trainable parameters, epoch time, time to best, epochs run and to best, peak memory,
    and cost ratios to full fine-tuning of the same task. One seed: the run's bootstrap CI over test
    examples; several: a bootstrap that resamples seeds and test examples together (`samples` draws).
    The time ratios compare the sweep's separate runs (column `timing`)."""
    if not records:
        raise ValueError("no finished fine-tuning records to tabulate: run the sweep first")
    rows = []
    for (task, method, freeze, cached, _config), runs in _by_variant(records).items():
        seeded = [runs[s] for s in sorted(runs)]
        metric = seeded[0]["metric"]
        value, low, high = _quality(task, metric, seeded, samples)

        def mean(field: str, default: float | None = None, runs: list = seeded) -> float:
            return float(np.mean([r.get(field, default) for r in runs]))

        parameters = seeded[0]["parameters"]
        rows.append({"task": task, "method": method, "freeze": freeze, "uses_cache": cached, "run": run_name(seeded[0]),
                     "metric": metric, "value": value, "low": low, "high": high, "seeds": len(seeded),
                     "trainable_millions": parameters["backbone_trainable"] / 1e6,
                     "trainable_fraction": parameters["backbone_trainable"] / parameters["backbone_total"],
                     "epoch_seconds": mean("epoch_seconds"), "cache_seconds": mean("cache_seconds", 0.0),
                     "time_to_best_seconds": mean("time_to_best_seconds"), "epochs_run": mean("epochs_run"),
                     "epochs_to_best": mean("epochs_to_best"), "peak_tensor_memory_mb": mean("peak_tensor_memory_mb"),
                     "zero_shot": (seeded[0].get("zero_shot") or {}).get("test", {}).get(metric)})
    table = pd.DataFrame(rows)
    full = table[table.method == "full"].set_index("task")
    for column in ("epoch_seconds", "time_to_best_seconds"):
        table[f"{column}_ratio"] = [value / full.loc[task, column] if task in full.index else None
                                    for task, value in zip(table.task, table[column])]
    table["timing"] = SWEEP_TIMING
    return table.sort_values(["task", "method", "freeze", "uses_cache"]).reset_index(drop=True)


TABLE_COLUMNS = {"task": "task", "run": "run", "metric": "metric", "value": "value", "low": "low", "high": "high",
                 "seeds": "seeds", "zero_shot": "zero-shot", "trainable_millions": "trainable (M)",
                 "epoch_seconds": "epoch (s)", "epoch_seconds_ratio": f"epoch ratio to full ({SWEEP_TIMING})",
                 "time_to_best_seconds": "to best (s)",
                 "time_to_best_seconds_ratio": f"to-best ratio to full ({SWEEP_TIMING})",
                 "epochs_run": "epochs run", "epochs_to_best": "best epoch", "peak_tensor_memory_mb": "peak memory (MB)"}


def table_view(table: pd.DataFrame) -> pd.DataFrame:
    """The columns of `freeze_table` a page shows, named for a reader and rounded."""
    return table[list(TABLE_COLUMNS)].rename(columns=TABLE_COLUMNS).round(3)


# ----------------------------------------------------------------------------- the verdict

def _paired(reference: Sequence[Mapping[str, np.ndarray]], variant: Sequence[Mapping[str, np.ndarray]], task: str,
            metric: str, margin: float, clusters, samples: int) -> dict:
    from telly import stats

    return stats.non_inferiority(reference, variant, _scorer(task), metric, margin, clusters=clusters, samples=samples)


def _against_baseline(name: str, value: float, columns: Mapping[str, np.ndarray], full: Sequence[Mapping], task: str,
                      metric: str, clusters, samples: int) -> dict:
    """Full fine-tuning (the mean over its seeds) minus a baseline scored once on the same test rows:
    the difference, its 95% CI over seeds and test rows, and the one-sided p-value of no gain."""
    fulls = [_columns(r) for r in full]
    if len(next(iter(columns.values()))) != len(next(iter(fulls[0].values()))):
        raise ValueError(f"{task}: the {name} was scored on {len(next(iter(columns.values())))} test rows, full "
                         f"fine-tuning on {len(next(iter(fulls[0].values())))}: they must share the test split")
    result = _paired([columns] * len(fulls), fulls, task, metric, 0.0, clusters, samples)
    return {"name": name, "value": value, "difference": result["difference"], "low": result["low"],
            "high": result["high"], "p_value": result["p_value"]}


def _largest_non_inferior(rows: Sequence[Mapping]) -> int | None:
    """The largest K whose row and every shallower row (in K order) are non-inferior."""
    largest = None
    for row in sorted(rows, key=lambda r: r["freeze"]):
        if row["verdict"] != "non-inferior":
            break
        largest = row["freeze"]
    return largest


def scale(runs: Sequence[Mapping]) -> dict:
    """What a verdict rests on: split sizes, the data, seeds and the training precision of `runs`."""
    first = runs[0]
    return {"sizes": (first.get("data") or {}).get("sizes"), "source": (first.get("data") or {}).get("source"),
            "seeds": len(runs), "precision": (first.get("mixed_precision") or {}).get("training", "no"),
            "model": first.get("model")}


def scale_sentence(entry: Mapping) -> str:
    """The scale of a task's verdicts as a clause a reader can weigh them by."""
    scale_ = entry.get("scale") or {}
    sizes = scale_.get("sizes") or {}
    precision = {"bf16": "bf16 autocast training", "no": "float32 training"}.get(scale_.get("precision"),
                                                                                  f"{scale_.get('precision')} training")
    split = ", ".join(f"{sizes[s]:,} {s}" for s in ("train", "valid", "test") if s in sizes)
    return (f"Scale: {split} examples of {scale_.get('source') or 'its data'}; {scale_.get('seeds')} seeds; "
            f"{precision}.")


def non_inferiority_summary(records: Sequence[Mapping], profile, *, trivial: Mapping | None = None,
                            samples: int | None = None) -> dict:
    """Per task: full fine-tuning (mean over seeds, CI), against the task's trivial baseline and the
    zero-shot model; every other variant against full fine-tuning, paired on the seeds both ran and
    on the same test rows (clusters when the rows carry a "group" column): the difference, its 95% CI,
    the margin (`profile.margin(metric)`), the one-sided non-inferiority p-value and its Holm
    adjustment across the freeze depths of one method and cache mode, and a verdict; and the largest
    K for which Telly-K and every shallower depth swept are non-inferior.

    trivial: task -> `telly.tasks.Evaluation` of `Task.trivial_baseline` on the same test split. No
    verdict (for any depth of a task) when full fine-tuning ran fewer than MIN_SEEDS seeds, produced
    degenerate test outputs, has no trivial baseline to beat, or does not beat it (its CI's lower
    bound above 0). A variant with fewer than MIN_SEEDS shared seeds gets numbers but no verdict."""
    from telly import stats
    from telly.profiles import get_profile

    profile = get_profile(profile)
    samples = samples or profile.bootstrap_samples
    trivial = dict(trivial or {})
    variants = _by_variant(records)
    tasks = {}
    for task in sorted({key[0] for key in variants}):
        full_key = next((key for key in variants if key[0] == task and key[1] == "full"), None)
        if full_key is None:
            tasks[task] = {"no_verdict": ["no full fine-tuning run to compare against"], "rows": [],
                           "largest_non_inferior_k": None}
            continue
        full_runs = variants[full_key]
        seeds = sorted(full_runs)
        full = [full_runs[s] for s in seeds]
        metric = full[0]["metric"]
        margin = profile.margin(metric)
        clusters = _clusters(_columns(full[0]))
        value, low, high = _quality(task, metric, full, samples)
        degenerate = [s for s in seeds if full_runs[s]["test"].get("degenerate")]
        collapsed = [s for s in seeds if _at_chance(full_runs[s])]
        entry = {"metric": metric, "margin": margin, "seeds": seeds, "scale": scale(full),
                 "full": {"value": value, "low": low, "high": high, "degenerate_seeds": degenerate,
                          "at_chance_seeds": collapsed},
                 "trivial": None, "zero_shot": None}
        if task in trivial:
            evaluation = trivial[task]
            name = evaluation.extras.get("name", "the trivial baseline")
            entry["trivial"] = _against_baseline(name, evaluation.metrics[metric], evaluation.per_example, full,
                                                 task, metric, clusters, samples)
        zero_shot = full[0].get("zero_shot")
        if zero_shot and zero_shot.get("data_fingerprint") == (full[0].get("data") or {}).get("fingerprint"):
            entry["zero_shot"] = _against_baseline("the pre-trained model (zero-shot)", zero_shot["test"][metric],
                                                   {k: np.asarray(v) for k, v in zero_shot["test_per_example"].items()},
                                                   full, task, metric, clusters, samples)
        reasons = []
        if len(seeds) < MIN_SEEDS:
            reasons.append(f"full fine-tuning ran {len(seeds)} seed{'s' if len(seeds) != 1 else ''}, "
                           f"a verdict needs {MIN_SEEDS}")
        if degenerate:
            reasons.append(f"full fine-tuning's test outputs are degenerate (seed {', '.join(map(str, degenerate))})")
        if collapsed:
            reasons.append(f"full fine-tuning's training loss ended at chance level (seed {', '.join(map(str, collapsed))})")
        baseline = entry["trivial"]
        if baseline is None:
            reasons.append("no trivial baseline to show that full fine-tuning learned the task")
        elif not baseline["low"] > 0:  # its numbers are in entry["trivial"]
            reasons.append(f"full fine-tuning does not beat {baseline['name']}")
        rows = []
        for key, runs in variants.items():
            if key[0] != task or key == full_key:
                continue
            shared = sorted(set(runs) & set(seeds))
            if not shared:
                continue
            result = _paired([_columns(full_runs[s]) for s in shared], [_columns(runs[s]) for s in shared],
                             task, metric, margin, clusters, samples)
            first = runs[shared[0]]
            rows.append({"run": run_name(first), "method": key[1], "freeze": key[2], "uses_cache": key[3],
                         "seeds": shared, "at_chance_seeds": [s for s in shared if _at_chance(runs[s])],
                         **{k: result[k] for k in ("difference", "low", "high", "margin", "p_value", "se", "df",
                                                   "seed_sd", "row_se", "units", "seed_differences",
                                                   "detectable_margin")},
                         "sizes_to_show_margin": stats.sizes_to_show(result, margin, alpha=ALPHA)})
        for family in {(row["method"], row["uses_cache"]) for row in rows}:
            members = [row for row in rows if (row["method"], row["uses_cache"]) == family]
            for row, adjusted in zip(members, stats.holm([row["p_value"] for row in members])):
                row["p_holm"] = adjusted
        for row in rows:
            if reasons or len(row["seeds"]) < MIN_SEEDS or row["at_chance_seeds"]:
                row["verdict"] = "no verdict"
            else:
                row["verdict"] = stats.verdict(row["p_holm"], row["high"], margin, ALPHA)
        rows.sort(key=lambda r: (r["method"] != "telly", not r["uses_cache"], r["method"], r["freeze"]))
        telly = [r for r in rows if r["method"] == "telly"]
        cached = [r for r in telly if r["uses_cache"]]
        family = cached or telly
        entry |= {"no_verdict": reasons, "rows": rows,
                  "depths": sorted(r["freeze"] for r in family),
                  "family": "Telly-K cached" if cached else ("Telly-K uncached" if telly else None),
                  "largest_non_inferior_k": None if reasons or not family else _largest_non_inferior(family),
                  "smallest_inferior_k": min((r["freeze"] for r in family if r["verdict"] == "inferior"), default=None)}
        tasks[task] = entry
    return {"profile": profile.name, "alpha": ALPHA, "min_seeds": MIN_SEEDS, "bootstrap_samples": samples,
            "test": ("one-sided paired non-inferiority against full fine-tuning, H0 difference (variant - full) "
                     "<= -margin: a two-level t test, the seeds' spread (seeds - 1 degrees of freedom) plus the test "
                     "rows' bootstrap variance (whole groups where the rows carry them), Welch-Satterthwaite degrees "
                     "of freedom (telly.stats.non_inferiority); Holm across the freeze depths of each task. "
                     f"Non-inferior when the Holm-adjusted p < {ALPHA}; inferior when the 95% interval's upper "
                     "bound lies below -margin; inconclusive otherwise. detectable_margin: the smallest margin "
                     "each row could have shown at 80% power."),
            "verdicts": ["non-inferior", "inferior", "inconclusive", "no verdict"],
            "margins": dict(profile.margins), "tasks": tasks}


def summary_table(summary: Mapping) -> pd.DataFrame:
    """One row per (task, variant) of `non_inferiority_summary`: the difference to full fine-tuning,
    its CI, the margin, the smallest margin the row could have shown at 80% power, raw and
    Holm-adjusted p-values and the verdict."""
    columns = ["task", "run", "seeds", "difference", "low", "high", "margin", "could show (80% power)", "p",
               "p (Holm)", "verdict"]
    rows = [{"task": task, "run": row["run"], "seeds": len(row["seeds"]), "difference": row["difference"],
             "low": row["low"], "high": row["high"], "margin": row["margin"],
             "could show (80% power)": row.get("detectable_margin"), "p": row["p_value"],
             "p (Holm)": row["p_holm"], "verdict": row["verdict"]}
            for task, entry in summary["tasks"].items() for row in entry["rows"]]
    return pd.DataFrame(rows, columns=columns).round(4)


def precision_check(float32_runs: Sequence[Mapping], bf16_runs: Sequence[Mapping], profile, *,
                    samples: int | None = None) -> dict:
    """Does bf16 autocast keep full fine-tuning's quality? The same variant run in float32 and under
    bf16 (same seeds, same test rows): the paired difference bf16 - float32 over seeds and test rows
    (whole groups where the rows carry them), its 95% CI, and two one-sided tests (TOST) against
    the profile's margin for the metric: "equivalent" when both p-values are below ALPHA, i.e. the
    difference is shown to lie within +-margin; else "not shown". Epoch times are the runs' own
    (separate runs; the bench times the two side by side)."""
    from telly.profiles import get_profile

    profile = get_profile(profile)
    samples = samples or profile.bootstrap_samples
    by_seed = [{r["seed"]: r for r in runs} for runs in (float32_runs, bf16_runs)]
    seeds = sorted(set(by_seed[0]) & set(by_seed[1]))
    if not seeds:
        raise ValueError("the precision check needs the same seeds in float32 and bf16, got "
                         f"{sorted(by_seed[0])} and {sorted(by_seed[1])}")
    pairs = [[runs[s] for s in seeds] for runs in by_seed]
    for expected, runs in zip(("no", "bf16"), pairs):
        wrong = [run_name(r) for r in runs if (r.get("mixed_precision") or {}).get("training", "no") != expected]
        if wrong:
            raise ValueError(f"the precision check's {expected!r} runs were trained otherwise: {wrong}")
    first = pairs[0][0]
    task, metric = first["task"], first["metric"]
    if {(r["task"], r["method"], r["freeze"]) for runs in pairs for r in runs} != {(task, first["method"], first["freeze"])}:
        raise ValueError("the precision check compares one task and variant in two precisions")
    margin = profile.margin(metric)
    columns = [[_columns(r) for r in runs] for runs in pairs]
    clusters = _clusters(columns[0][0])
    lower = _paired(columns[0], columns[1], task, metric, margin, clusters, samples)  # H0: bf16 - fp32 <= -margin
    upper = _paired(columns[1], columns[0], task, metric, margin, clusters, samples)  # H0: bf16 - fp32 >= +margin
    quality = {name: {**dict(zip(("value", "low", "high"), _quality(task, metric, runs, samples))),
                      "epoch_seconds": float(np.mean([r["epoch_seconds"] for r in runs]))}
               for name, runs in zip(("float32", "bf16"), pairs)}
    equivalent = lower["p_value"] < ALPHA and upper["p_value"] < ALPHA
    return {"task": task, "run": run_name(first), "metric": metric, "margin": margin, "seeds": seeds,
            "alpha": ALPHA, "float32": quality["float32"], "bf16": quality["bf16"],
            "difference": lower["difference"], "low": lower["low"], "high": lower["high"],
            "p_lower": lower["p_value"], "p_upper": upper["p_value"],
            "verdict": "equivalent" if equivalent else "not shown",
            "epoch_ratio": quality["bf16"]["epoch_seconds"] / quality["float32"]["epoch_seconds"],
            "timing": SWEEP_TIMING,
            "test": "paired bf16 - float32 difference, bootstrap draws resampling seeds and test rows together "
                    "(telly.stats.non_inferiority); two one-sided tests against +-margin, equivalent when both "
                    f"p < {ALPHA}"}


def precision_text(check: Mapping) -> str:
    """What the precision check shows, in words that follow its numbers."""
    f32, b16, margin = check["float32"], check["bf16"], check["margin"]
    head = (f"{check['run']} on {check['task']}, {len(check['seeds'])} seed{'s' if len(check['seeds']) != 1 else ''}: "
            f"{check['metric']} {b16['value']:.3f} under bf16 autocast against {f32['value']:.3f} in float32, "
            f"difference {check['difference']:+.3f} (95% CI {check['low']:+.3f} to {check['high']:+.3f}). ")
    if check["verdict"] == "equivalent":
        verdict = (f"Both one-sided tests reject a difference beyond {margin:g} (p = {check['p_lower']:.3f} and "
                   f"{check['p_upper']:.3f}): bf16 autocast keeps the quality within the margin.")
    else:
        open_sides = [side for side, p in ((f"below -{margin:g}", check["p_lower"]), (f"above +{margin:g}", check["p_upper"]))
                      if p >= check["alpha"]]
        verdict = (f"Equal quality is not shown: a difference {' or '.join(open_sides)} cannot be ruled out "
                   f"(p = {check['p_lower']:.3f} and {check['p_upper']:.3f}). The freezing verdicts do not rest on "
                   "this check: each pairs Telly-K with full fine-tuning trained in the same precision; the absolute "
                   "scores are that precision's.")
    return (head + verdict + f" Epoch time under bf16 was {check['epoch_ratio']:.2f}x float32's "
            f"({check['timing']}; the bench times the two side by side).")


# ----------------------------------------------------------------------------- sentences

def bench_epoch_ratios(bench: Mapping | None, model: str) -> dict[tuple[int, bool], float]:
    """{(K, cached): epoch time / full fine-tuning's} of `model`'s Telly-K rows in a bench record
    (`telly.studies.bench`: code search, every variant in one process, interleaved); {} without one."""
    if not bench:
        return {}
    return {(int(row["freeze"]), bool(row["cached"])): row["ratio_to_full"] for row in bench.get("training", [])
            if row["model"] == model and row["method"] == "telly"}


def _difference(row: Mapping) -> str:
    return (f"difference {row['difference']:+.3f}, 95% CI {row['low']:+.3f} to {row['high']:+.3f}, "
            f"Holm-adjusted p = {row['p_holm']:.3f}")


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _zero_shot_sentence(zero: Mapping | None) -> str:
    if zero is None:
        return ""
    gain = zero["difference"]
    if zero["low"] > 0:
        verdict = "a significant gain"
    elif zero["high"] < 0:
        verdict = "a significant loss: the pre-trained model does better without fine-tuning"
    else:
        verdict = "no significant difference"
    return (f" The pre-trained model scores {zero['value']:.3f} before any fine-tuning; fine-tuning "
            f"{'adds' if gain >= 0 else 'loses'} {abs(gain):.3f} ({verdict}: full minus zero-shot {gain:+.3f}, "
            f"paired 95% CI {zero['low']:+.3f} to {zero['high']:+.3f}).")


def _beats(baseline: Mapping) -> str:
    if baseline["low"] > 0:
        return "beats it"
    return "scores below it" if baseline["high"] < 0 else "does not beat it"


def _trivial_sentence(trivial: Mapping | None) -> str:
    if trivial is None:
        return ""
    return (f" {_capitalised(trivial['name'])}, a model-free answer, scores {trivial['value']:.3f}; full fine-tuning "
            f"{_beats(trivial)} (difference {trivial['difference']:+.3f}, paired 95% CI {trivial['low']:+.3f} to "
            f"{trivial['high']:+.3f}).")


def _depth_verdict(entry: Mapping, rows: pd.DataFrame, bench_ratios: Mapping[tuple[int, bool], float]) -> str:
    """The sentence naming the largest non-inferior K, what it saves, and the first depth that fails."""
    cached = entry["family"] == "Telly-K cached"
    family = sorted((r for r in entry["rows"] if r["method"] == "telly" and r["uses_cache"] == cached),
                    key=lambda r: r["freeze"])
    if not family:
        return " No Telly-K run yet."
    test = (f"non-inferior to full fine-tuning (margin {entry['margin']:g} {entry['metric']}, Holm-adjusted "
            f"one-sided p < {ALPHA} over {len(entry['seeds'])} seeds)")
    swept = f"Of the depths swept (K = {', '.join(str(r['freeze']) for r in family)})"
    largest = entry["largest_non_inferior_k"]
    if largest is None:
        text = f" {swept}, none is {test}: already {family[0]['run']} is {family[0]['verdict']} ({_difference(family[0])})."
    else:
        chosen = next(r for r in family if r["freeze"] == largest)
        row = rows[(rows.method == "telly") & (rows.freeze == largest) & (rows.uses_cache == cached)].iloc[0]
        full = rows[rows.method == "full"].iloc[0]
        text = (f" {swept}, the largest K for which Telly-K and every shallower depth are {test} is K = {largest}: "
                f"{chosen['run']} ({_difference(chosen)}) trains {row.trainable_fraction:.0%} of the backbone's parameters")
        ratio = bench_ratios.get((largest, cached))
        if ratio is not None:
            text += f"; its epoch takes {ratio:.2f}x full fine-tuning's in one process (the bench: code search, interleaved)"
        else:
            text += f"; its epoch takes {row.epoch_seconds_ratio:.2f}x full fine-tuning's over separate runs of the sweep"
        if row.epochs_run > 1 and full.epochs_run > 1:  # with one epoch, time to best is epoch time again
            text += (f", and it reaches its best validation score in {row.time_to_best_seconds_ratio:.2f}x the time "
                     "(separate runs, building the cache included)")
        text += "."
        alone = [r["run"] for r in family if r["freeze"] > largest and r["verdict"] == "non-inferior"]
        if alone:
            text += (f" {', '.join(alone)} pass{'es' if len(alone) == 1 else ''} on {'its' if len(alone) == 1 else 'their'} "
                     "own, but not below a depth that does not.")
    inferior = [r for r in family if r["verdict"] == "inferior"]
    if inferior:
        named = ", ".join(f"{r['run']} ({_difference(r)})" for r in inferior)
        text += (f" Inferior (the whole 95% interval below -{entry['margin']:g}): {named}; the smallest inferior K "
                 f"is {entry['smallest_inferior_k']}.")
    else:
        text += " No depth is shown inferior."
    unclear = [r for r in family if r["verdict"] == "inconclusive"]
    if unclear:
        text += f" Inconclusive, the data cannot tell: {'; '.join(_inconclusive(r) for r in unclear)}."
    return text


def _inconclusive(row: Mapping) -> str:
    """An inconclusive row: its numbers, the smallest margin it could have shown, and what would decide it."""
    text = (f"{row['run']} ({_difference(row)}; at 80% power this test could show a margin of "
            f"{row['detectable_margin']:.3g}, against the stated {row['margin']:g}")
    options = [o for o in row.get("sizes_to_show_margin", []) if o["rows"] is not None]
    if options:
        best = options[0]
        if best["seeds"] <= len(row["seeds"]) and best["rows"] <= row.get("units", 0):
            text += "; this size could show it were the true difference 0: the observed difference keeps it open"
        else:
            text += (f"; {best['seeds']} seeds and {max(best['rows'], row.get('units', 0)):,} test units "
                     "would reach it")
    elif row.get("sizes_to_show_margin"):
        text += f"; not even {row['sizes_to_show_margin'][-1]['seeds']} seeds would reach it at this spread"
    return text + ")"


def freeze_findings(table: pd.DataFrame, summary: Mapping, *,
                    bench_ratios: Mapping[tuple[int, bool], float] | None = None) -> str:
    """Markdown, one paragraph per task, generated from `table` (freeze_table), `summary`
    (non_inferiority_summary) and, when given, the bench's in-process epoch ratios
    (bench_epoch_ratios), quoted in preference to the ratios of the sweep's separate runs."""
    bench_ratios = dict(bench_ratios or {})
    paragraphs = []
    for task in sorted(set(table.task)):
        rows = table[table.task == task]
        entry = summary["tasks"].get(task) or {}
        if rows[rows.method == "full"].empty or "full" not in entry:
            paragraphs.append(f"**{task}**: no full fine-tuning run yet, so nothing to compare against.")
            continue
        full, seeds = entry["full"], len(entry["seeds"])
        text = (f"**{task}**: full fine-tuning reaches {entry['metric']} {full['value']:.3f} "
                f"(95% CI {full['low']:.3f}-{full['high']:.3f}, {seeds} seed{'s' if seeds != 1 else ''}). "
                + scale_sentence(entry))
        text += _zero_shot_sentence(entry["zero_shot"]) + _trivial_sentence(entry["trivial"])
        if entry["no_verdict"]:
            text += f" No verdict on which depths keep its quality: {'; '.join(entry['no_verdict'])}."
        else:
            text += _depth_verdict(entry, rows, bench_ratios)
        paragraphs.append(text)
    return "\n\n".join(paragraphs)


def _is_degenerate(record: Mapping) -> bool:
    report = (record.get("generation") or {}).get("degenerate") or {}
    return bool(record["test"].get("degenerate")) or bool(report.get("is_degenerate")) or _at_chance(record)


def _at_chance(record: Mapping) -> bool:
    """Its training loss ended at the chance level of its loss (`telly.trainer.training_check`)."""
    return bool((record.get("training_check") or {}).get("at_chance"))


def degenerate_findings(records: list[dict]) -> str:
    """Markdown naming the generation runs whose test outputs are degenerate (empty or all alike,
    per `record["test"]["degenerate"]` / `record["generation"]["degenerate"]`) and the best of the
    others, one line per task; "" when `records` hold no generation run."""
    lines = []
    for task in sorted({r["task"] for r in records if r.get("generation")}):
        runs = sorted((r for r in records if r["task"] == task and r.get("generation")),
                      key=lambda r: (r["method"] != "full", r["freeze"], r["seed"]))
        bad = [f"{run_name(r)} seed {r['seed']} ({'; '.join((r['generation'].get('degenerate') or {}).get('reasons', [])) or 'flagged degenerate'})"
               for r in runs if _is_degenerate(r)]
        sound = [r for r in runs if not _is_degenerate(r)]
        metric = runs[0]["metric"]
        if not sound:
            lines.append(f"**{task}**: all {len(runs)} runs produce degenerate outputs, so no score here is "
                         f"evidence of generation quality: {', '.join(bad)}.")
            continue
        best = max(sound, key=lambda r: r["test"][metric])
        text = (f"**{task}**: of {len(runs)} runs, the best with sound outputs is {run_name(best)} (seed {best['seed']}) at test {metric} "
                f"{best['test'][metric]:.3f}; ")
        text += (f"{len(bad)} of {len(runs)} runs produce degenerate outputs, so their scores are not "
                 f"evidence of generation quality: {', '.join(bad)}." if bad else "no run's outputs are degenerate.")
        lines.append(text)
    return "\n\n".join(lines)


def generation_note(records: list[dict], summary: Mapping, *, model: str, kind: str) -> str:
    """What the generation runs show, read from the numbers: for an encoder backbone, how its
    generation head is built; on which generation tasks full fine-tuning beats the task's model-free
    baseline (only there do depths say anything about freezing); then `degenerate_findings`."""
    degenerate = degenerate_findings(records)
    if not degenerate:
        return ""
    text = "**Generation tasks.**"
    if kind == "encoder":
        text += (f" `{model}` is an encoder, not a generative model (the default, MiniLM-L6, is a sentence encoder "
                 "trained on text, not code): its generation head is warm-started from encoder weights.")
    tasks = sorted({r["task"] for r in records if r.get("generation")})
    checked = {t: summary["tasks"][t]["trivial"] for t in tasks if (summary["tasks"].get(t) or {}).get("trivial")}
    learned = [t for t, trivial in checked.items() if trivial["low"] > 0]
    floor = [f"{t} ({trivial['name']}: {trivial['value']:.3f}, full fine-tuning {trivial['value'] + trivial['difference']:.3f})"
             for t, trivial in checked.items() if not trivial["low"] > 0]
    if checked:
        text += f" Full fine-tuning beats the model-free baseline on {len(learned)} of the {len(checked)} generation tasks checked"
        text += f" ({', '.join(learned)})." if learned else "."
        if floor:
            text += (f" On {'; '.join(floor)} it does not: there generation sits at the floor a model-free answer "
                     "sets, and differences between depths say nothing about freezing.")
    unchecked = [t for t in tasks if t not in checked]
    if unchecked:
        text += f" No model-free baseline was scored for {', '.join(unchecked)}."
    return f"{text}{_soundness_sentence(records, tasks)}\n\n{degenerate}"


SOUND_BAR = 0.9  # issue 14: full fine-tuning's outputs non-empty and not looping on at least 90% of test examples


def sound_share(record: Mapping) -> float | None:
    """The share of a generation run's test outputs that are neither empty nor looping, from its
    degenerate report (`telly.metrics.degenerate_report`: the two are disjoint); None without one."""
    report = (record.get("generation") or {}).get("degenerate") or {}
    if not report.get("n") or "looping" not in report:
        return None
    return (report["n"] - report["empty"] - report["looping"]) / report["n"]


def _soundness_sentence(records: list[dict], tasks: Sequence[str]) -> str:
    """Per generation task, the lowest sound share among its full fine-tunes against SOUND_BAR."""
    parts, below = [], []
    for task in tasks:
        shares = [share for r in records if r["task"] == task and r["method"] == "full"
                  if (share := sound_share(r)) is not None]
        if shares:
            seeds = f"lowest of {len(shares)} seeds" if len(shares) > 1 else "1 seed"
            parts.append(f"{task} {min(shares):.0%} ({seeds})")
            below += [task] if min(shares) < SOUND_BAR else []
    if not parts:
        return ""
    text = (f" Full fine-tuning's test outputs are non-empty and do not loop on {'; '.join(parts)}: "
            f"{'all meet' if not below else 'below'} the {SOUND_BAR:.0%} bar")
    return text + (f" ({', '.join(below)})." if below else ".")


def sweep_view(records: list[dict], summary: Mapping, *, kind: str, bench: Mapping | None = None) -> dict:
    """What chapter 3 shows of one sweep (the study's or the live one): its records and summary,
    their freeze table, seeds, model and kind, and the bench record with its epoch ratios (if any)."""
    model = records[0]["model"]
    return {"records": records, "summary": summary, "table": freeze_table(records), "model": model, "kind": kind,
            "seeds": sorted({r["seed"] for r in records}), "bench": bench, "bench_ratios": bench_epoch_ratios(bench, model)}


def swept_depths(table: pd.DataFrame) -> str:
    """Markdown: per task, the full and Telly-K depths in `table` (freeze_table), over how many seeds
    and epochs, so a page says which depths the verdicts rest on."""
    lines = []
    for task, rows in table.groupby("task"):
        curve = rows[(rows.method == "full") | (rows.method == "telly")].sort_values("freeze")
        depths = ", ".join(str(int(k)) + ("" if cached or k == -1 else " uncached")
                           for k, cached in zip(curve.freeze, curve.uses_cache))
        seeds = sorted(set(curve.seeds))
        low, high = curve.epochs_run.min(), curve.epochs_run.max()
        epochs = f"{low:.3g}" if low == high else f"{low:.3g} to {high:.3g}"
        lines.append(f"- **{task}**: K = {depths} over {'/'.join(map(str, seeds))} seed{'s' if seeds != [1] else ''}, "
                     f"{epochs} epoch{'s' if high != 1 else ''} run (mean over seeds)")
    return "\n".join(lines)


def training_note(records: Sequence[Mapping]) -> str:
    """How the runs were trained, read from their records: optimiser, schedule, epochs and early
    stopping; one sentence per distinct setting."""
    settings = {}
    for record in records:
        optimizer, profile = record.get("optimizer"), record["profile_settings"]
        if optimizer is None:
            text = "optimiser settings not recorded (a record from before they were)"
        else:
            text = (f"{optimizer['name']} (eps {optimizer['eps']:g}, weight decay {optimizer['weight_decay']:g}, "
                    f"gradient norm clipped at {optimizer['max_grad_norm']:g}), learning rate "
                    f"{optimizer['learning_rate']:g} (head {optimizer['head_learning_rate']:g}), {optimizer['schedule']}")
        signal = ("a lower validation loss" if (record.get("early_stopping") or {}).get("signal") == "validation loss"
                  else "a better validation score")
        text += (f"; up to {profile['epochs']} epoch{'s' if profile['epochs'] != 1 else ''}, stopping after "
                 f"{profile['patience']} without {signal}")
        settings.setdefault(text, []).append(record["run"])
    if len(settings) == 1:
        note = f"Every run: {next(iter(settings))}."
    else:
        note = "\n".join(f"- {len(runs)} run{'s' if len(runs) != 1 else ''}: {text}." for text, runs in settings.items())
    return note + _improvement_bar_note(records)


def _improvement_bar_note(records: Sequence[Mapping]) -> str:
    """The validation gain early stopping counted as better, per metric, and the tasks whose every run
    kept its first epoch although it ran more (no later epoch cleared that bar); empty without a bar."""
    bars, shares, first_only = {}, set(), {}
    for record in records:
        profile = record["profile_settings"]
        share = profile.get("min_improvement_share")
        if share:  # the pilot records' bar: a share of the margin, from their stored settings
            shares.add(share)
            bars[record["metric"]] = share * dict(profile["margins"])[record["metric"]]
        kept_first = record.get("epochs_to_best") == 1 and record.get("epochs_run", 1) > 1
        first_only[record["task"]] = first_only.get(record["task"], True) and kept_first
    if not bars:
        return ""
    share = f"{next(iter(shares)):.0%} of" if len(shares) == 1 else "a share of"
    text = ("\n\nAn epoch counted as better only where its validation score beat the best so far by more than "
            f"{share} the metric's non-inferiority margin ("
            + ", ".join(f"{metric} {bar:g}" for metric, bar in sorted(bars.items())) + ").")
    kept = sorted(task for task, first in first_only.items() if first)
    if kept:
        text += (f" Every {' and every '.join(kept)} run kept its first epoch's weights: no later epoch cleared "
                 "that bar on the validation split.")
    return text


def bench_note(bench: Mapping | None, model: str) -> str:
    """Where the in-process epoch ratios quoted on a page come from, or that there are none."""
    ratios = bench_epoch_ratios(bench, model)
    if not ratios:
        return (f"No bench record with `{model}` is at hand, so every epoch ratio quoted here comes from the "
                "sweep's separate runs.")
    source = {"reference": "the reference record shipped with Telly", "store": "this machine's results store",
              "run": "a run for this build"}.get(bench.get("origin"), "a bench record")
    depths = ", ".join(str(k) for k in sorted({k for k, _cached in ratios}))
    return (f"Epoch ratios quoted in one process come from the bench ({source}: {bench['device']}, "
            f"{bench['provenance']['date'][:10]}; code search, K = {depths}, {bench['timing']}); other depths fall "
            "back to the sweep's separate runs.")


def sweep_note(result: dict) -> str:
    """What a `telly.studies.freezing.freezing_study` call ran, read back, did not run (and why) and failed."""
    lines = [f"{group}: {count} records, {read} read back from the store" for group, (count, read) in result["ran"].items()]
    not_run = result.get("not_run") or {}
    for reason in sorted(set(not_run.values())):
        tasks = [task for task, why in not_run.items() if why == reason]
        lines.append(f"Not run live: {', '.join(tasks)}. {_capitalised(reason)}. The code-model study's records "
                     "above carry these tasks on a decoder pre-trained to generate.")
    lines += [f"FAILED {failure['run']}: {failure['error']}" for failure in result["failed"]]
    return "\n\n".join(lines)


# ----------------------------------------------------------------------------- charts and the paper

def freeze_slider(table: pd.DataFrame):
    """The static page's freeze-depth slider over every task's full and cached Telly-K runs."""
    from telly.report.charts import freeze_slider_chart

    return freeze_slider_chart(curve_table(table), metric="quality", costs=["trainable (M)", "epoch (s)", "to best (s)"],
                               series="task", formats={"quality": ".3f", "trainable (M)": ".2f", "epoch (s)": ".1f",
                                                       "to best (s)": ".1f"})


def ours_table(table: pd.DataFrame, bench_ratios: Mapping[tuple[int, bool], float] | None = None) -> pd.DataFrame:
    """Our full and cached Telly-K rows in the shape of `paper_table`: quality, trainable parameters,
    and epoch ratios to full fine-tuning: uncached Telly-K (the paper's method) and cached, each as the
    bench measured it in one process (`bench_epoch_ratios`; blank where it did not measure the depth),
    then cached as the sweep's separate runs timed it."""
    bench_ratios = dict(bench_ratios or {})
    curve = curve_table(table)
    view = curve.set_index(["task", "freeze"])[["quality", "low", "high", "trainable (M)"]].copy()
    for cached in (False, True):
        view[f"{'cached' if cached else 'uncached'} epoch ratio ({BENCH_TIMING})"] = [
            1.0 if k == -1 else bench_ratios.get((int(k), cached), np.nan) for _task, k in view.index]
    view[f"cached epoch ratio ({SWEEP_TIMING})"] = curve.epoch_seconds_ratio.to_numpy()
    return view.round(3)


def paper_table(tasks: Sequence[str]) -> pd.DataFrame:
    """The paper's RQ3 table for `tasks`: quality per metric, trainable parameters (M) and the epoch
    time as a ratio to Base, by (task, freeze); the paper's Telly-K ran uncached, each depth a
    separate training run."""
    from telly.report.paper import PAPER_TELLY_QUALITY, paper_telly_rows

    paper = pd.DataFrame(paper_telly_rows([t for t in tasks if t in PAPER_TELLY_QUALITY]))
    if paper.empty:
        return paper
    ratio = f"uncached epoch ratio ({SWEEP_TIMING})"
    full_epoch = paper[paper.freeze == -1].drop_duplicates("task").set_index("task").epoch_seconds
    paper[ratio] = paper.epoch_seconds / paper.task.map(full_epoch)
    return paper.pivot_table(index=["task", "freeze"], columns="metric", values="value").join(
        paper.drop_duplicates(["task", "freeze"]).set_index(["task", "freeze"])[["trainable_millions", ratio]]
    ).round(3)


def curve_table(table: pd.DataFrame) -> pd.DataFrame:
    """Full fine-tuning and cached Telly-K rows of `freeze_table`, with the columns the slider and the
    comparison with the paper show."""
    curve = table[((table.method == "telly") & table.uses_cache) | (table.method == "full")]
    return curve.rename(columns={"value": "quality", "trainable_millions": "trainable (M)",
                                 "epoch_seconds": "epoch (s)", "time_to_best_seconds": "to best (s)"})


CLONE_KINDS = {  # telly.tasks.clone_detection.PAIR_KINDS in words, in the order the prose names them
    "variant": "pair a function with a semantics-preserving variant of itself (clones)",
    "same-edit": "put the same one-edit change on both sides (clones)",
    "different-edits": "put two different one-edit changes of one function on the two sides (not clones)",
    "other-function": "pair a function with a variant of another function (not clones)",
}


def _clone_runs(table: pd.DataFrame) -> pd.DataFrame:
    return table[(table.task == "clone-detection")
                 & ((table.method == "full") | ((table.method == "telly") & table.uses_cache))]


def clone_baseline_table(baselines: Mapping, table: pd.DataFrame) -> pd.DataFrame:
    """The clone-detection baselines (`telly.tasks.clone_detection.clone_baselines`) above the
    clone-detection runs of `freeze_table` (full and cached Telly-K): run, F1 and its 95% CI."""
    rows = [{"run": b["name"], "kind": "baseline", "value": b["test_ci"]["f1"]["value"], "low": b["test_ci"]["f1"]["low"],
             "high": b["test_ci"]["f1"]["high"]} for b in baselines["baselines"].values()]
    runs = _clone_runs(table)
    return pd.concat([pd.DataFrame(rows), runs.assign(kind="fine-tuned")[["run", "kind", "value", "low", "high"]]],
                     ignore_index=True)


def _f1(baseline: Mapping) -> str:
    ci = baseline["test_ci"]["f1"]
    return f"F1 {ci['value']:.3f} (95% CI {ci['low']:.3f}-{ci['high']:.3f})"


def clone_baseline_prose(baselines: Mapping, table: pd.DataFrame) -> str:
    """What the test pairs are (near misses named as such), what each baseline reaches, whether one
    side alone gives the label away, and which fine-tuned variants score above every baseline's CI."""
    kinds, found = baselines["test_kinds"], baselines["baselines"]
    always, second, overlap = found["always-clone"], found["second-side"], found["token-overlap"]
    text = ""
    if kinds and set(kinds) <= set(CLONE_KINDS):
        pairs = sum(k["pairs"] for k in kinds.values())
        parts = "; ".join(f"{kinds[k]['pairs']} {words}" for k, words in CLONE_KINDS.items() if k in kinds)
        text += f"The {pairs} test pairs come from {baselines['functions']} functions: {parts}. "
        edited = sum(kinds[k]["pairs"] for k in ("same-edit", "different-edits") if k in kinds)
        if edited:
            text += ("A one-edit change (a flipped comparison, a swapped operator, an integer off by one or exchanged "
                     "if/else bodies) makes a near miss: code that reads like the function and behaves differently. "
                     "The clone literature calls such look-alikes near-miss (Type-3) clones; here the label follows "
                     f"behaviour, so the {edited} pairs built from near misses are clones only where both sides "
                     "carry the same edit, and these F1 scores are not comparable with BigCloneBench's. ")
    clones = always["test"]["precision"]  # always "clone": precision is the share of clones
    majority = max(clones, 1 - clones)
    accuracy = second["test_ci"]["accuracy"]
    text += (f"Always answering \"clone\" reaches {_f1(always)}. A bag-of-tokens classifier that sees only the "
             f"second function of each pair reaches {_f1(second)} and accuracy {accuracy['value']:.3f} (95% CI "
             f"{accuracy['low']:.3f}-{accuracy['high']:.3f}) where always answering the larger class gets {majority:.3f}: ")
    if accuracy["low"] > majority:
        text += "one side alone carries part of the label. "
    else:
        text += "no better, so one side alone does not give the label away. "
    text += f"Token overlap (threshold {overlap['threshold']:.2f} from the validation split) reaches {_f1(overlap)}"
    near_miss = overlap["clone_share_by_kind"].get("different-edits")
    text += (f" and calls {near_miss:.0%} of the different-edit near misses clones. " if near_miss is not None else ". ")
    runs = _clone_runs(table)
    bar = max(b["test_ci"]["f1"]["high"] for b in found.values())
    beaten = runs[runs.low > bar]
    text += f"{len(beaten)} of the {len(runs)} fine-tuned variants score above every baseline's CI"
    return text + (f": {', '.join(beaten.run)}." if len(beaten) else ".")


def trivial_baseline_table(summary: Mapping) -> pd.DataFrame:
    """Per task of `non_inferiority_summary`: the trivial baseline (`telly.tasks.Task.trivial_baseline`)
    beside full fine-tuning, and full minus baseline with its paired 95% CI."""
    rows = [{"task": task, "metric": entry["metric"], "baseline": entry["trivial"]["name"],
             "baseline score": entry["trivial"]["value"], "full fine-tuning": entry["full"]["value"],
             "difference": entry["trivial"]["difference"], "low": entry["trivial"]["low"],
             "high": entry["trivial"]["high"], "full beats it": bool(entry["trivial"]["low"] > 0)}
            for task, entry in summary["tasks"].items() if entry.get("trivial")]
    return pd.DataFrame(rows, columns=["task", "metric", "baseline", "baseline score", "full fine-tuning",
                                       "difference", "low", "high", "full beats it"])


def cache_check_prose(cached: dict, uncached: dict, *, samples: int = 1000,
                      bench_ratios: Mapping[tuple[int, bool], float] | None = None) -> str:
    """Cached against uncached Telly-K on the same seed: the paired difference in test quality, and
    what caching does to the epoch: in one process from the bench when it measured this depth both
    ways (`bench_epoch_ratios`), else from these two separate runs."""
    from telly.stats import paired_bootstrap
    from telly.tasks import get_task

    scorer = get_task(cached["task"])
    diff = paired_bootstrap(uncached["test_per_example"], cached["test_per_example"], scorer.score,
                            samples=samples)[scorer.metric]
    freeze, bench_ratios = cached["freeze"], dict(bench_ratios or {})
    separate = cached["epoch_seconds"] / uncached["epoch_seconds"]
    if (freeze, True) in bench_ratios and (freeze, False) in bench_ratios:
        epoch = (f"In one process (the bench: code search, interleaved) a cached epoch takes "
                 f"{bench_ratios[(freeze, True)] / bench_ratios[(freeze, False)]:.2f}x an uncached one; these two "
                 f"separate runs took {cached['epoch_seconds']:.1f} s and {uncached['epoch_seconds']:.1f} s ({separate:.2f}x)")
    else:
        epoch = (f"Epoch, over these two separate runs: {cached['epoch_seconds']:.1f} s cached vs "
                 f"{uncached['epoch_seconds']:.1f} s uncached ({separate:.2f}x)")
    return (f"Telly-{freeze} on {cached['task']}: cached {scorer.metric} {cached['test'][scorer.metric]:.3f}, "
            f"uncached {uncached['test'][scorer.metric]:.3f}; cached minus uncached {diff['difference']:+.3f} "
            f"(paired 95% CI {diff['low']:+.3f} to {diff['high']:+.3f}, p = {diff['p_value']:.2f}). "
            f"{epoch}, plus {cached['cache_seconds']:.1f} s once to build the cache.")


def example_outputs(records: Sequence[dict], n: int = 3) -> list[dict]:
    """A few test predictions beside their references for the book: from the best variant (highest
    headline metric among the runs whose outputs are not degenerate; full fine-tuning when every run
    is degenerate) and the most frozen one, on the same test rows. `records` are finished fine-tuning
    records of one generation task and model (`telly.trainer.finetune`)."""
    if not records:
        raise ValueError("no records to take example outputs from")
    tasks = {r["task"] for r in records}
    if len(tasks) != 1:
        raise ValueError(f"example outputs compare variants of one task, got {sorted(tasks)}")
    sound = [r for r in records if not _is_degenerate(r)]
    full = next((r for r in records if r["method"] == "full"), None)
    chosen = ([("best", max(sound, key=lambda r: r["test"][r["metric"]]))] if sound else
              [("full fine-tuning, every run degenerate", full)] if full is not None else [])
    most_frozen = max(records, key=lambda r: r["freeze"] if r["method"] in ("telly", "full") else -2)
    if all(record is not most_frozen for _role, record in chosen):
        chosen.append(("most frozen", most_frozen))
    rows = []
    for role, record in chosen:
        columns = record["test_per_example"]
        for index, (reference, prediction) in enumerate(zip(columns["reference"][:n], columns["prediction"][:n])):
            rows.append({"variant": f"{role}: {run_name(record)}", "example": index,
                         f"{record['metric']}": record["test"][record["metric"]],
                         "degenerate": _is_degenerate(record), "reference": reference, "prediction": prediction})
    return rows


def example_frame(records: Sequence[dict], n: int = 3) -> pd.DataFrame:
    return pd.DataFrame(example_outputs(records, n=n))
