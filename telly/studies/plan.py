"""The power planner: from a pilot's records, the seeds, test rows and depths a study needs to decide
at its margin, what they would cost, and what does not fit (`telly plan --records DIR`).

Variance. Per task, every Telly-K row of the pilot's non-inferiority summary tells two variances:
the seeds' spread of the paired difference, and the test rows' sampling variance
(`telly.stats.non_inferiority`). The planner takes the largest of each over the task's depths (plan
for the hardest depth) and, for each number of seeds (at least `min_seeds`), finds the test units at
which the test shows the margin at the wanted power (or, with `half_width_share`, at which the 95%
interval is that share of the margin wide), never more units than the task's data hold. Test units
are what the test resamples: test rows, or the functions that group them (clone detection's pairs of
one function count as one unit).

Cost. Each pilot record splits into a run's parts (`RunCost`): a fixed part (loading, preparation,
writing), the prefix cache per training example, one epoch per training example, and the scoring of
one validation or test row (decoding it, for a generation task). A planned run costs the same parts at
the planned sizes, with validation as the trainer now does it (the loss each epoch, one forward
pass, about a third of a training step; the metrics once). A depth the pilot did not run is
interpolated between the depths it did (full fine-tuning standing at K = 0). Seconds are the pilot
machine's, unless records of short runs on the machine that will run the study are given
(`machine_records`, `telly plan --machine-records`): then each part is rescaled by how much slower or
faster that machine ran it, in its own precision, than the pilot did at the same depth (`machine_scale`).

Choice. Per task the cheapest feasible number of seeds; a task whose pilot full fine-tuning did not
beat its model-free baseline is not planned (no verdict could follow), with the reason and what a
larger training split would cost. When the tasks' hours exceed the budget, depths are dropped first
(as the study's issue asks: depths before seeds and rows), in `drop_order`, from the task that costs
most at that moment, until they fit or no task has a depth left to drop; then the dearest task is
capped: it gets the option with the narrowest expected interval among those the rest of the budget
pays for, and the plan says that it misses the target and by how much.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from telly import stats
from telly.analysis import non_inferiority_summary, widest_half_width
from telly.profiles import Profile
from telly.tasks import get_task

SEED_OPTIONS = (3, 5, 8, 10, 15, 20)
FORWARD_SHARE = 1 / 3  # a forward pass's share of a training step (forward + backward ~ 3 forwards)


@dataclass(frozen=True)
class RunCost:
    """One run's seconds as the pilot measured them, in parts that scale with the split sizes."""

    fixed: float  # loading, preparation, warm-up, writing: independent of the sizes
    cache_per_train: float  # building the frozen-prefix cache, per training example
    train_per_example: float  # one training epoch, per training example
    epochs: float  # epochs run (early stopping)
    eval_per_row: float  # scoring one validation or test row once (decoding it, for a generation task)

    def scaled(self, scale: Mapping[str, float]) -> RunCost:
        """The same run on another machine: each part times its scale (epochs stay the pilot's)."""
        return replace(self, **{name: getattr(self, name) * factor for name, factor in scale.items()})

    def seconds(self, train: int, valid: int, test: int) -> float:
        """A run at these sizes: validation loss every epoch, validation metrics once, the test once."""
        valid_loss = self.epochs * valid * self.train_per_example * FORWARD_SHARE
        return (self.fixed + self.cache_per_train * train + self.epochs * train * self.train_per_example
                + valid_loss + (valid + test) * self.eval_per_row)


def run_cost(record: Mapping) -> RunCost:
    """A pilot record's parts. Scoring a row: a generation task's test decoding time per row, else the
    validation time of an epoch per row and pass (the pilot scored metrics and loss each epoch)."""
    sizes, epochs = record["data"]["sizes"], record["epochs"]
    decode = (record.get("test") or {}).get("decode_seconds")
    eval_total = sum(e["eval_seconds"] for e in epochs)
    eval_per_row = (decode / sizes["test"] if decode else eval_total / len(epochs) / sizes["valid"] / 2)
    train_total = sum(e["train_seconds"] for e in epochs)
    cache = record.get("cache_seconds") or 0.0
    fixed = record["wall_seconds"] - cache - train_total - eval_total - sizes["test"] * eval_per_row
    return RunCost(fixed=max(fixed, 0.0), cache_per_train=cache / sizes["train"],
                   train_per_example=train_total / len(epochs) / sizes["train"], epochs=float(len(epochs)),
                   eval_per_row=eval_per_row)


def depth_costs(records: Sequence[Mapping], task: str) -> dict[int, RunCost]:
    """Per freeze depth (-1: full fine-tuning) of `task`, the mean of its pilot records' parts."""
    by_depth: dict[int, list[RunCost]] = {}
    for record in records:
        if record["task"] == task and record["method"] in ("full", "telly") and record.get("wall_seconds"):
            by_depth.setdefault(int(record["freeze"]), []).append(run_cost(record))
    return {k: RunCost(**{name: float(np.mean([getattr(c, name) for c in costs])) for name in asdict(costs[0])})
            for k, costs in sorted(by_depth.items())}


SCALED_PARTS = ("fixed", "cache_per_train", "train_per_example", "eval_per_row")


def machine_scale(pilot: Mapping[int, RunCost], here: Mapping[int, RunCost]) -> dict[str, float]:
    """Per part, this machine's seconds over the pilot's, the mean over the depths both ran (a part
    the pilot never spent time on, as full fine-tuning's cache, takes the training part's scale)."""
    common = [k for k in here if k in pilot]
    if not common:
        raise ValueError(f"the machine's records ran depths {sorted(here)}, the pilot's {sorted(pilot)}: "
                         "a scale needs at least one depth in both")
    scale = {}
    for name in SCALED_PARTS:
        ratios = [getattr(here[k], name) / getattr(pilot[k], name) for k in common if getattr(pilot[k], name) > 0]
        scale[name] = float(np.mean(ratios)) if ratios else None
    scale["cache_per_train"] = scale["cache_per_train"] or scale["train_per_example"]
    return {name: round(factor, 3) for name, factor in scale.items() if factor is not None}


def cost_at(costs: Mapping[int, RunCost], freeze: int) -> RunCost:
    """The parts of a run at `freeze`: measured, or interpolated linearly between the nearest measured
    depths (full fine-tuning at K = 0; beyond the deepest, the deepest's)."""
    if freeze in costs:
        return costs[freeze]
    points = sorted((max(k, 0), cost) for k, cost in costs.items())
    positions = [p for p, _ in points]
    names = list(asdict(points[0][1]))
    values = {name: float(np.interp(freeze, positions, [getattr(c, name) for _, c in points])) for name in names}
    return RunCost(**values)


def plan(records: Sequence[dict], profile: Profile, *, power: float = 0.8, half_width_share: float | None = None,
         seed_options: Sequence[int] = SEED_OPTIONS, min_seeds: int = 1, depths: Sequence[int] | None = None,
         available_units: Mapping[str, int] | None = None, baselines: Mapping[str, Mapping] | None = None,
         budget_hours: float | None = None, drop_order: Sequence[int] = (), samples: int | None = None,
         machine_records: Sequence[Mapping] = ()) -> dict:
    """The plan (see the module docstring): {"tasks": {task: entry}, "depths", "dropped_depths",
    "hours", "budget_hours", ...}. An entry has the pilot's figures, an option per number of seeds
    (test units and rows, hours) and the choice with its expected half-width, or `why_not`.

    depths: the depths to run (default: those the pilot ran); available_units: the test units each
    task's data hold; baselines: per task, the pilot summary's "trivial" entry (full fine-tuning
    against the model-free baseline); machine_records: short runs on the machine the study will run on
    (each task's scale from its own; a task without any takes the mean scale of those with)."""
    summary = non_inferiority_summary(records, profile, samples=samples)
    scales = {task: machine_scale(depth_costs(records, task), depth_costs(machine_records, task))
              for task in summary["tasks"] if any(r["task"] == task for r in machine_records)}
    mean_scale = {name: round(float(np.mean([s[name] for s in scales.values() if name in s])), 3)
                  for name in SCALED_PARTS if any(name in s for s in scales.values())} if scales else None
    depths = list(depths) if depths is not None else sorted({int(r["freeze"]) for r in records})
    seeds = [s for s in seed_options if s >= min_seeds]

    def task_plan(task: str, kept: Sequence[int]) -> dict:
        return _task_plan(task, summary["tasks"][task], records, profile, kept, power=power,
                          half_width_share=half_width_share, seeds=seeds,
                          available=(available_units or {}).get(task), baseline=(baselines or {}).get(task),
                          scale=scales.get(task, mean_scale))

    tasks = {task: task_plan(task, depths) for task in summary["tasks"]}
    while budget_hours is not None and _hours(tasks) > budget_hours:
        droppable = [(entry["choice"]["hours"], task) for task, entry in tasks.items()
                     if entry.get("choice") and any(k in entry["depths"] for k in drop_order)]
        if not droppable:
            break
        _, task = max(droppable)
        depth = next(k for k in drop_order if k in tasks[task]["depths"])
        tasks[task] = task_plan(task, [k for k in tasks[task]["depths"] if k != depth])
    if budget_hours is not None and _hours(tasks) > budget_hours:
        _cap(tasks, budget_hours)
    return {"profile": profile.name, "power": power, "half_width_share": half_width_share, "min_seeds": min_seeds,
            "basis": "the hardest Telly-K depth of each task: its seeds' spread and its test rows' variance",
            "cost_basis": ("the pilot's records split into load/preparation, cache, training, validation and test "
                           "seconds, rescaled to the planned sizes; unmeasured depths interpolated"
                           + ("; each part then rescaled to the machine that will run the study, from its own short "
                              "runs (machine_scale)" if scales else "")),
            "machine_scale": scales or None,
            "depths": depths, "drop_order": list(drop_order), "budget_hours": budget_hours,
            "hours": _hours(tasks), "fits": budget_hours is None or _hours(tasks) <= budget_hours, "tasks": tasks}


def _hours(tasks: Mapping[str, Mapping]) -> float:
    return round(sum(entry["choice"]["hours"] for entry in tasks.values() if entry.get("choice")), 2)


def _cap(tasks: dict[str, dict], budget_hours: float) -> None:
    """Cap the dearest tasks, one at a time, to the narrowest interval the rest of the budget pays for."""
    for task in sorted((t for t, e in tasks.items() if e.get("choice")), key=lambda t: -tasks[t]["choice"]["hours"]):
        entry = tasks[task]
        left = budget_hours - (_hours(tasks) - entry["choice"]["hours"])
        affordable = [o for o in (_affordable(entry, n, left) for n in entry["seed_options"]) if o is not None]
        if affordable:
            best = min(affordable, key=lambda o: (o["expected_half_width"], o["hours"]))
            entry["choice"] = best | {"train": entry["choice"]["train"], "valid": entry["choice"]["valid"]}
            need = (f"the target needs {entry['target_hours']:.2f} CPU h" if entry["target_hours"] is not None
                    else "the target is out of reach")
            entry["capped"] = (f"{need}; the {left:.2f} h left of the "
                               f"budget pay for {best['seeds']} seeds x {best['units']:,} test units, expected "
                               f"half-width {best['expected_half_width']:.3g} (target {entry['target_half_width']:.3g})")
        else:
            need = (f"its target alone needs {entry['target_hours']:.2f} CPU h" if entry["target_hours"] is not None
                    else "its target is out of reach")
            entry["why_not"] = (f"the other planned tasks already take the whole budget ({need})" if left <= 0 else
                                f"the {left:.2f} CPU h left of the budget pay for no option of at least "
                                f"{min(entry['seed_options'])} seeds on the pilot's {entry['pilot']['test_units']:,} test units")
            entry["choice"] = None
        if _hours(tasks) <= budget_hours:
            return


def _affordable(entry: Mapping, seeds: int, hours: float) -> dict | None:
    """`seeds` seeds on as many test units as `hours` pay for (at least the pilot's, at most all), or None."""
    cost, pilot = entry["per_seed"], entry["pilot"]
    rows = math.floor((hours * 3600 / seeds - cost["seconds_without_test"]) / cost["seconds_per_test_row"])
    units = min(math.floor(rows / cost["rows_per_unit"]), entry["available_units"] or pilot["test_units"])
    if units < pilot["test_units"]:
        return None
    return _option(entry, seeds, units)


def _option(entry: Mapping, seeds: int, units: int) -> dict:
    """`seeds` seeds on `units` test units: rows, hours and the expected half-width."""
    cost = entry["per_seed"]
    test_rows = math.ceil(units * cost["rows_per_unit"])
    seconds = cost["seconds_without_test"] + test_rows * cost["seconds_per_test_row"]
    return {"seeds": seeds, "units": units, "test_rows": test_rows, "hours": round(seeds * seconds / 3600, 2),
            "expected_half_width": expected_half_width(entry["pilot"], seeds, units)}


def _task_plan(task: str, entry: Mapping, records: Sequence[Mapping], profile: Profile, depths: Sequence[int], *,
               power: float, half_width_share: float | None, seeds: Sequence[int], available: int | None,
               baseline: Mapping | None, scale: Mapping[str, float] | None = None) -> dict:
    rows = [r for r in entry["rows"] if r["method"] == "telly" and len(r["seeds"]) > 1]
    if not rows:
        return {"why_not": "no Telly-K depth ran two or more seeds beside full fine-tuning"}
    margin = entry["margin"]
    hardest = {"seed_sd": max(r["seed_sd"] for r in rows), "row_se": max(r["row_se"] for r in rows),
               "units": rows[0]["units"]}
    sizes = next(r["data"]["sizes"] for r in records if r["task"] == task)
    pilot_rows = sizes["test"]
    rows_per_unit = pilot_rows / hardest["units"]
    costs = {k: cost.scaled(scale) if scale else cost for k, cost in depth_costs(records, task).items()}
    half_width = None if half_width_share is None else half_width_share * margin
    result = {"metric": entry["metric"], "margin": margin, "target_half_width": half_width,
              "pilot": {"seeds": len(entry["seeds"]), "test_units": hardest["units"], "test_rows": pilot_rows,
                        "sizes": sizes, "seed_sd": hardest["seed_sd"], "row_se": hardest["row_se"],
                        "detectable_margin": max(r["detectable_margin"] for r in rows),
                        "half_width": widest_half_width(rows)},
              "available_units": available, "depths": list(depths), "machine_scale": scale,
              "run_seconds": {str(k): round(cost_at(costs, k).seconds(sizes["train"], sizes["valid"], pilot_rows), 1)
                              for k in depths}}

    def hours(seeds: int, train: int, test_rows: int) -> float:
        return round(seeds * sum(cost_at(costs, k).seconds(train, sizes["valid"], test_rows) for k in depths) / 3600, 2)

    if baseline is not None and not baseline.get("low", 0) > 0:
        larger = 4 * sizes["train"]
        result["why_not"] = (f"in the pilot ({sizes['train']} training examples) full fine-tuning did not beat "
                             f"{baseline['name']} ({baseline['value']:.3f}): difference {baseline['difference']:+.3f} "
                             f"[{baseline['low']:+.3f}, {baseline['high']:+.3f}], and no pilot measured a training size "
                             f"that beats it; {min(seeds)} seeds of these depths at {larger} training examples (4x) "
                             f"would cost {hours(min(seeds), larger, pilot_rows):.1f} CPU h without knowing that they "
                             "would, so the plan spends no hours on a task that could get no verdict")
        return result
    without_test = sum(cost_at(costs, k).seconds(sizes["train"], sizes["valid"], 0) for k in depths)
    result["per_seed"] = {"seconds_without_test": without_test, "rows_per_unit": rows_per_unit,
                          "seconds_per_test_row": sum(cost_at(costs, k).eval_per_row for k in depths)}
    result["seed_options"] = list(seeds)
    most = available or hardest["units"]
    options = []
    for option in stats.sizes_to_show(hardest, margin, seed_options=seeds, power=power, half_width=half_width,
                                      max_rows=most):
        # never fewer test units than the pilot had: its variances were estimated there
        units = None if option["rows"] is None else max(option["rows"], hardest["units"])
        options.append(_option(result, option["seeds"], units) if units is not None
                       else {"seeds": option["seeds"], "units": None})
    feasible = [o for o in options if o["units"] is not None]
    result["options"] = options
    splits = {"train": sizes["train"], "valid": sizes["valid"]}
    if feasible:
        result["choice"] = min(feasible, key=lambda o: (o["hours"], o["units"])) | splits
        result["target_hours"] = result["choice"]["hours"]
    else:  # the target is out of reach: the narrowest interval the data allow, said so
        narrowest = _option(result, max(seeds), most)
        result["choice"], result["target_hours"] = narrowest | splits, None
        result["capped"] = (f"no number of seeds up to {max(seeds)} reaches the target with the {most:,} test units "
                            f"the data hold; {narrowest['seeds']} seeds on all of them: expected half-width "
                            f"{narrowest['expected_half_width']:.3g}")
    return result


def expected_half_width(pilot: Mapping, seeds: int, units: int) -> float:
    """The 95% interval half-width a study of `seeds` seeds x `units` test units would have, were its
    variances the pilot's."""
    unit_variance = pilot["row_se"] ** 2 * pilot["test_units"]
    se, df = stats.two_level_error(pilot["seed_sd"] ** 2, seeds, unit_variance / units, units)
    return stats.interval_half_width(se, df)


def available_units(task: str, profile: Profile) -> int:
    """The test units the task's whole test split holds (rows, or the groups that tie rows together)."""
    sizes = (None, None, None)
    data = get_task(task).load_data(profile.changed(task_sizes=((task, 1, *sizes),)))
    groups = [getattr(e, "group", None) for e in data.test]
    return len(set(groups)) if all(g is not None for g in groups) else len(data.test)


def task_sizes(result: Mapping) -> tuple[tuple[str, int, int, int, int], ...]:
    """The plan's choices as a profile's task_sizes: (task, seeds, train, valid, test rows)."""
    return tuple((task, entry["choice"]["seeds"], entry["choice"]["train"], entry["choice"]["valid"],
                  entry["choice"]["test_rows"]) for task, entry in result["tasks"].items() if entry.get("choice")
                 and not entry.get("why_not"))


def plan_lines(result: dict) -> list[str]:
    """The plan as a reader scans it: one line per task and option."""
    target = (f"95% interval half-width <= {result['half_width_share']:g} x margin" if result["half_width_share"]
              else f"the margin shown at {result['power']:.0%} power")
    lines = [f"Plan ({result['profile']} profile): seeds and test rows for {target}, at least "
             f"{result['min_seeds']} seeds; {result['basis']}. Depths {result['depths']}"
             + f"; {result['hours']:.2f} CPU h" + (f" of a {result['budget_hours']:g} h budget" if result["budget_hours"] else "")
             + "."]
    for task, entry in result["tasks"].items():
        if "pilot" not in entry:
            lines.append(f"{task}: no plan ({entry['why_not']})")
            continue
        pilot = entry["pilot"]
        lines.append(f"{task} ({entry['metric']}, margin {entry['margin']:g}): pilot {pilot['seeds']} seeds x "
                     f"{pilot['test_units']:,} test units, half-width {pilot['half_width']:.3g}, could show "
                     f"{pilot['detectable_margin']:.3g}")
        if entry.get("why_not"):
            lines.append(f"  no plan: {entry['why_not']}")
            continue
        dropped = [k for k in result["depths"] if k not in entry["depths"]]
        if dropped:
            lines.append(f"  depths dropped to fit the budget: {dropped}")
        if entry.get("capped"):
            choice = entry["choice"]
            lines.append(f"  capped: {entry['capped']}; {choice['hours']:.2f} CPU h")
        for option in entry["options"]:
            if option["units"] is None:
                lines.append(f"  {option['seeds']:>2} seeds: not enough test units")
                continue
            chosen = "  <- cheapest" if option["seeds"] == entry["choice"]["seeds"] and not entry.get("capped") else ""
            lines.append(f"  {option['seeds']:>2} seeds: {option['units']:,} test units ({option['test_rows']:,} rows), "
                         f"half-width {option['expected_half_width']:.3g}; {option['hours']:.2f} CPU h{chosen}")
    return lines
