"""RQ3 in words and tables: pure functions of fine-tuning records (`telly.trainer.finetune`).

Tables (`freeze_table`, `compare_to_full`, `paper_table`, `clone_baseline_table`), the sentences
chapter 3 shows (`freeze_findings`, `degenerate_findings`, `clone_baseline_prose`,
`cache_check_prose`) and example outputs of the generation tasks. Records in, text or frames out:
nothing here trains, loads a model or writes a file.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from telly.report.charts import freeze_label


def freeze_table(records: list[dict]):
    """One row per (task, method, freeze, cache) averaged over seeds: quality with its 95% CI, trainable
    parameters, epoch time, time to best, epochs to best, peak memory, and cost ratios to full
    fine-tuning of the same task (seed-averaged). With one seed the CI is the run's bootstrap CI;
    with several it is the mean of the per-seed bounds (approximate)."""
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
                     "peak_tensor_memory_mb": r["peak_tensor_memory_mb"],
                     "zero_shot": (r.get("zero_shot") or {}).get("test", {}).get(metric)})
    frame = pd.DataFrame(rows)
    keys = ["task", "method", "freeze", "uses_cache", "metric"]
    table = frame.groupby(keys, as_index=False).agg(
        value=("value", "mean"), low=("low", "mean"), high=("high", "mean"), seeds=("seed", "nunique"),
        trainable_millions=("trainable_millions", "first"), trainable_fraction=("trainable_fraction", "first"),
        epoch_seconds=("epoch_seconds", "mean"), cache_seconds=("cache_seconds", "mean"),
        time_to_best_seconds=("time_to_best_seconds", "mean"), epochs_to_best=("epochs_to_best", "mean"),
        peak_tensor_memory_mb=("peak_tensor_memory_mb", "mean"), zero_shot=("zero_shot", "first"))
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


def degenerate_findings(records: list[dict]) -> str:
    """Markdown naming the generation runs whose test outputs are degenerate (empty or all alike,
    per `record["test"]["degenerate"]` / `record["generation"]["degenerate"]`), one line per task;
    "" when `records` hold no generation run."""
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


TABLE_COLUMNS = ["task", "method", "freeze", "uses_cache", "metric", "value", "low", "high", "zero_shot",
                 "trainable_millions", "epoch_seconds", "epoch_seconds_ratio", "time_to_best_seconds",
                 "time_to_best_seconds_ratio", "epochs_to_best", "peak_tensor_memory_mb", "within_full_ci"]


def table_view(table: pd.DataFrame) -> pd.DataFrame:
    """The columns of `freeze_table` a page shows, rounded."""
    return table[TABLE_COLUMNS].round(3)


def sweep_note(result: dict) -> str:
    """What a `telly.studies.freezing.freezing_study` call ran, read back and failed."""
    lines = [f"{group}: {count} records, {read} read back from the store" for group, (count, read) in result["ran"].items()]
    lines += [f"FAILED {failure['run']}: {failure['error']}" for failure in result["failed"]]
    return "\n\n".join(lines)


def comparisons(records: list[dict], *, seed: int = 0, samples: int = 1000) -> pd.DataFrame:
    """`compare_to_full` for every task that has a full fine-tuning run of `seed`."""
    tasks = sorted({r["task"] for r in records if r["method"] == "full" and r["seed"] == seed})
    frames = [compare_to_full(records, task, seed=seed, samples=samples) for task in tasks]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def generation_note(records: list[dict], *, model: str, kind: str) -> str:
    """The degenerate-output findings of the generation runs, after a note on encoder backbones."""
    degenerate = degenerate_findings(records)
    if not degenerate:
        return ""
    encoder_note = (f"`{model}` is an encoder, not a generative model (the default, MiniLM-L6, is a sentence "
                    "encoder trained on text, not code): its generation head is warm-started from "
                    "encoder weights, so generation quality sits near the floor and depth-to-depth differences "
                    "on these tasks say little. " if kind == "encoder" else "")
    return f"**Generation tasks.** {encoder_note}\n\n{degenerate}"


def freeze_slider(table: pd.DataFrame):
    """The static page's freeze-depth slider over every task's full and cached Telly-K runs."""
    from telly.report.charts import freeze_slider_chart

    return freeze_slider_chart(curve_table(table), metric="quality", costs=["trainable (M)", "epoch (s)", "to best (s)"],
                               series="task", formats={"quality": ".3f", "trainable (M)": ".2f", "epoch (s)": ".1f",
                                                       "to best (s)": ".1f"})


def ours_table(table: pd.DataFrame) -> pd.DataFrame:
    """Our full and cached Telly-K rows in the shape of `paper_table`."""
    return curve_table(table).set_index(["task", "freeze"])[["quality", "low", "high", "trainable (M)",
                                                              "epoch_seconds_ratio"]].round(3)


def paper_table(tasks: Sequence[str]) -> pd.DataFrame:
    """The paper's RQ3 table for `tasks`: quality per metric, trainable parameters (M) and the epoch
    time as a ratio to Base, by (task, freeze)."""
    from telly.report.paper import PAPER_TELLY_QUALITY, paper_telly_rows

    paper = pd.DataFrame(paper_telly_rows([t for t in tasks if t in PAPER_TELLY_QUALITY]))
    if paper.empty:
        return paper
    full_epoch = paper[paper.freeze == -1].drop_duplicates("task").set_index("task").epoch_seconds
    paper["epoch ratio"] = paper.epoch_seconds / paper.task.map(full_epoch)
    return paper.pivot_table(index=["task", "freeze"], columns="metric", values="value").join(
        paper.drop_duplicates(["task", "freeze"]).set_index(["task", "freeze"])[["trainable_millions", "epoch ratio"]]
    ).round(3)


def curve_table(table: pd.DataFrame) -> pd.DataFrame:
    """Full fine-tuning and cached Telly-K rows of `freeze_table`, with the columns the slider and the
    comparison with the paper show."""
    curve = table[((table.method == "telly") & table.uses_cache) | (table.method == "full")]
    return curve.rename(columns={"value": "quality", "trainable_millions": "trainable (M)",
                                 "epoch_seconds": "epoch (s)", "time_to_best_seconds": "to best (s)"})


def clone_baseline_table(baseline: dict, table: pd.DataFrame) -> pd.DataFrame:
    """The token-overlap baseline (`telly.tasks.clone_detection.token_overlap_baseline`) beside the
    clone-detection runs of `freeze_table` (full and cached Telly-K): run, F1 and its 95% CI."""
    rows = table[(table.task == "clone-detection") & ((table.method == "full") | ((table.method == "telly") & table.uses_cache))]
    f1 = baseline["test_ci"]["f1"]
    return pd.concat([pd.DataFrame([{"run": "token overlap (Jaccard)", "value": f1["value"], "low": f1["low"],
                                     "high": f1["high"]}]),
                      rows.assign(run=[freeze_label(int(k)) for k in rows.freeze])[["run", "value", "low", "high"]]],
                     ignore_index=True)


def clone_baseline_prose(baseline: dict, table: pd.DataFrame) -> str:
    """What string matching alone gets, and which fine-tuned variants score above its CI."""
    rows = table[(table.task == "clone-detection") & ((table.method == "full") | ((table.method == "telly") & table.uses_cache))]
    f1 = baseline["test_ci"]["f1"]
    beaten = rows[rows.low > f1["high"]]
    return (f"Token overlap alone (threshold {baseline['threshold']:.2f} from the validation split) reaches test F1 "
            f"{baseline['test']['f1']:.3f} (95% CI {f1['low']:.3f}-{f1['high']:.3f}, "
            f"precision {baseline['test']['precision']:.3f}, recall {baseline['test']['recall']:.3f}); "
            f"{len(beaten)} of the {len(rows)} fine-tuned variants score above that CI"
            + (f": {', '.join(freeze_label(int(k)) for k in beaten.freeze)}." if len(beaten) else "."))


def cache_check_prose(cached: dict, uncached: dict, *, samples: int = 1000) -> str:
    """Cached against uncached Telly-K on the same seed: the paired difference in test quality and
    the epoch times."""
    from telly.stats import paired_bootstrap
    from telly.tasks import get_task

    scorer = get_task(cached["task"])
    diff = paired_bootstrap(uncached["test_per_example"], cached["test_per_example"], scorer.score,
                            samples=samples)[scorer.metric]
    return (f"Telly-{cached['freeze']} on {cached['task']}: cached {scorer.metric} {cached['test'][scorer.metric]:.3f}, "
            f"uncached {uncached['test'][scorer.metric]:.3f}; cached minus uncached {diff['difference']:+.3f} "
            f"(paired 95% CI {diff['low']:+.3f} to {diff['high']:+.3f}, p = {diff['p_value']:.2f}). "
            f"Epoch: {cached['epoch_seconds']:.1f} s cached vs {uncached['epoch_seconds']:.1f} s uncached "
            f"({cached['epoch_seconds'] / uncached['epoch_seconds']:.2f}x), plus {cached['cache_seconds']:.1f} s "
            f"once to build the cache.")


def example_outputs(records: Sequence[dict], n: int = 3) -> list[dict]:
    """A few test predictions beside their references for the book: from the best variant (highest
    headline metric) and the most frozen one, on the same test rows. `records` are finished
    fine-tuning records of one generation task and model (`telly.trainer.finetune`)."""
    if not records:
        raise ValueError("no records to take example outputs from")
    tasks = {r["task"] for r in records}
    if len(tasks) != 1:
        raise ValueError(f"example outputs compare variants of one task, got {sorted(tasks)}")
    best = max(records, key=lambda r: r["test"][r["metric"]])
    most_frozen = max(records, key=lambda r: r["freeze"] if r["method"] in ("telly", "full") else -2)
    chosen = [("best", best)] + ([("most frozen", most_frozen)] if most_frozen is not best else [])
    rows = []
    for role, record in chosen:
        columns = record["test_per_example"]
        for index, (reference, prediction) in enumerate(zip(columns["reference"][:n], columns["prediction"][:n])):
            rows.append({"variant": f"{role}: {_variant_name(record)}", "example": index,
                         f"{record['metric']}": record["test"][record["metric"]],
                         "degenerate": bool(record["test"].get("degenerate", 0.0)),
                         "reference": reference, "prediction": prediction})
    return rows


def example_frame(records: Sequence[dict], n: int = 3) -> pd.DataFrame:
    return pd.DataFrame(example_outputs(records, n=n))


def _variant_name(record: dict) -> str:
    if record["method"] == "telly":
        return f"Telly-{record['freeze']}"
    return record["method"]
