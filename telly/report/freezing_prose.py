"""RQ3 in words: the sentences chapter 3 shows, generated from records, their verdicts
(`telly.analysis`) and tables (`telly.report.freezing`); tests flip each with contrary numbers.

A sentence quotes the bench's in-process epoch ratio wherever the bench measured that depth, else the
sweep's separate runs, and says which.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from telly.analysis import ALPHA, is_degenerate, run_name
from telly.metrics import score_function
from telly.report.freezing import bench_epoch_ratios, clone_runs
from telly.stats import paired_bootstrap

# ----------------------------------------------------------------------------- verdicts

def scale_sentence(entry: Mapping) -> str:
    """The scale of a task's verdicts as a clause a reader can weigh them by."""
    scale_ = entry.get("scale") or {}
    sizes = scale_.get("sizes") or {}
    precision = {"bf16": "bf16 autocast training", "no": "float32 training"}.get(scale_.get("precision"),
                                                                                  f"{scale_.get('precision')} training")
    split = ", ".join(f"{sizes[s]:,} {s}" for s in ("train", "valid", "test") if s in sizes)
    return (f"Scale: {split} examples of {scale_.get('source') or 'its data'}; {scale_.get('seeds')} seeds; "
            f"{precision}.")


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
    if check["epoch_ratio"] is None:
        timing = f" Epoch times are {check['timing']}; the bench times the two precisions side by side."
    else:
        timing = (f" Epoch time under bf16 was {check['epoch_ratio']:.2f}x float32's ({check['timing']}; the bench "
                  "times the two side by side).")
    return head + verdict + _did_sentence(check) + timing


def quantisation_text(check: Mapping) -> str:
    """What the quantisation check shows (`telly.analysis.quantisation_shift`), task by task, in
    words that follow its numbers."""
    sentences = []
    for task, entry in check["tasks"].items():
        full = entry["full"]
        head = (f"On {task}, full fine-tuning scores {full['original']['value']:.3f} on MiniLM-L6 and "
                f"{full['round trip']['value']:.3f} on its GGUF round trip ({entry['metric']}).")
        parts = []
        for row in entry["rows"]:
            shift = (f"Telly-{row['freeze']} - full moves by {row['difference']:+.3f} (95% CI {row['low']:+.3f} to "
                     f"{row['high']:+.3f}, {len(row['seeds'])} seeds)")
            parts.append(shift + {"within the margin": f", within the margin of {entry['margin']:g} (both one-sided "
                                                       "tests reject a larger shift)",
                                  "moved": f", beyond the margin of {entry['margin']:g}",
                                  "not shown": f": a shift beyond the margin of {entry['margin']:g} is not ruled "
                                               "out"}[row["verdict"]])
        sentences.append(head + (" " + "; ".join(parts) + "." if parts else ""))
    verdicts = {row["verdict"] for entry in check["tasks"].values() for row in entry["rows"]}
    if verdicts == {"within the margin"}:
        close = ("The format does not move the freezing verdicts on MiniLM-L6 beyond the margin, which is the "
                 "evidence that the study's dequantised SmolLM2 gives the verdicts a float model would.")
    elif "moved" in verdicts:
        close = ("The format moves Telly-K - full beyond the margin on MiniLM-L6: the study's verdicts, made on a "
                 "dequantised Q4_1 model, may not hold for its float original.")
    else:
        close = ("Whether the format moves the freezing verdicts is not settled at these sizes: the study's verdicts "
                 "are about the dequantised Q4_1 model it ran.")
    return " ".join(sentences) + " " + close


def _did_sentence(check: Mapping) -> str:
    """What the precision does to the difference a freezing verdict rests on (Telly-K - full)."""
    did = check.get("difference_of_differences")
    if not did:
        return ""
    moved = (f" {did['run']} - full fine-tuning moved by {did['difference']:+.3f} from float32 to bf16 (95% CI "
             f"{did['low']:+.3f} to {did['high']:+.3f}, margin {check['margin']:g}): ")
    if did["verdict"] == "equivalent":
        return moved + "both one-sided tests put the shift within the margin, so the verdicts do not move with the precision."
    return moved + ("a shift of the verdicts beyond the margin cannot be ruled out "
                    f"(p = {did['p_lower']:.3f} and {did['p_upper']:.3f}).")


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


# ----------------------------------------------------------------------------- generation

def degenerate_findings(records: list[dict]) -> str:
    """Markdown naming the generation runs whose test outputs are degenerate (empty or all alike,
    per `record["test"]["degenerate"]` / `record["generation"]["degenerate"]`) and the best of the
    others, one line per task; "" when `records` hold no generation run."""
    lines = []
    for task in sorted({r["task"] for r in records if r.get("generation")}):
        runs = sorted((r for r in records if r["task"] == task and r.get("generation")),
                      key=lambda r: (r["method"] != "full", r["freeze"], r["seed"]))
        bad = [f"{run_name(r)} seed {r['seed']} ({'; '.join((r['generation'].get('degenerate') or {}).get('reasons', [])) or 'flagged degenerate'})"
               for r in runs if is_degenerate(r)]
        sound = [r for r in runs if not is_degenerate(r)]
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


# ----------------------------------------------------------------------------- how the runs ran

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


# ----------------------------------------------------------------------------- clone detection and caching

CLONE_KINDS = {  # telly.tasks.clone_detection.PAIR_KINDS in words, in the order the prose names them
    "variant": "pair a function with a semantics-preserving variant of itself (clones)",
    "same-edit": "put the same one-edit change on both sides (clones)",
    "different-edits": "put two different one-edit changes of one function on the two sides (not clones)",
    "other-function": "pair a function with a variant of another function (not clones)",
}


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
    runs = clone_runs(table)
    bar = max(b["test_ci"]["f1"]["high"] for b in found.values())
    beaten = runs[runs.low > bar]
    text += f"{len(beaten)} of the {len(runs)} fine-tuned variants score above every baseline's CI"
    return text + (f": {', '.join(beaten.run)}." if len(beaten) else ".")


def cache_check_prose(cached: dict, uncached: dict, *, samples: int = 1000,
                      bench_ratios: Mapping[tuple[int, bool], float] | None = None) -> str:
    """Cached against uncached Telly-K on the same seed: the paired difference in test quality, and
    what caching does to the epoch: in one process from the bench when it measured this depth both
    ways (`bench_epoch_ratios`), else from these two separate runs."""
    metric = cached["metric"]
    diff = paired_bootstrap(uncached["test_per_example"], cached["test_per_example"], score_function(cached["task"]),
                            samples=samples)[metric]
    freeze, bench_ratios = cached["freeze"], dict(bench_ratios or {})
    separate = cached["epoch_seconds"] / uncached["epoch_seconds"]
    if (freeze, True) in bench_ratios and (freeze, False) in bench_ratios:
        epoch = (f"In one process (the bench: code search, interleaved) a cached epoch takes "
                 f"{bench_ratios[(freeze, True)] / bench_ratios[(freeze, False)]:.2f}x an uncached one; these two "
                 f"separate runs took {cached['epoch_seconds']:.1f} s and {uncached['epoch_seconds']:.1f} s ({separate:.2f}x)")
    else:
        epoch = (f"Epoch, over these two separate runs: {cached['epoch_seconds']:.1f} s cached vs "
                 f"{uncached['epoch_seconds']:.1f} s uncached ({separate:.2f}x)")
    return (f"Telly-{freeze} on {cached['task']}: cached {metric} {cached['test'][metric]:.3f}, "
            f"uncached {uncached['test'][metric]:.3f}; cached minus uncached {diff['difference']:+.3f} "
            f"(paired 95% CI {diff['low']:+.3f} to {diff['high']:+.3f}, p = {diff['p_value']:.2f}). "
            f"{epoch}, plus {cached['cache_seconds']:.1f} s once to build the cache.")
