"""RQ1 in words, rows and tables: pure functions of probing records (`telly.studies.probing`).

`findings` reads each probe's numbers into verdicts that only a confidence interval can give:
whether a state beats the random-init backbone and each surface baseline (the lower bound of the
paired difference above 0), whether the probe is informative (it beats both), whether the
layer-wise peak beats its neighbours, and where the weighted probe's layer weights centre (with
whether they moved from uniform further than on shuffled labels). `describe_probing` and
`paper_contrast` turn findings into sentences; `layer_rows` and `weight_rows` feed
`telly.report.charts`; `verdict_table` and `paper_comparison` are the tables. Everything is
computed from the record on each call; nothing here trains, loads a model or writes a file.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from telly.probing.properties import PROPERTIES
from telly.probing.run import STATES
from telly.report.paper import (
    PAPER_MODEL,
    PAPER_PROBE_NOTES,
    PAPER_PROBE_REGIONS,
    PAPER_WEIGHTED_PROBES,
)

# Weights "moved from uniform" when the permutation test against shuffled-label refits gives a
# Holm-adjusted (across the four probes) p <= ALPHA from at least LOCATION_REFITS refits: with 19
# the smallest p is 0.05, which no correction across probes lets pass.
ALPHA = 0.05
LOCATION_REFITS = 99
# The syntactic probe's SBT inputs may be cut for at most this share of functions (issue 13).
SBT_CUT_LIMIT = 0.05


def _beats(difference: Mapping | None) -> bool | None:
    """A verdict from a paired difference: True only when its 95% CI lies above 0."""
    return None if difference is None else bool(difference["low"] > 0)


def _region(depth: float) -> str:
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
    from telly.stats import holm

    probes = list(record["probes"])
    mains = {p: record["probes"][p]["states"][_main_state(record["probes"][p]["states"])] for p in probes}
    adjusted = dict(zip(probes, holm([mains[p]["location"]["p_value"] for p in probes])))
    num_layers = record["num_layers"]
    out = {}
    for probe, main in mains.items():
        location, best = main["location"], main["peak"]["layer"]
        best_low = main["layerwise_ci"][best][0]
        refits = location["refits"] if isinstance(location["refits"], int) else len(location["refits"])
        fits = main["weighted"]["score"] >= best_low
        moved = bool(adjusted[probe] <= ALPHA and refits >= LOCATION_REFITS)
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
                      "region": _region(span[0]) if _region(span[0]) == _region(span[1]) else None,
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
                     "region": _region(peak["layer"] / num_layers), "distinct": peak["distinct"]},
            "location": {**{k: location[k] for k in ("centre", "centre_ci", "relative_depth",
                                                      "relative_depth_ci", "p_value")},
                         "region": _region(location["relative_depth"]),
                         "moved": where[probe]["moved"], "p_holm": where[probe]["p_holm"]},
            "where": where[probe],
            "states": {},
        }
        for state, r in states.items():
            vs_random = r.get("vs_random")
            baselines = {name: {**d, "beats": _beats(d)} for name, d in r["vs_baselines"].items()}
            verdict = {"score": r["weighted"]["score"], "ci": r["weighted"]["ci"],
                       "vs_random": None if vs_random is None else {**vs_random,
                                                                    "beats": _beats(vs_random)},
                       "baselines": baselines}
            if state != "random":
                verdict["informative"] = bool(_beats(vs_random) and all(
                    b["beats"] for b in baselines.values()))
            entry["states"][state] = verdict
        if result.get("control"):
            entry["selectivity"] = main["selectivity"]["weighted"]
            entry["selectivity_ci"] = main["selectivity"]["weighted_ci"]
        out[probe] = entry
    return out


def data_description(record: dict) -> str:
    """One paragraph: the backbone, how many functions each probe saw, the corpus, the cuts."""
    data = record["data"]
    return (f"**{record['model']}** ({record['num_layers']} layers): {data['train_functions']} "
            f"training functions (from the fine-tuning tasks' train split) and "
            f"{data['test_functions']} held-out ones (from their test split) of the "
            f"`{data['corpus']}` corpus, at most {data['max_tokens']} tokens each "
            f"({data['code_cut_share']:.0%} of them are longer and cut); lexical probe on "
            f"{data['lexical_functions']} of them, syntactic on {data['syntactic_functions']} "
            f"(functions whose code fits whole; {sbt_note(record)}), semantic on "
            f"{data['semantic_functions']} with {data['variants']} variants. Profile "
            f"`{record['profile']}`.")


def sbt_note(record: dict) -> str:
    """How many SBT sequences the SBT token budget cut, and whether that stays within the limit."""
    data = record["data"]
    share, budget = data["sbt_cut_share"], data["sbt_max_tokens"]
    text = f"{share:.1%} of their SBT sequences are longer than {budget} tokens and cut"
    if share > SBT_CUT_LIMIT:
        text += (f", more than the {SBT_CUT_LIMIT:.0%} this study allows: raise the profile's "
                 "sbt_max_tokens before reading the syntactic probe")
    return text


def backbones_note(records: Sequence[dict], skipped: Mapping[str, str]) -> str:
    """Which extra backbones were skipped and why, then which were probed."""
    lines = [f"**Skipped {model}**: {reason}\n\n" for model, reason in skipped.items()]
    return "".join(lines) + "Backbones probed: " + ", ".join(f"`{r['model']}`" for r in records)


def _interval(d: Mapping) -> str:
    return f"{d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def _comparison(d: Mapping, other: str) -> str:
    """'beats X (+d [lo, hi])' / 'does worse than X' / 'does not beat X' from the paired CI."""
    if d["low"] > 0:
        return f"beats {other} ({_interval(d)})"
    if d["high"] < 0:
        return f"does worse than {other} ({_interval(d)})"
    return f"does not beat {other}: the paired difference {_interval(d)} includes 0"


def _state_sentence(probe: str, state: str, f: Mapping, model: str, metric: str) -> str:
    low, high = f["ci"]
    text = f"The weighted probe on the {state} {model} scores {f['score']:.3f} [{low:.3f}, {high:.3f}] ({metric})"
    parts = []
    if f["vs_random"] is not None:
        parts.append(_comparison(f["vs_random"], "the random-init backbone"))
    parts += [_comparison(d, name) for name, d in f["baselines"].items()]
    if parts:
        text += "; it " + "; it ".join(parts)
    text += "."
    if "informative" in f:
        if f["informative"]:
            text += (f" The {probe} probe is informative on this state: it beats the random-init "
                     "backbone and every surface baseline.")
        else:
            missed = ([] if f["vs_random"] is not None and f["vs_random"]["beats"]
                      else ["the random-init backbone"])
            missed += [name for name, d in f["baselines"].items() if not d["beats"]]
            text += (f" So it is not shown to be informative on this state: it does not beat "
                     f"{' or '.join(missed)}.")
    return text


def _location_sentence(f: Mapping, num_layers: int) -> str:
    where = f["where"]
    low, high = where["span"]
    if where["basis"] == "weights":
        text = (f"Its layer weights locate it: they centre on layer {f['location']['centre']:.1f} of {num_layers} "
                f"(relative depth {f['location']['relative_depth']:.2f}, refits [{low:.2f}, {high:.2f}]) and moved from "
                f"uniform further than shuffled-label refits (Holm-adjusted p = {where['p_holm']:.2f}).")
    else:
        text = (f"Its layer weights do not locate it: {'; and '.join(where['why_not_weights'])}. By the layer-wise "
                f"probe, the best layer is {where['best_layer']} of {num_layers} and the layers the data cannot "
                f"tell from it span relative depth {low:.2f}-{high:.2f}")
        text += (f", the {where['region']} layers." if where["region"] else
                 f", across the {_region(low)} and {_region(high)} layers: no region is claimed.")
    return text


def _peak_sentence(f: Mapping, num_layers: int) -> str:
    peak = f["peak"]
    if peak["distinct"]:
        return (f"The layer-wise probe peaks at layer {peak['layer']} of {num_layers} "
                f"({peak['region']} layers, {peak['score']:.3f}), above both neighbouring layers "
                "in a paired bootstrap.")
    return (f"The layer-wise probe's best layer, {peak['layer']} ({peak['score']:.3f}), does not "
            "beat its neighbouring layers beyond the paired 95% CI: no layer-wise peak is claimed.")


def describe_probing(record: dict) -> str:
    """A paragraph per probe, generated from the numbers on each call (no hard-coded findings)."""
    lines = []
    model, num_layers = record["model"], record["num_layers"]
    for probe, f in findings(record).items():
        metric = record["probes"][probe]["metric"]
        sentences = [f"**{probe}**."]
        sentences += [_state_sentence(probe, state, s, model, metric)
                      for state, s in f["states"].items() if state != "random"]
        sentences += [_location_sentence(f, num_layers), _peak_sentence(f, num_layers)]
        if "selectivity" in f:
            low, high = f["selectivity_ci"]
            sentences.append(f"Selectivity over the per-word-type control task: "
                             f"{f['selectivity']:+.3f} [{low:+.3f}, {high:+.3f}].")
        if probe == "syntactic":
            sentences.append(f"Its inputs: {sbt_note(record)}.")
        lines.append(" ".join(sentences))
    return "\n\n".join(lines)


def layer_rows(record: dict) -> list[dict]:
    """Long-form rows (probe, state, layer, score, ci_low, ci_high, control) for charts; control
    is None where the probe has no control task."""
    rows = []
    for probe, result in record["probes"].items():
        for state, r in result["states"].items():
            control = r.get("control", {}).get("layerwise")
            for layer, score in enumerate(r["layerwise"]):
                rows.append({"model": record["model"], "probe": probe, "metric": result["metric"],
                             "state": state, "layer": layer, "score": score,
                             "ci_low": r["layerwise_ci"][layer][0],
                             "ci_high": r["layerwise_ci"][layer][1],
                             "control": None if control is None else control[layer]})
    return rows


def weight_rows(record: dict) -> list[dict]:
    """Long-form rows (probe, state, layer, weight) of the weighted probes' softmax weights."""
    return [{"model": record["model"], "probe": probe, "state": state, "layer": layer,
             "weight": weight}
            for probe, result in record["probes"].items()
            for state, r in result["states"].items()
            for layer, weight in enumerate(r["weighted"]["weights"])]


def _mark(beats: bool | None) -> str:
    return "" if beats is None else " ✓" if beats else " ✗"


def verdict_table(record: dict) -> list[dict]:
    """One row per probe and trained state: the weighted score [CI], the paired difference to the
    random-init backbone and to each baseline [CI] (✓ = lower bound above 0), whether the probe
    is informative, and where its weights centre (relative depth [interval], moved or not)."""
    rows = []
    for probe, f in findings(record).items():
        loc = f["location"]
        for state, s in f["states"].items():
            if state == "random":
                continue
            low, high = s["ci"]
            rows.append({
                "model": record["model"], "probe": probe, "metric": record["probes"][probe]["metric"],
                "state": state, "score": f"{s['score']:.3f} [{low:.3f}, {high:.3f}]",
                "vs random": ("" if s["vs_random"] is None
                              else _interval(s["vs_random"]) + _mark(s["vs_random"]["beats"])),
                "vs baselines": "; ".join(f"{name} {_interval(d)}{_mark(d['beats'])}"
                                          for name, d in s["baselines"].items()),
                "informative": "yes" if s["informative"] else "no",
                "weights centre (depth)": (f"{loc['relative_depth']:.2f} (refits {loc['relative_depth_ci'][0]:.2f}"
                                           f"-{loc['relative_depth_ci'][1]:.2f})"
                                           if state == f["main_state"] else ""),
                "weights moved": (f"{'yes' if loc['moved'] else 'no'} (p = {loc['p_value']:.2f}, Holm "
                                  f"{loc['p_holm']:.2f})" if state == f["main_state"] else ""),
                "located by": (f"{f['where']['basis']}: {f['where']['region'] or 'no region'} "
                               f"({f['where']['span'][0]:.2f}-{f['where']['span'][1]:.2f})"
                               if state == f["main_state"] else ""),
            })
    return rows


def baseline_rows(record: dict) -> list[dict]:
    """The surface baselines' own scores [CI], one row per probe and baseline."""
    return [{"model": record["model"], "probe": probe, "metric": result["metric"],
             "baseline": b["name"], "score": f"{b['score']:.3f} [{b['ci'][0]:.3f}, {b['ci'][1]:.3f}]"}
            for probe, result in record["probes"].items() for b in result["baselines"]]


def paper_contrast(record: dict) -> str:
    """Per probe: where the paper found the property and whether this backbone's location (`locations`)
    agrees, differs, or cannot tell. A test that fails to reject is never read as agreement."""
    lines = []
    for probe, f in findings(record).items():
        paper = PAPER_PROBE_REGIONS[probe]
        where = f["where"]
        low, high = where["span"]
        basis = "its weights" if where["basis"] == "weights" else "the layer-wise probe"
        paper_where = "spread over all layers" if paper == "spread" else f"in the {paper} layers"
        if where["region"] is None:
            verdict = (f"cannot tell: by {basis} it spans relative depth {low:.2f}-{high:.2f}, across the "
                       f"{_region(low)} and {_region(high)} layers")
        elif paper == "spread":
            verdict = f"differs from the paper: by {basis} it sits in the {where['region']} layers ({low:.2f}-{high:.2f})"
        else:
            verdict = (f"{'agrees with' if where['region'] == paper else 'differs from'} the paper: by {basis} it "
                       f"sits in the {where['region']} layers (relative depth {low:.2f}-{high:.2f})")
        informative = f["states"][f["main_state"]].get("informative")
        caveat = ("" if informative else
                  " (the probe is not informative on this backbone, so where it looks says little)")
        lines.append(f"- **{probe}**: the paper finds it {paper_where}; {record['model']} {verdict}{caveat}.")
    return "\n".join(lines)


def paper_comparison(records: Sequence[dict]) -> list[dict]:
    """The paper's weighted-probe scores beside ours: one row per probe and state, our score [CI]
    and its paired difference to our random-init backbone; a note where the paper's number is
    not comparable."""
    rows = []
    for prop in PROPERTIES:
        for state in STATES:
            row = {"probe": prop.name, "metric": prop.metric, "state": state,
                   f"paper ({PAPER_MODEL})": PAPER_WEIGHTED_PROBES[prop.name][state],
                   "paper note": PAPER_PROBE_NOTES.get(prop.name, "")}
            for record in records:
                result = record["probes"][prop.name]["states"].get(state)
                if result is not None:
                    low, high = result["weighted"]["ci"]
                    row[record["model"]] = (f"{result['weighted']['score']:.3f} "
                                            f"[{low:.3f}, {high:.3f}]")
                    vs_random = result.get("vs_random")
                    row[f"{record['model']} vs random"] = (
                        "" if vs_random is None else _interval(vs_random) + _mark(_beats(vs_random)))
            rows.append(row)
    return rows
