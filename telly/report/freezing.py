"""RQ3 in tables: pure functions of fine-tuning records (`telly.trainer.finetune`) and of their
verdicts (`telly.analysis`).

`freeze_table` (one row per variant over its seeds), `summary_table` (the verdicts), `paper_table`,
`ours_table`, `clone_baseline_table`, `trivial_baseline_table`, the slider's `curve_table` and
example outputs of the generation tasks; the sentences are in `telly.report.freezing_prose`.
Records in, frames out: nothing here trains, loads a model or writes a file.

Epoch-time ratios come from two kinds of measurement and every table names its kind: runs in one
process with the variants interleaved (the bench, `telly.studies.bench`), or the sweep's separate
runs, each timed alone, so that whatever else the machine did meanwhile lands in their ratios.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from telly.analysis import SWEEP_TIMING, by_variant, is_degenerate, quality_interval, run_name
from telly.report.charts import freeze_results_chart, freeze_slider_chart
from telly.report.paper import PAPER_TELLY_QUALITY, paper_telly_rows

BENCH_TIMING = "one process"


# ----------------------------------------------------------------------------- the sweep

def freeze_table(records: list[dict], *, samples: int = 1000) -> pd.DataFrame:
    """One row per (task, method, freeze, cache) over its seeds: quality (the mean over seeds) with
    its 95% CI, trainable parameters, epoch time, time to best, epochs run and to best, peak memory,
    and cost ratios to full fine-tuning of the same task. One seed: the run's bootstrap CI over test
    examples; several: a bootstrap that resamples seeds and test examples together (`samples` draws).
    The time ratios compare the sweep's separate runs (column `timing`)."""
    if not records:
        raise ValueError("no finished fine-tuning records to tabulate: run the sweep first")
    rows = []
    for (task, method, freeze, cached, _config), runs in by_variant(records).items():
        seeded = [runs[s] for s in sorted(runs)]
        metric = seeded[0]["metric"]
        value, low, high = quality_interval(task, metric, seeded, samples)

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


# What a page shows of `freeze_table`, as two tables that each fit the text column: quality, then cost.
TABLE_COLUMNS = {
    "quality": {"task": "task", "run": "run", "metric": "metric", "value": "value", "low": "low", "high": "high",
                "seeds": "seeds", "zero_shot": "zero-shot"},
    # Times as ratios to full fine-tuning only: the seconds of separate runs on a shared machine are noise.
    "cost": {"task": "task", "run": "run", "trainable_millions": "trainable (M)",
             "epoch_seconds_ratio": f"epoch ratio to full ({SWEEP_TIMING})",
             "time_to_best_seconds_ratio": f"to-best ratio to full ({SWEEP_TIMING})", "epochs_run": "epochs run",
             "epochs_to_best": "best epoch", "peak_tensor_memory_mb": "peak memory (MB)"},
}


def table_view(table: pd.DataFrame, part: str = "quality") -> pd.DataFrame:
    """The `part` ("quality" or "cost") of `freeze_table` a page shows, named for a reader and rounded."""
    if part not in TABLE_COLUMNS:
        raise ValueError(f"table_view shows {sorted(TABLE_COLUMNS)}, got {part!r}")
    return table[list(TABLE_COLUMNS[part])].rename(columns=TABLE_COLUMNS[part]).round(3)


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


def bench_epoch_ratios(bench: Mapping | None, model: str) -> dict[tuple[int, bool], float]:
    """{(K, cached): epoch time / full fine-tuning's} of `model`'s Telly-K rows in a bench record
    (`telly.studies.bench`: code search, every variant in one process, interleaved); {} without one."""
    if not bench:
        return {}
    return {(int(row["freeze"]), bool(row["cached"])): row["ratio_to_full"] for row in bench.get("training", [])
            if row["model"] == model and row["method"] == "telly"}


def sweep_view(records: list[dict], summary: Mapping, *, kind: str, bench: Mapping | None = None) -> dict:
    """What chapter 3 shows of one sweep (the study's or the live one): its records and summary,
    their freeze table, seeds, model and kind, and the bench record with its epoch ratios (if any)."""
    model = records[0]["model"]
    return {"records": records, "summary": summary, "table": freeze_table(records), "model": model, "kind": kind,
            "seeds": sorted({r["seed"] for r in records}), "bench": bench, "bench_ratios": bench_epoch_ratios(bench, model)}


# ----------------------------------------------------------------------------- charts and the paper

def explorer_chart(records: list[dict], task: str, depth: int):
    """The freeze explorer's chart (`telly.studies.explorer`): `task`'s quality and costs against K
    from `records`, with `depth` marked."""
    return freeze_results_chart(freeze_table(records), task, highlight=depth)


def freeze_slider(table: pd.DataFrame):
    """The static page's freeze-depth slider over every task's full and cached Telly-K runs."""
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
    curve = curve.assign(freeze=curve.freeze.astype(int))  # a method that chose its own K (Telly-auto) has none
    return curve.rename(columns={"value": "quality", "trainable_millions": "trainable (M)",
                                 "epoch_seconds": "epoch (s)", "time_to_best_seconds": "to best (s)"})


# ----------------------------------------------------------------------------- clone detection and generation

def clone_runs(table: pd.DataFrame) -> pd.DataFrame:
    return table[(table.task == "clone-detection")
                 & ((table.method == "full") | ((table.method == "telly") & table.uses_cache))]


def clone_baseline_table(baselines: Mapping, table: pd.DataFrame) -> pd.DataFrame:
    """The clone-detection baselines (`telly.tasks.clone_detection.clone_baselines`) above the
    clone-detection runs of `freeze_table` (full and cached Telly-K): run, F1 and its 95% CI."""
    rows = [{"run": b["name"], "kind": "baseline", "value": b["test_ci"]["f1"]["value"], "low": b["test_ci"]["f1"]["low"],
             "high": b["test_ci"]["f1"]["high"]} for b in baselines["baselines"].values()]
    runs = clone_runs(table)
    return pd.concat([pd.DataFrame(rows), runs.assign(kind="fine-tuned")[["run", "kind", "value", "low", "high"]]],
                     ignore_index=True)


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
    sound = [r for r in records if not is_degenerate(r)]
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
                         "degenerate": is_degenerate(record), "reference": reference, "prediction": prediction})
    return rows


def example_frame(records: Sequence[dict], n: int = 3) -> pd.DataFrame:
    return pd.DataFrame(example_outputs(records, n=n))
