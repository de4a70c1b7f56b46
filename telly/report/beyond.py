"""Chapter 5 in tables, charts and words: every method against full fine-tuning on one clock.

The clock (`clock_seconds`) is what producing the kept weights took: Telly-auto's pilot, the prefix
cache, training and validation. Loading, the task's data preparation (done once per dataset, so the
first run of a task pays it) and the test pass (the same rows for every method) are left out. Each
method's clock is a ratio to full fine-tuning's, paired by seed (the mean of per-seed ratios).

`method_points` (one row per task and variant: quality, clock ratio, verdict), `pareto_chart`
(quality against clock, with the reader's pick of method and K), `time_to_quality` (what each method
needed to reach full fine-tuning's quality within the margin, or "did not"), `selector_table`
(each selector's K beside the sweep's largest non-inferior K) and `beyond_findings` (issue 23's goal,
as measured). Records and verdicts in, frames, charts and sentences out; tests flip each sentence.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import altair as alt
import numpy as np
import pandas as pd

from telly.analysis import MIN_SEEDS, by_variant, machine_of, machines_apart, run_name
from telly.report.similarity import layer_ranges

CLOCK_PARTS = ("pilot", "cache", "train", "eval")
FAMILIES = {"full": "Full", "telly": "Telly-K", "telly-auto": "Telly-auto", "lora": "LoRA", "bitfit": "BitFit"}
ADDED = ("telly-auto", "lora", "bitfit")  # the methods chapter 5 adds to chapter 3's
GOAL_TASKS, GOAL_RATIO = 3, 0.4  # issue 23: non-inferior on at least 3 of 5 tasks at no more than 0.4x full's clock
METHOD_PARAM, DEPTH_PARAM = "pick_method", "pick_depth"
# The probed property each task leans on most, fixed before any selector ran: matching code to a
# description, a clone to its original or a summary to its code is behaviour (semantic, POJ-104's
# kind of probe); writing code from a docstring or finishing a line must first be well-formed (syntactic).
TASK_PROPERTY = {"code-search": "semantic", "clone-detection": "semantic", "code-summarization": "semantic",
                 "code-generation": "syntactic", "code-completion": "syntactic"}


def clock_seconds(record: Mapping) -> float:
    """Seconds from the first pilot step to the kept weights: pilot, cache, training, validation."""
    split = record.get("time_split")
    if not split:
        raise ValueError(f"record {record.get('run')!r} has no time_split: it predates the clock chapter 5 reads")
    return float(sum(split.get(part, 0.0) for part in CLOCK_PARTS))


def _epoch_clock(record: Mapping) -> float:
    """Clock seconds per epoch run (training and validation are both per epoch)."""
    return clock_seconds(record) / record["epochs_run"]


def full_clock(run: Mapping, full: Mapping, anchors: Sequence[Mapping] = ()) -> tuple[float, str, str]:
    """Full fine-tuning's clock to pair with `run` (same task and seed), as (seconds, how, why):
    full's own when both records name one machine (how ""); else, when a clock anchor (a full fine-tune
    of the study's, trained again on `run`'s machine) is among `anchors`, full's epochs times the anchor's
    seconds per epoch ("scaled", and what the anchor measured); else full's own, with why it may not
    compare ("apart")."""
    apart = machines_apart([run, full])
    if apart is None:
        return clock_seconds(full), "", ""
    anchor = next((a for a in anchors if machine_of(a) == machine_of(run) and machine_of(run)[1] is not None
                   and all(a.get(key) == full.get(key) for key in ("task", "model", "profile"))), None)
    if anchor is None:
        return clock_seconds(full), "apart", apart
    return (full["epochs_run"] * _epoch_clock(anchor), "scaled",
            f"a full epoch of seed {anchor['seed']} took {_epoch_clock(anchor):.0f} s on {machine_of(anchor)[1]}")


def stopped_by(record: Mapping) -> str:
    """Why Telly-auto's K is not deeper: the first layer above it whose pilot movement reached the
    threshold, as "layer i moved m"; "" for another method, or when K is as deep as it may go."""
    selection = record.get("selection") or {}
    over = [row for row in selection.get("curve", []) if row["layer"] > record["freeze"]
            and row["movement"] >= selection["threshold"]]
    return f"layer {over[0]['layer']} moved {over[0]['movement']:.4f}" if over else ""


def method_points(records: Sequence[Mapping], summary: Mapping, anchors: Sequence[Mapping] = ()) -> pd.DataFrame:
    """One row per task and variant over its seeds: family, K (Telly-auto: each seed's choice), the
    mean test quality, the clock ratio to full fine-tuning (paired by seed; `full_clock`, scaled by
    `anchors` where the two ran on different machines), and the verdict of the non-inferiority summary
    (`telly.analysis.non_inferiority_summary`) with its interval."""
    variants = by_variant(records)
    full = {key[0]: runs for key, runs in variants.items() if key[1] == "full"}
    rows = []
    for (task, method, freeze, cached, _config), runs in variants.items():
        if task not in full or (method == "telly" and not cached):
            continue
        seeds = sorted(set(runs) & set(full[task]))
        if not seeds:
            continue
        first = runs[seeds[0]]
        entry = summary["tasks"].get(task, {})
        verdict = next((r for r in entry.get("rows", []) if r["run"] == run_name(first)), None)
        paired = [full_clock(runs[s], full[task][s], anchors) for s in seeds]
        ratios = [clock_seconds(runs[s]) / seconds for s, (seconds, _, _) in zip(seeds, paired, strict=True)]
        how = {kind: sorted({why for _, k, why in paired if k == kind}) for kind in ("scaled", "apart")}
        chosen = [int(runs[s]["freeze"]) for s in seeds]
        chosen_text = ", ".join(map(str, chosen)) if method == "telly-auto" else ""
        stops = [f"{stopped_by(runs[s])} (seed {s})" for s in seeds if stopped_by(runs[s])]
        rows.append({"task": task, "family": FAMILIES.get(method, method), "run": run_name(first),
                     "label": f"Telly-auto (K {chosen_text})" if chosen_text else run_name(first),
                     "freeze": freeze if freeze is not None else int(np.median(chosen)),
                     "chosen": chosen_text, "stopped_by": "; ".join(stops),
                     "threshold": (first.get("selection") or {}).get("threshold"),
                     "metric": first["metric"], "quality": float(np.mean([runs[s]["test"][first["metric"]] for s in seeds])),
                     "clock_ratio": float(np.mean(ratios)), "seeds": len(seeds),
                     "clock_apart": "; ".join(how["apart"]), "clock_scaled": "; ".join(how["scaled"]),
                     "verdict": "reference" if method == "full" else (verdict or {}).get("verdict", "not tested"),
                     "difference": (verdict or {}).get("difference"), "low": (verdict or {}).get("low"),
                     "high": (verdict or {}).get("high"), "margin": entry.get("margin"),
                     "why_no_verdict": _why_no_verdict(entry, verdict)})
    if not rows:
        raise ValueError("no run shares a seed with a full fine-tune of its task: nothing to put on one clock")
    frame = pd.DataFrame(rows)
    frame["pareto"] = False
    for _task, group in frame.groupby("task"):
        frame.loc[_front(group), "pareto"] = True
    return frame.sort_values(["task", "clock_ratio"]).reset_index(drop=True)


def clock_caveat(points: pd.DataFrame) -> str:
    """Markdown: which clock ratios rest on a clock anchor (`full_clock`), and which pair runs of
    different machines, or of records that do not name their CPU, and why that matters; "" when every
    ratio is one machine's."""
    methods = points[points.family != "Full"]
    scaled, apart = methods[methods.clock_scaled != ""], methods[methods.clock_apart != ""]
    notes = []
    if not scaled.empty:
        where = "; ".join(f"{task}: {', '.join(group.label)} ({group.clock_scaled.iloc[0]})"
                          for task, group in scaled.groupby("task", sort=True))
        notes.append("**Clock anchor.** Where full fine-tuning ran on another machine than a method, its clock on the "
                     "method's machine is its number of epochs times the seconds per epoch of a full fine-tune trained "
                     f"again there (the clock anchor): {where}.")
    if not apart.empty:
        where = "; ".join(f"{task}: {', '.join(group.label)} ({group.clock_apart.iloc[0]})"
                          for task, group in apart.groupby("task", sort=True))
        notes.append("**Clock caveat.** These ratios pair a method's runs with full fine-tunes that may not share "
                     f"their machine, and no clock anchor ran there, so they measure the machines as well as the "
                     f"methods: {where}.")
    return "\n\n".join(notes)


def _why_no_verdict(entry: Mapping, row: Mapping | None) -> str:
    """Why the summary gave a row "no verdict" (the task's reasons, else the row's own), or ""."""
    if row is None or row.get("verdict") != "no verdict":
        return ""
    if entry.get("no_verdict"):
        return "; ".join(entry["no_verdict"])
    if len(row["seeds"]) < MIN_SEEDS:
        return f"{len(row['seeds'])} seed(s), fewer than the {MIN_SEEDS} a verdict needs"
    return f"runs at chance on seed(s) {', '.join(map(str, row['at_chance_seeds']))}"


def _front(group: pd.DataFrame) -> list:
    """The rows no other row beats on both quality (higher) and clock (lower)."""
    return [i for i, row in group.iterrows()
            if not ((group.quality >= row.quality) & (group.clock_ratio <= row.clock_ratio)
                    & ((group.quality > row.quality) | (group.clock_ratio < row.clock_ratio))).any()]


def pareto_chart(points: pd.DataFrame, task: str, *, width: int = 440, height: int = 260) -> alt.LayerChart:
    """Quality against the clock ratio for one task: every variant, the Pareto front, full fine-tuning's
    quality less the margin (dotted), and the point the reader picks (a method and, for Telly-K, a
    depth, bound to two menus) ringed and read out."""
    frame = points[points.task == task].copy()
    if frame.empty:
        raise ValueError(f"pareto_chart: no points for task {task!r}; tasks: {sorted(points.task.unique())}")
    families = [f for f in FAMILIES.values() if f in set(frame.family)]
    depths = sorted(int(k) for k in frame[frame.family == "Telly-K"].freeze) or [-1]
    method = alt.param(name=METHOD_PARAM, value="Telly-auto" if "Telly-auto" in families else families[0],
                       bind=alt.binding_select(options=families, name="method "))
    depth = alt.param(name=DEPTH_PARAM, value=depths[-1], bind=alt.binding_select(options=depths, name="Telly-K: K "))
    data = alt.Data(values=frame[["label", "family", "freeze", "quality", "clock_ratio", "verdict", "pareto"]]
                    .to_dict("records"))
    base = alt.Chart(data).transform_calculate(
        picked=f"datum.family == {METHOD_PARAM} && (datum.family != 'Telly-K' || datum.freeze == {DEPTH_PARAM})")
    x = alt.X("clock_ratio:Q", title="clock, ratio to full fine-tuning (pilot + cache + training + validation)",
              scale=alt.Scale(zero=True))
    y = alt.Y("quality:Q", title=f"test {frame.metric.iloc[0]}", scale=alt.Scale(zero=False))
    colour = alt.Color("family:N", scale=alt.Scale(domain=families), title="method")
    tooltip = ["label:N", alt.Tooltip("quality:Q", format=".3f"), alt.Tooltip("clock_ratio:Q", format=".2f"),
               "verdict:N"]
    front = base.transform_filter("datum.pareto").mark_line(color="#999", strokeDash=[2, 2]).encode(
        x=x, y=y, order="clock_ratio:Q")
    dots = base.mark_point(filled=True, size=70).encode(x=x, y=y, color=colour, tooltip=tooltip)
    ring = base.transform_filter("datum.picked").mark_point(size=420, strokeWidth=2.5, color="#222").encode(x=x, y=y)
    readout = base.transform_filter("datum.picked").transform_calculate(
        text="datum.label + ': ' + format(datum.quality, '.3f') + ' at ' + format(datum.clock_ratio, '.2f') + "
             "'x full; ' + datum.verdict").mark_text(align="left", baseline="top", fontSize=12).encode(
        x=alt.value(6), y=alt.value(4), text="text:N")  # top left, where no point can hide it
    layers = [front, dots, ring, readout]
    full = frame[frame.family == "Full"]
    margin = frame.margin.iloc[0]
    if not full.empty and margin is not None and not pd.isna(margin):
        floor = pd.DataFrame({"quality": [float(full.quality.iloc[0]) - float(margin)]})
        layers.insert(0, alt.Chart(floor).mark_rule(color="#54a24b", strokeDash=[1, 3]).encode(y="quality:Q"))
    return alt.layer(*layers).add_params(method, depth).properties(width=width, height=height, title=task)


def time_to_quality(points: pd.DataFrame) -> pd.DataFrame:
    """Per task and method: the cheapest of its variants shown non-inferior and the clock it needed (a
    ratio to full fine-tuning's: separate runs on a shared machine make lone seconds noise), or "did
    not" with the variants it tried and the verdicts they got instead."""
    rows = []
    for (task, family), group in points[points.family != "Full"].groupby(["task", "family"], sort=False):
        reached = group[group.verdict == "non-inferior"].sort_values("clock_ratio")
        if reached.empty:
            verdicts = ", ".join(sorted(set(group.verdict)))
            rows.append({"task": task, "method": family, "variant": ", ".join(group.label),
                         "needed": f"did not ({verdicts})"})
        else:
            best = reached.iloc[0]
            rows.append({"task": task, "method": family, "variant": best.label,
                         "needed": f"{best.clock_ratio:.2f}x full fine-tuning's clock"})
    return pd.DataFrame(rows, columns=["task", "method", "variant", "needed"])


def probing_choice(probing: Mapping | None, task: str) -> int | None:
    """The probing-based K: freeze every layer below the peak of the task's property (TASK_PROPERTY) in
    the pre-trained model (chapter 1's probing document): K = peak layer - 1 (layer 0 is the
    embeddings' output); None without a peak."""
    finding = ((probing or {}).get("findings") or {}).get(TASK_PROPERTY.get(task, ""), {})
    peak = finding.get("peak")
    return None if not peak else max(int(peak["layer"]) - 1, -1)


def selector_table(records: Sequence[Mapping], summary: Mapping, probing: Mapping | None = None) -> pd.DataFrame:
    """Per task and selector, the K chosen on each seed (Telly-auto's movement rule, the gradient rule
    and L/2, all read off Telly-auto's pilot; the probing peak from chapter 1's document when given),
    its verdict where the sweep ran that K, and the sweep's largest non-inferior K."""
    rows = []
    for task in sorted({r["task"] for r in records if r.get("selection")}):
        chosen = sorted((r for r in records if r["task"] == task and r.get("selection")), key=lambda r: r["seed"])
        entry = summary["tasks"].get(task, {})
        swept = {r["freeze"]: r["verdict"] for r in entry.get("rows", []) if r["method"] == "telly" and r["uses_cache"]}
        swept[-1] = "full fine-tuning"
        best = entry.get("largest_non_inferior_k")
        picks = {"movement (Telly-auto)": [r["selection"]["chosen_freeze"] for r in chosen],
                 "gradient norm": [r["selection"]["alternatives"]["gradient"]["freeze"] for r in chosen],
                 "fixed L/2": [r["selection"]["alternatives"]["half"]["freeze"] for r in chosen]}
        peak = probing_choice(probing, task)
        if peak is not None:
            picks[f"probing peak ({TASK_PROPERTY[task]})"] = [peak]
        for selector, ks in picks.items():
            rows.append({"task": task, "selector": selector, "K per seed": ", ".join(map(str, ks)),
                         "sweep verdict at K": "; ".join(f"{k}: {swept.get(k, 'not swept')}" for k in sorted(set(ks))),
                         "sweep's largest non-inferior K": "no sweep ran" if len(swept) == 1 else
                                                           "none" if best is None else best})
    return pd.DataFrame(rows, columns=["task", "selector", "K per seed", "sweep verdict at K",
                                       "sweep's largest non-inferior K"])


def beyond_findings(points: pd.DataFrame, *, tasks_in_goal: int = 5) -> str:
    """Issue 23's goal as measured: on how many tasks Telly-auto is non-inferior at <= 0.4x full's
    clock (goal: 3 of 5), and, task by task, whether it is faster than LoRA at equal quality, with the
    figures; where it falls short, where and why."""
    auto = points[points.family == "Telly-auto"].set_index("task")
    lora = points[points.family == "LoRA"].set_index("task")
    if auto.empty:
        return "Telly-auto has not run on any task here yet, so the goal cannot be judged."
    met = [t for t, row in auto.iterrows() if row.verdict == "non-inferior" and row.clock_ratio <= GOAL_RATIO]
    sentences = [f"**Goal** (non-inferior on at least {GOAL_TASKS} of {tasks_in_goal} tasks at no more than "
                 f"{GOAL_RATIO}x full fine-tuning's clock): Telly-auto meets it on {len(met)} of the {len(auto)} "
                 f"task(s) measured here ({', '.join(met) or 'none'}), so the goal is "
                 + ("**met**." if len(met) >= GOAL_TASKS else
                    f"**not met** here ({len(auto)} of {tasks_in_goal} tasks ran)." if len(auto) < tasks_in_goal
                    else "**not met**.")]
    for task, row in auto.iterrows():
        why = []
        if row.verdict != "non-inferior":
            verdict = {"no verdict": f"it gets no verdict ({row.why_no_verdict})",
                       "not tested": f"it is not tested yet ({row.seeds} seed(s) ran)"}.get(row.verdict,
                                                                                      f"it is {row.verdict}")
            why.append(f"{verdict}, Telly-auto - full {row.difference:+.3f} (95% CI [{row.low:+.3f}, {row.high:+.3f}], "
                       f"margin {row.margin:g})" if pd.notna(row.difference) else verdict)
        if row.clock_ratio > GOAL_RATIO:
            why.append(f"its clock is {row.clock_ratio:.2f}x full's" + (
                f", as K stayed shallow: in the pilot {row.stopped_by}, at or above the threshold {row.threshold:g}"
                if row.stopped_by else ""))
        line = (f"*{task}*: Telly-auto chose K = {row.chosen} and took {row.clock_ratio:.2f}x full fine-tuning's clock; "
                + ("it meets the goal" if not why else "it misses the goal: " + " and ".join(why)))
        if task in lora.index:
            other = lora.loc[task]
            both = row.verdict == other.verdict == "non-inferior"
            if both or row.verdict == "non-inferior" != other.verdict:
                faster = row.clock_ratio < other.clock_ratio
                line += (f". Against LoRA ({other.verdict}, {other.clock_ratio:.2f}x): "
                         + ("faster at equal quality" if both and faster else
                            "slower at equal quality" if both else
                            "only Telly-auto keeps full fine-tuning's quality"))
            else:
                untested = [name for name, verdict in (("Telly-auto", row.verdict), ("LoRA", other.verdict))
                            if verdict == "not tested"]
                line += (f". Against LoRA ({other.verdict}, {other.clock_ratio:.2f}x): no comparison at equal quality, "
                         + (f"{' and '.join(untested)} not tested yet" if untested else
                            "LoRA keeps the quality and Telly-auto does not" if other.verdict == "non-inferior"
                            else "neither is shown to keep full fine-tuning's quality"))
        sentences.append(line + ".")
    caveat = clock_caveat(points)
    return "\n\n".join(sentences + ([caveat] if caveat else []))


def has_methods(records: Sequence[Mapping]) -> bool:
    """Whether any record is of a method chapter 5 adds (Telly-auto, LoRA, BitFit)."""
    return any(r["method"] in ADDED for r in records)


def not_run_note(not_applicable: Mapping[str, str]) -> str:
    """Markdown: the methods left out because they cannot run on the model, each with why; "" for none."""
    return " ".join(f"**{FAMILIES[method]} not run:** {why}." for method, why in not_applicable.items())


def unplanned_note(plan: Mapping | None, beyond_tasks: Sequence[str] = ()) -> str:
    """Markdown: the tasks a study's power plan gave no RQ3 runs, which chapter 5's methods skip too (they
    are judged against those full fine-tunes), unless the study runs them there anyway (`beyond_tasks`:
    its beyond parts, which then train their own full fine-tunes); "" when there is nothing to say."""
    unplanned = sorted(task for task, entry in (plan or {}).get("tasks", {}).items() if entry.get("why_not"))
    skipped = [task for task in unplanned if task not in beyond_tasks]
    own = [task for task in unplanned if task in beyond_tasks]
    notes = []
    if skipped:
        notes.append(f"**Not run on {', '.join(skipped)}:** the study's plan gave {_them(skipped)} no RQ3 runs, whose "
                     "full fine-tunes these methods are judged against (chapter 3's plan table says why).")
    if own:
        notes.append(f"**{', '.join(own)}** got no RQ3 runs from the plan either, but no other backbone covers "
                     f"{_them(own)} here: the study fine-tunes {_them(own)} in full on the same seeds for these methods "
                     "to be judged against.")
    return " ".join(notes)


def _them(tasks: Sequence[str]) -> str:
    return "it" if len(tasks) == 1 else "them"


def study_status(records: Sequence[Mapping], not_applicable: Mapping[str, str] | None = None,
                 plan: Mapping | None = None, beyond_tasks: Sequence[str] = ()) -> str:
    """What the code-model study's records hold of chapter 5's methods, task by task, which of them it
    left out as not applicable (`telly.studies.records.StudyRecords.not_applicable`), and which tasks
    its plan left out (`unplanned_note`)."""
    left_out = "".join(" " + note for note in (not_run_note(not_applicable or {}), unplanned_note(plan, beyond_tasks))
                       if note)
    if not has_methods(records):
        return ("**Not run yet.** The code-model study's records hold no Telly-auto, LoRA or BitFit run: its sweep "
                "(chapter 3) comes first, and they reuse its full fine-tunes." + left_out)
    counts: dict[str, dict[str, int]] = {}
    for r in records:
        if r["method"] in ADDED:
            counts.setdefault(r["task"], {}).setdefault(FAMILIES[r["method"]], 0)
            counts[r["task"]][FAMILIES[r["method"]]] += 1
    return "Runs so far: " + "; ".join(f"{task}: " + ", ".join(f"{family} {n} seed(s)" for family, n in found.items())
                                      for task, found in sorted(counts.items())) + "." + left_out


def selection_note(records: Sequence[Mapping]) -> str:
    """The settings Telly-auto ran with, from its records (threshold, pilot share, pilot steps and time)."""
    chosen = [r for r in records if r.get("selection")]
    if not chosen:
        return "No Telly-auto run here."
    settings = sorted({(r["selection"]["threshold"], r["selection"]["pilot_share"]) for r in chosen})
    steps = [r["selection"]["pilot_steps"] for r in chosen]
    share = float(np.mean([r["selection"]["pilot_seconds"] / clock_seconds(r) for r in chosen]))
    took = f"{min(steps)}" if min(steps) == max(steps) else f"{min(steps)}-{max(steps)}"
    sources = sorted({str(r["selection"].get("calibration")) for r in chosen if r["selection"].get("calibration")})
    origin = (f"set by {'; '.join(sources)}" if sources and all(r["selection"].get("calibration") for r in chosen) else
              "uncalibrated defaults: `telly calibrate-auto` sets them on validation data against the sweep")
    return (f"Telly-auto ran with movement threshold and pilot share {', '.join(f'{t:g} and {s:g}' for t, s in settings)} "
            f"({origin}); its pilots took {took} training step(s), on average {share:.0%} of Telly-auto's clock.")


def _layer_list(layers: Sequence[int]) -> str:
    """[1, 3, 4, 5] -> "layers 1, 3-5"; [2] -> "layer 2"."""
    return ("layer " if len(layers) == 1 else "layers ") + layer_ranges(layers)


def _span(values: Sequence[float], form: str = ".4f") -> str:
    """The values' range as "low-high" in `form`, or one value when both read the same."""
    low, high = format(min(values), form), format(max(values), form)
    return low if low == high else f"{low}-{high}"


def quiet_layers(pilot: Mapping) -> dict:
    """One pilot of `telly.studies.beyond.pilot_dimensions`, read: the layers above K that stayed under the
    threshold ("quiet") and those that moved, the quiet layers' largest column(s) and its share of their
    summed squares, per count left out how many quiet layers then moved past the threshold ("woken"), and
    whether most did under some count ("hidden")."""
    threshold, freeze, curve = pilot["threshold"], pilot["freeze"], pilot["curve"]
    above = [row for row in curve if row["layer"] > freeze]
    quiet = [row["layer"] for row in above if row["movement"] < threshold]
    moved = [row["layer"] for row in above if row["movement"] >= threshold]
    first = pilot["without"][0]
    columns = sorted({first["dims"][i][0] for i in quiet})
    woken = [sum(w["curve"][i]["movement"] >= threshold for i in quiet) for w in pilot["without"]]
    return {"quiet": quiet, "moved": moved, "woken": woken, "hidden": bool(quiet) and 2 * max(woken) > len(quiet),
            "largest": f"column {columns[0]}" if len(columns) == 1 else
                       f"the largest column (of {', '.join(map(str, columns))})",
            "share": _span([first["magnitude_share"][i] for i in quiet], ".0%") if quiet else ""}


def dimension_note(document: Mapping | None) -> str:
    """Markdown from `telly.studies.beyond.pilot_dimensions`: per pilot (`quiet_layers`), how much of the
    states the largest column holds in the quiet layers above K and in those that moved; with the few
    largest columns left out, how far the layer that stopped the rule still moves, how many quiet ones
    move past the threshold, and the K the rule would then choose; "" without the document."""
    if not document:
        return ""
    lines = []
    for pilot in document["pilots"]:
        threshold, freeze, curve, without = pilot["threshold"], pilot["freeze"], pilot["curve"], pilot["without"]
        read = quiet_layers(pilot)
        quiet, moved = read["quiet"], read["moved"]
        head = f"*{pilot['task']}* (seed {pilot['seed']})"
        if not quiet:
            lines.append(f"{head}: every layer above K = {freeze} moved past the threshold {threshold:g}.")
            continue
        stopper = moved[0] if moved else None  # the layer that kept K from going deeper
        stopper_without = "/".join(f"{w['curve'][stopper]['movement']:.4f}" for w in without) if moved else ""
        line = (f"{head}: above K = {freeze}, {_layer_list(quiet)} stayed under the threshold {threshold:g}"
                + (f" and {_layer_list(moved)} moved ({_span([curve[i]['movement'] for i in moved])})" if moved else "")
                + f". In the quiet layers {read['largest']} of the pre-trained states holds {read['share']} of the "
                "summed squares"
                + (f" (in the moving ones {_span([without[0]['magnitude_share'][i] for i in moved], '.0%')})"
                   if moved else "")
                + f". With the {'/'.join(str(w['count']) for w in without)} largest columns left out of both models, "
                + (f"layer {stopper}, which stopped the rule at {curve[stopper]['movement']:.4f}, moves "
                   f"{stopper_without}, " if moved else "")
                + f"{'/'.join(map(str, read['woken']))} of the {len(quiet)} quiet ones move past the threshold, and the "
                f"rule would choose K = {'/'.join(str(w['freeze']) for w in without)}.")
        line += (" So a few columns hid those layers' movement" if read["hidden"] else
                 " So those layers were quiet without the largest columns too")
        line += (", and they set K: without them the rule freezes deeper." if all(w["freeze"] > freeze for w in without)
                 else ", and K does not depend on them." if all(w["freeze"] == freeze for w in without) else ".")
        lines.append(line)
    after = all(pilot.get("reproduces") for pilot in document["pilots"])
    return ("**Quiet layers, or a few loud columns?** Linear CKA weighs each column of the states by its variance and "
            "cosine RSA by its size, and decoders such as SmolLM2 carry a few columns of huge activations. So "
            "Telly-auto's pilot ran again, each layer's largest columns (by mean square) left out"
            + (" (after the runs, on the pilots of their finished runs, whose training losses it reproduced: a "
               "diagnostic, which changes none of the runs or their K)" if after else "")
            + ". " + " ".join(lines))


def similarity_caveat(document: Mapping | None) -> str:
    """Markdown for chapter 2: where `pilot_dimensions` found a few columns hiding the movement of quiet
    layers in the model's pilots, RQ2's curves of that model (the same measures, the same pooling) may rest
    on them too; "" when it found none, or without the document."""
    hidden = [(pilot, read) for pilot in (document or {}).get("pilots", []) if (read := quiet_layers(pilot))["hidden"]]
    if not hidden:
        return ""
    found = "; ".join(f"on {pilot['task']}, {read['largest']} holds {read['share']} of the summed squares of "
                      f"{_layer_list(read['quiet'])}, and with the largest columns left out up to {max(read['woken'])} "
                      f"of those {len(read['quiet'])} layers moved past the pilot's threshold" for pilot, read in hidden)
    return (f"**A caveat for {document['model']}'s curves.** Chapter 5 measured Telly-auto's pilots on "
            f"{document['model']} again with each layer's largest columns left out (`telly pilot-dimensions`): {found}. "
            "This chapter's measures weigh those columns the same way, so the layers that read as still here, and "
            "the top blocks' share of the drop, may be those columns' as well. That is not tested on these fine-tunes: "
            "it needs their weights again.")
