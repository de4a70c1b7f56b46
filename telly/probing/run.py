"""Every property of `PROPERTIES` on one backbone state, the baselines that need no model, and each
probe's record entry: its states compared with the random-init backbone and with the baselines."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from telly.backbones import Backbone
from telly.probing.catalog import STATES
from telly.probing.data import ProbeData, state_features
from telly.probing.properties import PROPERTIES, Baseline, Property, Scored, StateResult, paired
from telly.profiles import Profile
from telly.progress import progress_bar
from telly.stats import bootstrap_ci


def probe_state(backbone: Backbone, data: ProbeData, profile: Profile, *, max_length: int, seed: int = 0,
                locate: bool = True, progress: bool = True, resume: Path | None = None) -> dict[str, StateResult]:
    """{property name: result} for `backbone`, reading each input set the properties need once;
    `locate`: refit the weighted probes for the interval and test of where their weights sit.
    resume: a folder (keyed by everything the results depend on) where each property's result is kept
    as it finishes and read back instead of probed again, so a killed run loses at most one property."""
    needs = {name for prop in PROPERTIES for name in prop.inputs}
    features = state_features(backbone, data, needs, max_length=max_length,
                              batch_size=profile.probing.feature_batch_size,
                              mixed_precision=profile.training.mixed_precision, progress=progress)
    results = {}
    bar = progress_bar(PROPERTIES, desc=f"probes {backbone.name}", unit="property", disable=not progress)
    for prop in bar:
        bar.set_postfix_str(prop.name)
        kept = None if resume is None else resume / f"{prop.name}.pkl"
        if kept is not None and kept.exists():
            results[prop.name] = pickle.loads(kept.read_bytes())  # this run's own cache: trusted
            continue
        results[prop.name] = prop.evaluate(features, data, profile, seed, locate=locate, progress=progress)
        if kept is not None:
            kept.parent.mkdir(parents=True, exist_ok=True)
            partial = kept.with_suffix(".partial")
            partial.write_bytes(pickle.dumps(results[prop.name]))
            partial.replace(kept)  # whole or absent, even when killed while writing
    return results


def baselines(data: ProbeData, profile: Profile, seed: int = 0) -> dict[str, list[Baseline]]:
    """{property name: its baselines} on the same split (no backbone involved)."""
    return {prop.name: prop.baselines(data, profile, seed) for prop in PROPERTIES}


def _on_rows(baseline: Scored, probe: Scored) -> Scored:
    """The baseline's scores on the probe's held-out rows (the lexical probe drops words that its
    backbone cut off), with the probe's sampling units."""
    position = {row: k for k, row in enumerate(baseline.rows.tolist())}
    missing = [row for row in probe.rows.tolist() if row not in position]
    if missing:
        raise ValueError(f"the baseline scored no row {missing[0]}: baselines must score every "
                         "held-out row a probe scores")
    index = np.array([position[row] for row in probe.rows.tolist()], dtype=np.int64)
    return Scored(baseline.per_example[index], probe.rows, probe.clusters)


def probe_entry(prop: Property, states: dict[str, StateResult], references: list[Baseline],
                profile: Profile, seed: int = 0) -> dict:
    """One probe's record: per state its numbers, `vs_random` (state - random-init backbone) and
    `vs_baselines` ({name: probe - baseline}), each a paired bootstrap over the sampled units of
    the weighted probe's held-out scores ({"difference", "low", "high", "p_value"}); and the
    baselines' own scores with CIs on the same rows."""
    scored = next(iter(states.values())).weighted
    for state, result in states.items():
        if not np.array_equal(result.weighted.rows, scored.rows):
            raise ValueError(f"{prop.name}: state {state!r} was scored on other held-out rows")
    aligned = {b.name: _on_rows(b.scores, scored) for b in references}
    entry = {"metric": prop.metric, "control": prop.has_control, "states": {}, "baselines": []}
    for name, scores in aligned.items():
        interval = bootstrap_ci(scores.per_example, clusters=scores.clusters,
                                samples=profile.statistics.bootstrap_samples, seed=seed)["value"]
        entry["baselines"].append({"name": name, "score": interval["value"],
                                   "ci": [interval["low"], interval["high"]]})
    for state in (s for s in STATES if s in states):
        result = dict(states[state].result)
        weighted = states[state].weighted
        if state != "random" and "random" in states:
            result["vs_random"] = paired(states["random"].weighted, weighted, profile, seed)
        result["vs_baselines"] = {name: paired(scores, weighted, profile, seed)
                                  for name, scores in aligned.items()}
        entry["states"][state] = result
    return entry
