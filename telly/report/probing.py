"""RQ1 in words, rows and tables: pure functions of probing records (`telly.studies.probing`).

The verdicts come from `telly.analysis.findings` (whether a state beats the random-init backbone and
each surface baseline, whether a probe is informative, where its property lives). `describe_probing` and
`paper_contrast` turn findings into sentences; `layer_rows` and `weight_rows` feed
`telly.report.charts`; `verdict_table` and `paper_comparison` are the tables. Everything is
computed from the record on each call; nothing here trains, loads a model or writes a file.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from telly.analysis import beats, findings, region
from telly.probing.catalog import PROBE_METRICS, PROBES, STATES
from telly.report.paper import (
    PAPER_MODEL,
    PAPER_PROBE_NOTES,
    PAPER_PROBE_REGIONS,
    PAPER_WEIGHTED_PROBES,
)

# The syntactic probe's SBT inputs may be cut for at most this share of functions (issue 13).
SBT_CUT_LIMIT = 0.05


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
                 f", across the {region(low)} and {region(high)} layers: no region is claimed.")
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
                       f"{region(low)} and {region(high)} layers")
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
    not comparable. A model with two records (the study's pilot and its re-sized run) gets a column
    per record, named by its number of functions."""
    models = [record["model"] for record in records]
    labels = [model if models.count(model) == 1 else f"{model} ({record['data']['functions']} functions)"
              for model, record in zip(models, records)]
    rows = []
    for probe in PROBES:
        for state in STATES:
            row = {"probe": probe, "metric": PROBE_METRICS[probe], "state": state,
                   f"paper ({PAPER_MODEL})": PAPER_WEIGHTED_PROBES[probe][state],
                   "paper note": PAPER_PROBE_NOTES.get(probe, "")}
            for label, record in zip(labels, records):
                result = record["probes"][probe]["states"].get(state)
                if result is not None:
                    low, high = result["weighted"]["ci"]
                    row[label] = f"{result['weighted']['score']:.3f} [{low:.3f}, {high:.3f}]"
                    vs_random = result.get("vs_random")
                    row[f"{label} vs random"] = (
                        "" if vs_random is None else _interval(vs_random) + _mark(beats(vs_random)))
            rows.append(row)
    return rows
