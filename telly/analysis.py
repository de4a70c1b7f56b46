"""The verdicts, computed once: studies save them and report/ shows them.

RQ1: `findings` reads each probe's numbers into verdicts only a confidence interval can give: whether a
state beats the random-init backbone and each surface baseline (the lower bound of the paired
difference above 0), whether the probe is informative (it beats both), and where its property lives
(`locations`: the weighted probe's layer weights where they fit and moved from uniform further than on
shuffled labels, else the layers the data cannot tell from the best one).

RQ3:
`non_inferiority_summary` (what `telly sweep` writes as summary.json) tests every variant against full
fine-tuning of the same task, paired on the same seeds and test rows, and names per task the largest
freeze depth K for which Telly-K and every shallower depth swept are non-inferior; `precision_check`
tests whether bf16 autocast keeps full fine-tuning's quality. Beside them, what both need to read
records: variants and their seeds, run names, the seeded interval of a metric, whether a run
collapsed. Records in, numbers out: no torch, no files.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from telly import stats
from telly.metrics import score_function
from telly.profiles import Profile

ALPHA = 0.05  # level of each one-sided non-inferiority test, after Holm's correction
MIN_SEEDS = 3  # seeds a "keeps quality" verdict needs (DESIGN.md, "Statistics the book uses")
SWEEP_TIMING = "separate runs"
_ZERO = "__zero__"  # the column of a reference that scores 0 on every resample


# ----------------------------------------------------------------------------- variants and seeds

def freeze_label(k: int) -> str:
    """The paper's name for a freeze depth: -1 is full fine-tuning ("Base"), K >= 0 is Telly-K."""
    return "Base (full)" if k == -1 else f"Telly-{k}"


def variant_key(record: Mapping) -> tuple:
    """What makes runs the same variant apart from their seed. A method that chose its own depth
    (Telly-auto: the record's `selection`) is one variant whatever each seed chose (freeze None)."""
    config = dict(record.get("method_config") or {})
    if record.get("selection"):
        config.pop("freeze", None)  # the resolved Telly-K's config names the seed's own K
    freeze = None if record.get("selection") else int(record["freeze"])
    return (record["task"], record["method"], freeze, bool(record.get("uses_cache", False)),
            json.dumps(config, sort_keys=True))


def by_variant(records: Sequence[Mapping]) -> dict[tuple, dict[int, Mapping]]:
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
        runs = variants.setdefault(variant_key(record), {})
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


def test_columns(record: Mapping) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in record["test_per_example"].items()}


def clusters_of(columns: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The resampling unit when the task's rows come in groups (a function's pairs), else rows."""
    return columns.get("group")


def at_chance(record: Mapping) -> bool:
    """Its training loss ended at the chance level of its loss (`telly.trainer.training_check`)."""
    return bool((record.get("training_check") or {}).get("at_chance"))


def is_degenerate(record: Mapping) -> bool:
    report = (record.get("generation") or {}).get("degenerate") or {}
    return bool(record["test"].get("degenerate")) or bool(report.get("is_degenerate")) or at_chance(record)


def widest_half_width(rows: Sequence[Mapping]) -> float | None:
    """The widest 95% half-width among a summary's comparison rows (their "low" and "high"); None
    without rows."""
    return max(((r["high"] - r["low"]) / 2 for r in rows), default=None)


def quality_interval(task: str, metric: str, runs: Sequence[Mapping], samples: int) -> tuple[float, float, float]:
    """(mean over seeds, low, high) of the test metric. One seed: the run's own bootstrap CI. Several:
    draws that resample the seeds and the test rows together, as the seeded difference to a reference
    that scores zero on every resample."""
    if len(runs) == 1:
        ci = runs[0]["test_ci"][metric]
        return ci["value"], ci["low"], ci["high"]
    score = score_function(task)
    columns = [test_columns(r) for r in runs]
    zero = {_ZERO: np.zeros(len(next(iter(columns[0].values()))))}

    def statistic(rows: dict[str, np.ndarray]) -> dict[str, float]:
        return {metric: 0.0} if _ZERO in rows else score(rows)

    value, draws = stats.seeded_difference_draws([zero] * len(runs), columns, statistic, metric,
                                                 clusters=clusters_of(columns[0]), samples=samples)
    low, high = np.percentile(draws, [2.5, 97.5])
    return value, float(low), float(high)


# ----------------------------------------------------------------------------- the verdict

def _paired(reference: Sequence[Mapping[str, np.ndarray]], variant: Sequence[Mapping[str, np.ndarray]], task: str,
            metric: str, margin: float, clusters, samples: int) -> dict:
    return stats.non_inferiority(reference, variant, score_function(task), metric, margin, clusters=clusters, samples=samples)


def _against_baseline(name: str, value: float, columns: Mapping[str, np.ndarray], full: Sequence[Mapping], task: str,
                      metric: str, clusters, samples: int) -> dict:
    """Full fine-tuning (the mean over its seeds) minus a baseline scored once on the same test rows:
    the difference, its 95% CI over seeds and test rows, and the one-sided p-value of no gain."""
    fulls = [test_columns(r) for r in full]
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


def non_inferiority_summary(records: Sequence[Mapping], profile: Profile, *, trivial: Mapping | None = None,
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
    samples = samples or profile.statistics.bootstrap_samples
    trivial = dict(trivial or {})
    variants = by_variant(records)
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
        clusters = clusters_of(test_columns(full[0]))
        value, low, high = quality_interval(task, metric, full, samples)
        degenerate = [s for s in seeds if full_runs[s]["test"].get("degenerate")]
        collapsed = [s for s in seeds if at_chance(full_runs[s])]
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
            result = _paired([test_columns(full_runs[s]) for s in shared], [test_columns(runs[s]) for s in shared],
                             task, metric, margin, clusters, samples)
            first = runs[shared[0]]
            rows.append({"run": run_name(first), "method": key[1], "freeze": key[2], "uses_cache": key[3],
                         "seeds": shared, "at_chance_seeds": [s for s in shared if at_chance(runs[s])],
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
        rows.sort(key=lambda r: (r["method"] != "telly", not r["uses_cache"], r["method"],
                                 -1 if r["freeze"] is None else r["freeze"]))  # Telly-auto: no K of its own
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
            "margins": dict(profile.statistics.margins), "tasks": tasks}


def machine_of(record: Mapping) -> tuple[str | None, str | None]:
    """(device, CPU) that a record's provenance names: what its times were measured on."""
    provenance = record.get("provenance") or {}
    return provenance.get("device"), provenance.get("cpu")


def machines_apart(runs: Sequence[Mapping]) -> str | None:
    """Why the runs' times cannot be compared as one machine's (their records name no CPU, or more than
    one device or CPU); None when every run names the same device and CPU."""
    machines = {machine_of(r) for r in runs}
    if any(cpu is None for _, cpu in machines):
        return "some of the runs' records do not name their CPU, so they may have run on different machines"
    if len(machines) > 1:
        return "the runs ran on different machines (" + "; ".join(sorted(f"{d}, {c}" for d, c in machines)) + ")"
    return None


def precision_check(float32_runs: Sequence[Mapping], bf16_runs: Sequence[Mapping], profile: Profile, *,
                    samples: int | None = None) -> dict:
    """Does bf16 autocast keep quality, and the freezing verdicts that rest on it? Each variant (full
    fine-tuning, and the Telly-K whose verdict decides the task, when it ran) in float32 and under
    bf16, same seeds and test rows: per variant the paired difference bf16 - float32 (whole groups
    where the rows carry them), its 95% CI and two one-sided tests (TOST) against the profile's
    margin, "equivalent" when both p-values are below ALPHA; and, with a Telly-K, the difference of
    differences (Telly-K - full under bf16) - (Telly-K - full in float32), the quantity the verdicts
    rest on, tested the same way. The top-level figures are full fine-tuning's. Epoch times are the
    runs' own (separate runs; the bench times the two side by side), compared only when every run names
    the same machine (`machines_apart`)."""
    samples = samples or profile.statistics.bootstrap_samples
    variants: dict[tuple, list[dict]] = {}
    for precision, runs in (("no", float32_runs), ("bf16", bf16_runs)):
        for run in runs:
            if (run.get("mixed_precision") or {}).get("training", "no") != precision:
                raise ValueError(f"the precision check's {precision!r} runs were trained otherwise: {run_name(run)}")
            variants.setdefault((run["method"], run["freeze"]), [{}, {}])[precision == "bf16"][run["seed"]] = run
    if ("full", -1) not in variants or len(variants) > 2 or len({r["task"] for r in [*float32_runs, *bf16_runs]}) != 1:
        raise ValueError("the precision check compares full fine-tuning, and at most one Telly-K, of one task in "
                         "two precisions")
    seeds = sorted(set.intersection(*(set(by_seed) for pair in variants.values() for by_seed in pair)))
    if not seeds:
        raise ValueError("the precision check needs the same seeds in float32 and bf16 for every variant, got "
                         + "; ".join(f"{k}: {sorted(a)} and {sorted(b)}" for k, (a, b) in variants.items()))
    paired = {key: [[by_seed[s] for s in seeds] for by_seed in pair] for key, pair in variants.items()}
    first = paired[("full", -1)][0][0]
    task, metric = first["task"], first["metric"]
    margin = profile.margin(metric)
    columns = {key: [[test_columns(r) for r in runs] for runs in pair] for key, pair in paired.items()}
    clusters = clusters_of(columns[("full", -1)][0][0])
    score = score_function(task)

    def variant_check(key) -> dict:
        float32, bf16 = paired[key]
        tested = stats.equivalence(columns[key], (-1, 1), score, metric, margin, clusters=clusters, samples=samples)
        quality = {name: {**dict(zip(("value", "low", "high"), quality_interval(task, metric, runs, samples))),
                          "epoch_seconds": float(np.mean([r["epoch_seconds"] for r in runs]))}
                   for name, runs in (("float32", float32), ("bf16", bf16))}
        return {"run": run_name(float32[0]), "float32": quality["float32"], "bf16": quality["bf16"],
                **{k: tested[k] for k in ("difference", "low", "high", "p_lower", "p_upper", "verdict")},
                "epoch_ratio": quality["bf16"]["epoch_seconds"] / quality["float32"]["epoch_seconds"]}

    checks = [variant_check(key) for key in sorted(paired, key=lambda k: k[1])]
    apart = machines_apart([run for pair in paired.values() for runs in pair for run in runs])
    if apart:  # a ratio of two machines' epoch times measures the machines, not the precision
        checks = [check | {"epoch_ratio": None} for check in checks]
    telly = [key for key in paired if key != ("full", -1)]
    did = None
    if telly:
        (full32, full16), (k32, k16) = columns[("full", -1)], columns[telly[0]]
        tested = stats.equivalence([k16, full16, k32, full32], (1, -1, -1, 1), score, metric, margin,
                                   clusters=clusters, samples=samples)
        did = {"run": run_name(paired[telly[0]][0][0]),
               **{k: tested[k] for k in ("difference", "low", "high", "p_lower", "p_upper", "verdict")},
               "what": "(Telly-K - full under bf16) - (Telly-K - full in float32)"}
    return {"task": task, "metric": metric, "margin": margin, "seeds": seeds, "alpha": ALPHA, **checks[0],
            "variants": checks, "difference_of_differences": did,
            "timing": f"not compared: {apart}" if apart else SWEEP_TIMING,
            "test": "paired differences, seeds and test rows both counted (telly.stats.equivalence); two one-sided "
                    f"tests against +-margin, equivalent when both p < {ALPHA}"}


def quantisation_shift(original: Sequence[Mapping], quantised: Sequence[Mapping], profile: Profile, *,
                       samples: int | None = None) -> dict:
    """Does storing the backbone as a GGUF (Q4_1 matrices, read back) move the freezing verdicts? Per
    task and Telly-K depth run on both models: the difference of differences (Telly-K - full on the
    round-tripped model) - (Telly-K - full on the original), paired on seeds and test rows, with its
    95% CI and two one-sided tests against the margin (`telly.stats.equivalence`): "within the margin"
    when both reject, "moved" when the whole interval lies beyond the margin, else "not shown"; and
    each model's full fine-tuning quality."""
    samples = samples or profile.statistics.bootstrap_samples
    index = [{(r["task"], r["method"], r["freeze"], r["seed"]): r for r in runs} for runs in (original, quantised)]
    tasks = {}
    for task in sorted({key[0] for key in index[0]} & {key[0] for key in index[1]}):
        depths = sorted({key[2] for side in index for key in side if key[0] == task and key[1] == "telly"})
        first = next(r for key, r in index[0].items() if key[0] == task)
        metric, margin = first["metric"], profile.margin(first["metric"])
        rows = []
        for depth in depths:
            seeds = sorted(set.intersection(*({key[3] for key in side if key[:3] == (task, method, k)}
                                              for side in index for method, k in (("full", -1), ("telly", depth)))))
            if not seeds:
                continue
            columns = [[test_columns(side[(task, method, k, s)]) for s in seeds]
                       for side in (index[1], index[0]) for method, k in (("telly", depth), ("full", -1))]
            tested = stats.equivalence(columns, (1, -1, -1, 1), score_function(task), metric, margin,
                                       clusters=clusters_of(columns[0][0]), samples=samples)
            moved = tested["low"] > margin or tested["high"] < -margin
            rows.append({"freeze": depth, "seeds": seeds,
                         **{k: tested[k] for k in ("difference", "low", "high", "p_lower", "p_upper")},
                         "verdict": "within the margin" if tested["verdict"] == "equivalent" else
                         "moved" if moved else "not shown"})
        full = {name: dict(zip(("value", "low", "high"), quality_interval(
                    task, metric, [r for key, r in side.items() if key[:3] == (task, "full", -1)], samples)))
                for name, side in (("original", index[0]), ("round trip", index[1]))}
        tasks[task] = {"metric": metric, "margin": margin, "full": full, "rows": rows}
    return {"tasks": tasks, "what": "(Telly-K - full on the round-tripped model) - (Telly-K - full on the original)",
            "test": "paired over seeds and test rows (telly.stats.equivalence); two one-sided tests against "
                    f"+-margin at {ALPHA}"}


# ----------------------------------------------------------------------------- RQ1: the probes

# Weights "moved from uniform" when the permutation test against shuffled-label refits gives a
# Holm-adjusted (across the four probes) p <= LOCATION_ALPHA from at least LOCATION_REFITS refits: with 19
# the smallest p is 0.05, which no correction across probes lets pass.
LOCATION_ALPHA = 0.05
LOCATION_REFITS = 99

def beats(difference: Mapping | None) -> bool | None:
    """A verdict from a paired difference: True only when its 95% CI lies above 0."""
    return None if difference is None else bool(difference["low"] > 0)


def region(depth: float) -> str:
    """Lower / middle / upper third of the relative depth 0..1 (0 = embeddings, 1 = last block)."""
    return "lower" if depth < 1 / 3 else "middle" if depth <= 2 / 3 else "upper"


def _main_state(states: Mapping) -> str:
    return "pretrained" if "pretrained" in states else next(iter(states))


def locations(record: dict) -> dict[str, dict]:
    """Per probe, where the main (pre-trained) state's property lives, and on what basis:

    - "weights": the weighted mix's softmax weights, only where the mix fits (it scores at least the
      best single layer's lower 95% bound) and moved from uniform further than shuffled-label refits,
      Holm-adjusted across the probes, from at least LOCATION_REFITS refits;
    - else "layer-wise": the layers whose 95% interval (over test functions) reaches the best layer's
      lower bound, i.e. the layers the data cannot tell from the best one.
    A region (lower / middle / upper third) is named only when the located span lies in one third."""
    probes = list(record["probes"])
    mains = {p: record["probes"][p]["states"][_main_state(record["probes"][p]["states"])] for p in probes}
    adjusted = dict(zip(probes, stats.holm([mains[p]["location"]["p_value"] for p in probes])))
    num_layers = record["num_layers"]
    out = {}
    for probe, main in mains.items():
        location, best = main["location"], main["peak"]["layer"]
        best_low = main["layerwise_ci"][best][0]
        refits = location["refits"] if isinstance(location["refits"], int) else len(location["refits"])
        fits = main["weighted"]["score"] >= best_low
        moved = bool(adjusted[probe] <= LOCATION_ALPHA and refits >= LOCATION_REFITS)
        if fits and moved:
            span = tuple(location["relative_depth_ci"])
            basis = "weights"
        else:
            near = [layer for layer, (_, high) in enumerate(main["layerwise_ci"]) if high >= best_low]
            span = (min(near) / num_layers, max(near) / num_layers)
            basis = "layer-wise"
        reasons = []
        if not fits:
            reasons.append(f"the weighted mix ({main['weighted']['score']:.3f}) scores below the best single layer's "
                           f"lower bound ({best_low:.3f}): it is underfit")
        if not moved:
            reasons.append(f"its weights did not move from uniform beyond shuffled-label refits (p = "
                           f"{location['p_value']:.2f}, Holm-adjusted {adjusted[probe]:.2f} over {len(probes)} probes, "
                           f"{refits} refits; a claim needs {LOCATION_REFITS} or more)")
        out[probe] = {"basis": basis, "span": span, "best_layer": best, "best_low": best_low,
                      "mix_score": main["weighted"]["score"], "mix_fits": fits, "moved": moved,
                      "p_value": location["p_value"], "p_holm": adjusted[probe], "refits": refits,
                      "region": region(span[0]) if region(span[0]) == region(span[1]) else None,
                      "why_not_weights": reasons}
    return out


def findings(record: dict) -> dict:
    """Per probe: the main (pre-trained) state's peak and weight location, and per backbone
    state its score, its comparisons with the random-init backbone and with each baseline
    (`beats` only where the paired 95% CI lies above 0) and whether it is informative (beats the
    random backbone and every baseline)."""
    out = {}
    num_layers = record["num_layers"]
    where = locations(record)
    for probe, result in record["probes"].items():
        states = result["states"]
        main = states[_main_state(states)]
        peak, location = main["peak"], main["location"]
        entry = {
            "main_state": _main_state(states),
            "peak": {"layer": peak["layer"], "score": peak["score"],
                     "region": region(peak["layer"] / num_layers), "distinct": peak["distinct"]},
            "location": {**{k: location[k] for k in ("centre", "centre_ci", "relative_depth",
                                                      "relative_depth_ci", "p_value")},
                         "region": region(location["relative_depth"]),
                         "moved": where[probe]["moved"], "p_holm": where[probe]["p_holm"]},
            "where": where[probe],
            "states": {},
        }
        for state, r in states.items():
            vs_random = r.get("vs_random")
            baselines = {name: {**d, "beats": beats(d)} for name, d in r["vs_baselines"].items()}
            verdict = {"score": r["weighted"]["score"], "ci": r["weighted"]["ci"],
                       "vs_random": None if vs_random is None else {**vs_random,
                                                                    "beats": beats(vs_random)},
                       "baselines": baselines}
            if state != "random":
                verdict["informative"] = bool(beats(vs_random) and all(
                    b["beats"] for b in baselines.values()))
            entry["states"][state] = verdict
        if result.get("control"):
            entry["selectivity"] = main["selectivity"]["weighted"]
            entry["selectivity_ci"] = main["selectivity"]["weighted_ci"]
        out[probe] = entry
    return out
