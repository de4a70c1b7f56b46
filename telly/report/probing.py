"""RQ1 in words, rows and tables: pure functions of probing records (`telly.studies.probing`).

`findings` reads each probe's numbers (peak layer, where the weighted probe looks, saturation,
selectivity); `describe_probing` and `paper_contrast` turn them into sentences; `layer_rows` and
`weight_rows` feed `telly.report.charts`; `weighted_table` and `paper_comparison` are the tables.
Nothing here trains, loads a model or writes a file.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from telly.probing.properties import PROPERTIES
from telly.probing.run import STATES
from telly.report.paper import PAPER_MODEL, PAPER_PROBE_REGIONS, PAPER_WEIGHTED_PROBES

# A probe is "saturated" when the random-init backbone already scores this close to the top.
SATURATION_GAP = 0.02
# Mix weights this close to uniform (normalised entropy) read as "spread over all layers".
SPREAD_ENTROPY = 0.9


def findings(record: dict) -> dict:
    """Per probe, what the numbers say: peak layer, weight peak, saturation, selectivity."""
    out = {}
    num_layers = record["num_layers"]
    for probe, result in record["probes"].items():
        states = result["states"]
        main = states.get("pretrained") or next(iter(states.values()))
        layerwise = np.array(main["layerwise"])
        weights = np.array(main["weighted"]["weights"])
        peak = int(layerwise.argmax())
        entry = {
            "peak_layer": peak,
            "peak_score": float(layerwise[peak]),
            "peak_region": _region(peak, num_layers),
            # The peak stands out when its CI clears the weakest layer's score.
            "peak_distinct": bool(main["layerwise_ci"][peak][0] > layerwise.min()),
            "weight_peak_layer": int(weights.argmax()),
            "weight_centre": float((weights * np.arange(len(weights))).sum()),
            "weighted_score": main["weighted"]["score"],
            "selectivity": main["selectivity"]["weighted"],
        }
        if "random" in states and "pretrained" in states:
            random_score = states["random"]["weighted"]["score"]
            pretrained = states["pretrained"]["weighted"]
            entry["random_score"] = random_score
            # Saturated: a random-init backbone already does (about) as well as the trained one.
            entry["saturated"] = bool(random_score >= pretrained["ci"][0]
                                      or random_score >= pretrained["score"] - SATURATION_GAP)
        out[probe] = entry
    return out


def _region(layer: int, num_layers: int) -> str:
    """Lower / middle / upper third of the L+1 states (0 = embeddings)."""
    third = layer / max(num_layers, 1)
    return "lower" if third < 1 / 3 else "middle" if third <= 2 / 3 else "upper"


def data_description(record: dict) -> str:
    """One paragraph: the backbone, how many functions each probe saw, the corpus, the profile."""
    data = record["data"]
    return (f"**{record['model']}** ({record['num_layers']} layers): {data['train_functions']} "
            f"training and {data['test_functions']} held-out functions from the `{data['corpus']}` "
            f"corpus, at most {data['max_tokens']} tokens each; lexical probe on "
            f"{data['lexical_functions']} of them, syntactic on {data['syntactic_functions']}, "
            f"semantic on {data['semantic_functions']} with {data['variants']} variants. "
            f"Profile `{record['profile']}`.")


def backbones_note(records: Sequence[dict], skipped: Mapping[str, str]) -> str:
    """Which extra backbones were skipped and why, then which were probed."""
    lines = [f"**Skipped {model}**: {reason}\n\n" for model, reason in skipped.items()]
    return "".join(lines) + "Backbones probed: " + ", ".join(f"`{r['model']}`" for r in records)


def describe_probing(record: dict) -> str:
    """A paragraph per probe, generated from the numbers (no hard-coded findings)."""
    lines = []
    model, num_layers = record["model"], record["num_layers"]
    for probe, f in record["findings"].items():
        metric = record["probes"][probe]["metric"]
        text = (f"**{probe}** ({metric}): on {model} the layer-wise probe peaks at layer "
                f"{f['peak_layer']} of {num_layers} ({f['peak_region']} layers, "
                f"{f['peak_score']:.3f}"
                f"{'' if f['peak_distinct'] else '; no layer stands out beyond the 95% CIs'}"
                f"); the weighted probe scores {f['weighted_score']:.3f} and "
                f"puts most weight on layer {f['weight_peak_layer']} (weight centre "
                f"{f['weight_centre']:.1f}); selectivity over the control task is "
                f"{f['selectivity']:+.3f}.")
        if "saturated" in f:
            text += (f" A random-init backbone scores {f['random_score']:.3f}: the probe is "
                     "saturated, so read selectivity rather than the raw score."
                     if f["saturated"] else
                     f" A random-init backbone scores {f['random_score']:.3f}, so pre-training "
                     "adds what the gap shows.")
        baselines = record["probes"][probe].get("baselines", [])
        if baselines:
            text += " Baselines without the model: " + ", ".join(
                f"{b['name']} {b['score']:.3f}" for b in baselines) + "."
            main = record["probes"][probe]["states"].get("pretrained")
            matched = [b for b in baselines if main and b["score"] >= main["weighted"]["ci"][0]]
            if matched:
                name = matched[0]["name"]
                text += (f" {name[:1].upper() + name[1:]} alone reaches the probe's 95% CI: on "
                         "this data the probe shows nothing that baseline does not.")
        lines.append(text)
    return "\n\n".join(lines)


def layer_rows(record: dict) -> list[dict]:
    """Long-form rows (probe, state, layer, score, ci_low, ci_high, control, selectivity) for charts."""
    rows = []
    for probe, result in record["probes"].items():
        for state, r in result["states"].items():
            for layer, score in enumerate(r["layerwise"]):
                rows.append({"model": record["model"], "probe": probe, "metric": result["metric"],
                             "state": state, "layer": layer, "score": score,
                             "ci_low": r["layerwise_ci"][layer][0],
                             "ci_high": r["layerwise_ci"][layer][1],
                             "control": r["control"]["layerwise"][layer],
                             "selectivity": r["selectivity"]["layerwise"][layer]})
    return rows


def weight_rows(record: dict) -> list[dict]:
    """Long-form rows (probe, state, layer, weight) of the weighted probes' softmax weights."""
    return [{"model": record["model"], "probe": probe, "state": state, "layer": layer,
             "weight": weight}
            for probe, result in record["probes"].items()
            for state, r in result["states"].items()
            for layer, weight in enumerate(r["weighted"]["weights"])]


def weighted_table(record: dict) -> list[dict]:
    """One row per probe: weighted score [CI] per state, control and selectivity (pretrained)."""
    rows = []
    for probe, result in record["probes"].items():
        row = {"model": record["model"], "probe": probe, "metric": result["metric"]}
        for state, r in result["states"].items():
            w = r["weighted"]
            row[state] = w["score"]
            row[f"{state}_ci"] = w["ci"]
            row[f"{state}_selectivity"] = r["selectivity"]["weighted"]
        row["baselines"] = {b["name"]: b["score"] for b in result.get("baselines", [])}
        rows.append(row)
    return rows


def weight_spread(weights: Sequence[float]) -> float:
    """Normalised entropy of the mix weights: 1 = uniform over all layers, 0 = one layer."""
    w = np.clip(np.asarray(weights, dtype=float), 1e-12, None)
    return float(-(w * np.log(w)).sum() / np.log(len(w)))


def paper_contrast(record: dict) -> str:
    """Per probe: where the paper found the property and whether this backbone agrees."""
    lines = []
    for probe, f in record["findings"].items():
        paper = PAPER_PROBE_REGIONS[probe]
        state = record["probes"][probe]["states"].get("pretrained")
        spread = weight_spread(state["weighted"]["weights"]) if state else float("nan")
        where = "spread over all layers" if paper == "spread" else f"in the {paper} layers"
        agrees = spread >= SPREAD_ENTROPY if paper == "spread" else f["peak_region"] == paper
        lines.append(f"- **{probe}**: the paper finds it {where}; on {record['model']} the "
                     f"layer-wise peak is at layer {f['peak_layer']} ({f['peak_region']} layers) "
                     f"and the weighted probe's weights have spread {spread:.2f} (normalised "
                     f"entropy, 1 = uniform): this run {'agrees with' if agrees else 'differs from'} "
                     "the paper.")
    return "\n".join(lines)


def paper_comparison(records: Sequence[dict]) -> list[dict]:
    """The paper's weighted-probe scores beside ours: one row per probe and state."""
    rows = []
    for prop in PROPERTIES:
        for state in STATES:
            row = {"probe": prop.name, "metric": prop.metric, "state": state,
                   f"paper ({PAPER_MODEL})": PAPER_WEIGHTED_PROBES[prop.name][state]}
            for record in records:
                result = record["probes"][prop.name]["states"].get(state)
                if result is not None:
                    low, high = result["weighted"]["ci"]
                    row[record["model"]] = (f"{result['weighted']['score']:.3f} "
                                            f"[{low:.3f}, {high:.3f}]")
                    row[f"{record['model']} selectivity"] = round(result["selectivity"]["weighted"], 3)
            rows.append(row)
    return rows
