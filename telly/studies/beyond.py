"""Beyond the paper (chapter 5): choose K before training (Telly-auto), and freezing against LoRA and
BitFit on the same clock.

Per task and seed, beside chapter 3's full fine-tuning and Telly-K sweep (same store, profile, data
and seeds, so every method is paired with the same full fine-tunes), three methods:

  telly-auto  a pilot of full fine-tuning, K from each layer's movement, then cached Telly-K
              (`telly.selectors`); its wall time includes the pilot and the cache
  lora        peft LoRA, r = 8, on every attention and MLP projection (scope "attention+mlp")
  bitfit      only the biases (and the task head) train

`beyond_study` runs whatever is missing (`freezing.run_variants`: a killed run is redone, finished
ones are read back) and returns every record of the model's tasks with their non-inferiority summary;
`telly.report.beyond` draws and tabulates them.

Calibrating Telly-auto (`calibrate_auto`, `telly calibrate-auto`), on validation data only: per task,
the deepest swept K whose mean validation score, and every shallower swept depth's, stays within the
margin of full fine-tuning's (`safe_depths`, from the sweep's records); per seed and pilot share, the
pilot's movement curve (`pilot_curves`: the pilot alone, no training after it). A (share, threshold)
pair is safe when the K it chooses never exceeds the task's safe K; of the safe pairs, the one whose
mean K is deepest (the cheapest runs) wins, ties going to the shorter pilot, then the higher threshold.

Checking the measure (`pilot_dimensions`, `telly pilot-dimensions`): a finished run's pilot again (its
recorded training losses reproduced), each layer's movement with its few largest columns left out, to see
whether a handful of huge activations decided which layers read as still.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from telly.backbones import Backbone, load
from telly.jsonio import read_json
from telly.methods import BitFit
from telly.profiles import Profile
from telly.selectors import deepest_still, dominant_dimensions, magnitude_share, movement_without
from telly.store import RunStore, Variant, as_store, provenance
from telly.studies.freezing import parse_freeze, run_variants, summarise
from telly.studies.probing import record_dir
from telly.trainer import pilot_selection, pilot_states

PILOT_SHARES = (0.1, 0.25, 0.5)
DIMENSION_COUNTS = (1, 4, 16)  # how many of each layer's largest columns (by mean square) `pilot_dimensions` leaves out
# The first grid began at 0.005: on MiniLM's laptop pilots (1-3 steps) no pair of it was safe, so it was
# extended down to 0.0005 after that run (validation data only; book/records/minilm-l6/README.md).
THRESHOLDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)

# The methods chapter 5 adds, with the options issue 23 fixes for them.
METHODS: dict[str, dict] = {"telly-auto": {}, "lora": {"scope": "attention+mlp"}, "bitfit": {}}


def variants(tasks: Sequence[str], seeds_of: Mapping[str, Sequence[int]], depths: Sequence[int], *, model: str,
             profile: Profile, methods: Sequence[str] = tuple(METHODS),
             data: Mapping[str, str] | None = None) -> list[Variant]:
    """Per task and seed: full fine-tuning, Telly-K at `depths`, then each of `methods`."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"chapter 5 compares {sorted(METHODS)}; got unknown method(s) {unknown}")
    data = dict(data or {})
    runs = []
    for task in tasks:
        for seed in seeds_of[task]:
            common = {"profile": profile, "seed": seed, "data_path": data.get(task)}
            runs += [Variant.of(task, model, k, **common) for k in depths]
            runs += [Variant.of(task, model, -1, method=m, **common, **METHODS[m]) for m in methods]
    return list(dict.fromkeys(runs))


def sweep_depths(num_layers: int, profile: Profile, freeze: str | None) -> list[int]:
    """Full fine-tuning and the Telly-K depths `freeze` names (default: the profile's sweep_freeze)."""
    return sorted({-1, *parse_freeze(profile.training.sweep_freeze if freeze is None else freeze, num_layers)})


def applicable(backbone: Backbone, methods: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(the `methods` that can run on `backbone`, {method: why not} for the others): BitFit trains bias
    terms, which Llama-style decoders such as SmolLM2 do not have."""
    if "bitfit" in methods and not BitFit.bias_names(backbone.model):
        return ([m for m in methods if m != "bitfit"],
                {"bitfit": f"{backbone.name} has no bias terms, the only backbone parameters BitFit trains"})
    return list(methods), {}


def beyond_study(model: str, profile: Profile, store: RunStore | str | Path, *, tasks: Sequence[str],
                 seeds: Sequence[int] | None = None, freeze: str | None = None, methods: Sequence[str] = tuple(METHODS),
                 data: Mapping[str, str] | None = None, progress: bool = True) -> dict:
    """Chapter 5's runs (the module docstring), then every finished record of `tasks` in the store.
    freeze: the Telly-K depths beside them (default: the profile's sweep_freeze, chapter 3's; -1 is
    always run); a method that cannot run on the model (`applicable`) is left out. Returns {"records",
    "failed", "not_applicable": {method: why}, "summary", "seeds_of"}."""
    store = as_store(store)
    seeds_of = {task: list(profile.seeds_for(task) if seeds is None else seeds) for task in tasks}
    backbone = load(model)
    depths = sweep_depths(backbone.num_layers, profile, freeze)
    methods, not_applicable = applicable(backbone, methods)
    del backbone  # each run loads its own copy: not one more held through the sweep
    result = run_variants(variants(tasks, seeds_of, depths, model=model, profile=profile, methods=methods, data=data),
                          store, progress=progress)
    records = store.records(model=model, profile=profile.name, tasks=list(tasks), data_paths=data)
    return {"records": records, "failed": result["failed"], "not_applicable": not_applicable, "seeds_of": seeds_of,
            "summary": summarise(records, profile)}


def probing_document(model: str, store: RunStore | str | Path) -> dict | None:
    """Chapter 1's probing document of `model` in the store (its peaks feed the probing-based
    selector), or None when chapter 1 has not run there."""
    path = record_dir(as_store(store).root, model) / "probing.json"
    return read_json(path) if path.exists() else None


def safe_depths(records: Sequence[Mapping], profile: Profile) -> dict[str, int]:
    """Per task, the deepest swept cached Telly-K whose mean validation score over seeds, and that of
    every shallower swept depth, is at least full fine-tuning's less the margin (-1: none is)."""
    by_task: dict[str, dict[int, list[float]]] = {}
    for r in records:
        if r["method"] == "full" or (r["method"] == "telly" and r.get("uses_cache")):
            by_task.setdefault(r["task"], {}).setdefault(int(r["freeze"]), []).append(r["valid"][r["metric"]])
    safe = {}
    for task, scores in by_task.items():
        if -1 not in scores:
            raise ValueError(f"{task}: no full fine-tuning record to measure the safe depth against")
        metric = next(r["metric"] for r in records if r["task"] == task)
        floor = float(np.mean(scores[-1])) - profile.margin(metric)
        safe[task] = -1
        for k in sorted(k for k in scores if k >= 0):
            if float(np.mean(scores[k])) < floor:
                break
            safe[task] = k
    return safe


def pilot_curves(task: str, model: str, profile: Profile, store: RunStore | str | Path, *, seeds: Sequence[int],
                 shares: Sequence[float] = PILOT_SHARES, data_path: str | None = None) -> list[dict]:
    """Telly-auto's pilot alone (no training after it) per seed and pilot share: its movement curve,
    steps and seconds."""
    store, curves = as_store(store), []
    for seed in seeds:
        for share in shares:
            variant = Variant.of(task, model, -1, method="telly-auto", pilot_share=share, seed=seed, profile=profile,
                                 data_path=data_path)
            selection = pilot_selection(variant, store)
            curves.append({"task": task, "seed": seed, "pilot_share": share, "curve": selection["curve"],
                           "pilot_steps": selection["pilot_steps"], "pilot_seconds": selection["pilot_seconds"]})
    return curves


def choose_setting(curves: Sequence[Mapping], safe: Mapping[str, int],
                   thresholds: Sequence[float] = THRESHOLDS) -> dict:
    """The grid of (pilot share, threshold): each pair's chosen K per task and seed, whether it is safe,
    and the winner (module docstring); None when no pair is safe."""
    grid = []
    for share in sorted({c["pilot_share"] for c in curves}):
        for threshold in thresholds:
            chosen = [{"task": c["task"], "seed": c["seed"], "freeze": deepest_still(c["curve"], threshold)}
                      for c in curves if c["pilot_share"] == share]
            grid.append({"pilot_share": share, "threshold": threshold, "chosen": chosen,
                         "safe": all(row["freeze"] <= safe[row["task"]] for row in chosen),
                         "mean_freeze": float(np.mean([row["freeze"] for row in chosen]))})
    safe_pairs = [g for g in grid if g["safe"]]
    best = max(safe_pairs, key=lambda g: (g["mean_freeze"], -g["pilot_share"], g["threshold"]), default=None)
    return {"safe_depths": dict(safe), "grid": grid,
            "chosen": None if best is None else {"pilot_share": best["pilot_share"], "threshold": best["threshold"]},
            "rule": ("on validation data only: a (pilot share, threshold) pair is safe when the K it chooses on every "
                     "task and seed is at most the task's safe depth (the deepest swept K whose mean validation score, "
                     "and every shallower swept depth's, is within the margin of full fine-tuning's); of the safe "
                     "pairs the deepest mean K wins, then the shorter pilot, then the higher threshold")}


def calibrate_auto(model: str, profile: Profile, store: RunStore | str | Path, *, tasks: Sequence[str],
                   seeds: Sequence[int] | None = None, freeze: str | None = None,
                   shares: Sequence[float] = PILOT_SHARES, thresholds: Sequence[float] = THRESHOLDS,
                   progress: bool = True) -> dict:
    """Telly-auto's calibration (module docstring): the sweep (full and Telly-K at `freeze`, default the
    profile's sweep_freeze; finished runs read back), each task's safe depth, the pilots, the grid."""
    store = as_store(store)
    seeds = list(profile.training.seeds if seeds is None else seeds)
    depths = sweep_depths(load(model).num_layers, profile, freeze)
    swept = run_variants(variants(tasks, {t: seeds for t in tasks}, depths, model=model, profile=profile, methods=()),
                         store, progress=progress)
    if swept["failed"]:
        raise RuntimeError(f"the calibration's sweep failed: {swept['failed']}")
    curves = [c for task in tasks for c in pilot_curves(task, model, profile, store, seeds=seeds, shares=shares)]
    result = choose_setting(curves, safe_depths(swept["records"], profile), thresholds)
    return {"kind": "telly-auto calibration", "model": model, "profile": profile.name, "tasks": list(tasks),
            "seeds": seeds, "depths": depths, "curves": curves, **result}


def pilot_dimensions(model: str, profile: Profile, store: RunStore | str | Path, *, tasks: Sequence[str],
                     seeds: Sequence[int] = (0,), counts: Sequence[int] = DIMENSION_COUNTS) -> dict:
    """Is a quiet layer of Telly-auto's pilot quiet, or hidden by a few huge columns? Per task and seed,
    the pilot again (`pilot_states`: the same steps as the study's run of that seed, whose recorded
    losses it must reproduce when the store has the run), then, for each count, the curve and K with
    the count largest columns (by mean square) of the pre-trained states left out of both models, and the
    share of the states' summed squares those columns held."""
    if not counts or any(count < 1 for count in counts):
        raise ValueError(f"counts must be columns to leave out, each at least 1; got {list(counts)}")
    store, pilots = as_store(store), []
    for task in tasks:
        for seed in seeds:
            variant = Variant.of(task, model, -1, method="telly-auto", seed=seed, profile=profile)
            selection, before, after, fingerprint = pilot_states(variant, store)
            path = store.record_path(variant)
            recorded = read_json(path)["selection"] if path.exists() else None
            if recorded is not None and (len(recorded["pilot_losses"]) != len(selection["pilot_losses"])
                                         or not np.allclose(recorded["pilot_losses"], selection["pilot_losses"])):
                raise RuntimeError(f"{path}: the pilot again did not reproduce the recorded losses "
                                   f"{recorded['pilot_losses']} (got {selection['pilot_losses']})")
            without = []
            for count in counts:
                dims = dominant_dimensions(before, count)
                curve = movement_without(before, after, dims)
                without.append({"count": count, "dims": dims.tolist(), "magnitude_share": magnitude_share(before, dims),
                                "curve": curve, "freeze": deepest_still(curve, selection["threshold"])})
            pilots.append({"task": task, "seed": seed, "reproduces": None if recorded is None else str(path.name),
                           "data_fingerprint": fingerprint,
                           "pilot_steps": selection["pilot_steps"], "threshold": selection["threshold"],
                           "curve": selection["curve"], "freeze": selection["chosen_freeze"], "without": without})
    return {"kind": "telly-auto pilot dimensions", "model": model, "profile": profile.name, "counts": list(counts),
            "provenance": provenance(model=model, profile=profile.name, corpus_fingerprint=None),
            "rule": "per layer, the columns with the largest mean square over the validation inputs in the pre-trained "
                    "model's pooled states, left out of both models' states before debiased CKA and RSA",
            "pilots": pilots}
