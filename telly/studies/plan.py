"""The power planner: from pilot records, the seeds and test rows a study needs to decide at its
margin, and the CPU hours they would cost (`telly plan --records DIR`).

Per task, every Telly-K row of the pilot's non-inferiority summary tells two variances: the seeds'
spread of the paired difference, and the test rows' sampling variance (`telly.stats.non_inferiority`).
The planner takes the largest of each over the task's depths (plan for the hardest depth), and for
each number of seeds finds the test rows at which the test shows the margin at the wanted power (or,
with `half_width_share`, at which the 95% interval is that share of the margin wide). Hours: seeds x
the pilot's measured wall seconds of one seed of every variant. Training time does not grow with
test rows; the time to score more test rows is not in it (the pilot's records do not split their wall
time; records made from now on do). Test units are what the test resamples: test rows, or the
functions that group them (clone detection's pairs of one function count as one unit).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from telly import stats
from telly.analysis import non_inferiority_summary
from telly.profiles import Profile

SEED_OPTIONS = (3, 5, 8, 10, 15, 20)


def plan(records: Sequence[dict], profile: Profile, *, power: float = 0.8, half_width_share: float | None = None,
         seed_options: Sequence[int] = SEED_OPTIONS, samples: int | None = None) -> dict:
    """{"power", "half_width_share", "tasks": {task: {metric, margin, pilot, options, choice}}} (see the module)."""
    summary = non_inferiority_summary(records, profile, samples=samples)
    tasks = {}
    for task, entry in summary["tasks"].items():
        rows = [r for r in entry["rows"] if r["method"] == "telly" and len(r["seeds"]) > 1]
        if not rows:
            tasks[task] = {"why_not": "no Telly-K depth ran two or more seeds beside full fine-tuning"}
            continue
        margin = entry["margin"]
        hardest = {"seed_sd": max(r["seed_sd"] for r in rows), "row_se": max(r["row_se"] for r in rows),
                   "units": rows[0]["units"]}
        half_width = None if half_width_share is None else half_width_share * margin
        seconds = _seconds_per_seed(records, task)
        options = [option | {"hours": round(option["seeds"] * seconds / 3600, 2)}
                   for option in stats.sizes_to_show(hardest, margin, seed_options=seed_options, power=power,
                                                     half_width=half_width)]
        feasible = [o for o in options if o["rows"] is not None]
        tasks[task] = {"metric": entry["metric"], "margin": margin, "target_half_width": half_width,
                       "pilot": {"seeds": len(entry["seeds"]), "test_rows": hardest["units"],
                                 "seed_sd": hardest["seed_sd"], "row_se": hardest["row_se"],
                                 "seconds_per_seed": seconds,
                                 "detectable_margin": max(r["detectable_margin"] for r in rows)},
                       "options": options,
                       "choice": min(feasible, key=lambda o: (o["hours"], o["rows"])) if feasible else None}
    return {"profile": profile.name, "power": power, "half_width_share": half_width_share,
            "basis": "the hardest Telly-K depth of each task: its seeds' spread and its test rows' variance",
            "tasks": tasks}


def _seconds_per_seed(records: Sequence[dict], task: str) -> float:
    """Wall seconds of one seed of every variant of `task` the pilot ran (means over its seeds)."""
    variants: dict[tuple, list[float]] = {}
    for record in records:
        if record["task"] == task and record.get("wall_seconds") is not None:
            key = (record["method"], record["freeze"], record.get("uses_cache"))
            variants.setdefault(key, []).append(float(record["wall_seconds"]))
    return float(sum(np.mean(times) for times in variants.values()))


def plan_lines(result: dict) -> list[str]:
    """The plan as a reader scans it: one line per task and option."""
    target = (f"95% interval half-width <= {result['half_width_share']:g} x margin" if result["half_width_share"]
              else f"the margin shown at {result['power']:.0%} power")
    lines = [f"Plan ({result['profile']} profile): seeds and test rows for {target}; {result['basis']}."]
    for task, entry in result["tasks"].items():
        if "why_not" in entry:
            lines.append(f"{task}: no plan ({entry['why_not']})")
            continue
        pilot = entry["pilot"]
        lines.append(f"{task} ({entry['metric']}, margin {entry['margin']:g}): pilot {pilot['seeds']} seeds x "
                     f"{pilot['test_rows']:,} test units could show {pilot['detectable_margin']:.3g}; "
                     f"{pilot['seconds_per_seed'] / 60:.1f} CPU min per seed")
        for option in entry["options"]:
            rows = "no number of test units is enough" if option["rows"] is None else f"{option['rows']:,} test units"
            chosen = "  <- cheapest" if option == entry["choice"] else ""
            lines.append(f"  {option['seeds']:>2} seeds: {rows}; {option['hours']:.2f} CPU h{chosen}")
    return lines
