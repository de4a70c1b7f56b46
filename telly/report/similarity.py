"""RQ2 in rows, tables and words: pure functions of similarity documents
(`telly.studies.similarity.run_similarity`).

Rows for the charts (`layer_rows`, `study_rows`, `epoch_rows`), the chapter's table
(`layer_table`), the judgement against the paper's "only the top two layers change much"
(`movement`) and the sentences chapter 2 shows (`inputs_prose`, `movement_prose`, `epoch_prose`).
Documents in, rows, frames or text out: nothing here loads a model or writes a file.
"""
from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from telly.report.paper import PAPER_MODEL, PAPER_RSA
from telly.similarity import MEASURES

TOP_TWO_SHARE = 0.5  # "only the top two layers change much": they carry most of the total drop
NEGLIGIBLE_DROP = 1e-3  # below this no layer is said to have moved


def layer_rows(document: dict) -> list[dict]:
    """Flatten a similarity document to one row per (comparison, layer, measure) for tables/charts."""
    rows = []
    for comparison in document["comparisons"]:
        for layer in comparison["layers"]:
            for measure in MEASURES:
                if measure in layer:
                    rows.append({"task": document.get("task"), "model": document["model"],
                                 "label": comparison["label"], "epoch": comparison["epoch"],
                                 "layer": layer["layer"], "measure": measure, "value": layer[measure],
                                 "n": layer["n"]})
    return rows


def final_comparison(document: dict) -> dict:
    """The comparison of the best (final) fine-tuned weights: label "best", else the last one."""
    best = [c for c in document["comparisons"] if c["label"] == "best"]
    return best[0] if best else document["comparisons"][-1]


def study_rows(documents: Mapping[str, dict]) -> list[dict]:
    """One row per (task, layer, measure) of the final weights, with depth = layer / L."""
    rows = []
    for task, document in documents.items():
        layers = final_comparison(document)["layers"]
        top = len(layers) - 1
        for layer in layers:
            for measure in MEASURES:
                rows.append({"task": task, "layer": layer["layer"], "depth": layer["layer"] / top,
                             "measure": measure, "value": layer[measure],
                             "source": f"ours ({document['model']})"})
    return rows


def layer_table(rows: list[dict]) -> pd.DataFrame:
    """`study_rows` as a table: one row per (task, layer), one column per measure."""
    return pd.DataFrame(rows).pivot_table(index=["task", "layer"], columns="measure", values="value")


def epoch_rows(document: dict) -> list[dict]:
    """One row per (epoch, layer, measure) of the per-epoch comparisons (best weights left out).

    Epoch 0 is the pre-trained model compared with itself: similarity 1 by definition (rsa(X, X)
    = CKA(X, X) = 1), drawn so that a single-epoch run still shows a trajectory.
    """
    rows = [row for row in layer_rows(document) if row["epoch"] is not None]
    start = [dict(row, label="pre-trained", epoch=0, value=1.0) for row in rows
             if row["epoch"] == min(r["epoch"] for r in rows)]
    return start + rows


def inputs_prose(study: dict, profile: str) -> str:
    """Markdown on what was compared (from the first document's texts) and which tasks were skipped."""
    texts = next(iter(study["documents"].values()))["inputs"]["texts"]
    return (f"Compared on **{texts['n']}** held-out functions ({texts['source']} corpus, {texts['split']} "
            f"split, at most {texts['max_length']} tokens each), profile `{profile}`."
            + "".join(f"\n\n**Skipped {task}**: {why}" for task, why in study["skipped"].items()))


def movement(layers: dict[int, float]) -> dict:
    """How a {layer: similarity} curve says the model moved, judged against "top two layers".

    drop = 1 - similarity. `most_moved`: the two layers with the largest drop; `top_two_share`:
    the top two layers' share of the total drop; `agrees`: the two most-moved layers are the top
    two and carry at least TOP_TWO_SHARE of the drop. None when nothing moved measurably.
    """
    if len(layers) < 3:
        raise ValueError(f"need at least 3 layers to judge the top two, got {sorted(layers)}")
    drops = {layer: 1.0 - value for layer, value in layers.items()}
    top = max(layers)
    ranked = sorted(drops, key=lambda layer: (-drops[layer], -layer))
    total = sum(max(d, 0.0) for d in drops.values())
    moved = drops[ranked[0]] >= NEGLIGIBLE_DROP
    share = (max(drops[top], 0.0) + max(drops[top - 1], 0.0)) / total if moved else None
    return {"num_layers": top, "most_moved": ranked[:2], "drops": drops, "moved": moved,
            "top_two_share": share,
            "agrees": (set(ranked[:2]) == {top, top - 1} and share >= TOP_TWO_SHARE) if moved else None}


def movement_prose(documents: Mapping[str, dict], measure: str = "rsa") -> str:
    """Markdown naming, per task, the layers that moved most and whether that is "top two layers"."""
    lines, agreeing, judged = [], 0, 0
    for task, document in documents.items():
        layers = {r["layer"]: r[measure] for r in final_comparison(document)["layers"]}
        verdict = movement(layers)
        top = verdict["num_layers"]
        if not verdict["moved"]:
            lines.append(f"- **{task}**: no layer moved measurably ({measure} drop below "
                         f"{NEGLIGIBLE_DROP} everywhere), so this run cannot test the claim.")
            continue
        judged += 1
        agreeing += bool(verdict["agrees"])
        named = " and ".join(f"layer {layer} ({measure} {layers[layer]:.3f})"
                             for layer in verdict["most_moved"])
        lines.append(
            f"- **{task}**: {named} moved most; the top two blocks ({top - 1}, {top}) carry "
            f"{verdict['top_two_share']:.0%} of the total drop in {measure} over the {top + 1} "
            f"states: {'agrees with' if verdict['agrees'] else 'does not match'} the paper's "
            f"\"top two layers\"{paper_top_layer(task)}.")
    paper_agree = [t for t in documents if t in PAPER_RSA and movement(PAPER_RSA[t])["agrees"]]
    model = next(iter(documents.values()))["model"]
    if not judged:
        return "\n".join([f"No layer of {model} moved measurably on any task, so these runs cannot "
                          f"test the paper's \"top two layers\".", "", *lines])
    summary = (f"On **{agreeing} of {judged}** tasks where {model} moved measurably, the two layers "
               f"that moved most are its top two and carry at least {TOP_TWO_SHARE:.0%} of the drop. "
               f"By the same test on the paper's reported layers, UniXcoder agrees on "
               f"{len(paper_agree)} of {sum(t in PAPER_RSA for t in documents)} of these tasks.")
    return "\n".join([summary, "", *lines])


def paper_top_layer(task: str) -> str:
    """A parenthesis quoting the paper's RSA at its top layer for `task` ("" when it reports none)."""
    if task not in PAPER_RSA:
        return ""
    top = max(PAPER_RSA[task])
    return f" ({PAPER_MODEL} in the paper: RSA {PAPER_RSA[task][top]:.3f} at its top layer, {top})"


def epoch_prose(document: dict, measure: str = "rsa") -> str:
    """Markdown on *when* layers moved: each layer's drop after the first epoch vs. the last."""
    rows = [c for c in document["comparisons"] if c["epoch"] is not None]
    if len(rows) < 1:
        return f"The {document.get('task')} run kept no per-epoch checkpoints."
    first, last = rows[0], rows[-1]
    drops_first = {r["layer"]: 1.0 - r[measure] for r in first["layers"]}
    drops_last = {r["layer"]: 1.0 - r[measure] for r in last["layers"]}
    top = max(drops_last)
    if len(rows) == 1:
        return (f"The {document['task']} run stopped after one epoch, so the per-epoch view shows only "
                f"the pre-trained start and epoch {first['epoch']}, where the top layer's {measure} is "
                f"{1 - drops_last[top]:.3f}. A profile with more epochs shows the trajectory.")
    if drops_last[top] < NEGLIGIBLE_DROP:
        return f"By epoch {last['epoch']} the top layer had not moved measurably ({measure} drop < {NEGLIGIBLE_DROP})."
    share = drops_first[top] / drops_last[top]
    biggest = max(drops_last, key=drops_last.get)
    return (f"After epoch {first['epoch']} the top layer ({top}) had already moved "
            f"{share:.0%} of the way to its {measure} after epoch {last['epoch']} "
            f"({1 - drops_first[top]:.3f} vs {1 - drops_last[top]:.3f}); the layer that moved most by "
            f"the last epoch is layer {biggest} ({1 - drops_last[biggest]:.3f}).")
