"""RQ2 in rows, tables and words: pure functions of similarity documents
(`telly.studies.similarity.run_similarity`).

Rows for the charts (`layer_rows`, `study_rows`, `epoch_rows`), the chapter's tables
(`layer_table`: every layer's similarity with its interval; `movement_table`: per task, which
layers moved and the verdict), the judgement against the paper's "only the top two layers change
much" (`movement`) and the sentences chapter 2 shows (`inputs_prose`, `movement_prose`,
`epoch_prose`). Documents in, rows, frames or text out: nothing here loads a model or writes a file.

The verdict, precisely. A layer's *drop* is 1 - its similarity to the pre-trained model. A layer
*moved* when its bootstrap interval lies below 1 - NEGLIGIBLE_DROP (the interval excludes 1, by
more than rounding); without intervals (the paper's numbers) its value decides. The paper's "top
two layers" of 12 are, in relative depth, the blocks k of L with k / L > 5/6 (the top 5 of 30,
the top block of 6: `telly.similarity.top_blocks`). The claim holds ("agrees") when some layer
moved, the layer that moved most is one of those top blocks, and the top blocks hold at least
TOP_SHARE of the summed drop over all layers, the whole interval of that share at or above it;
it fails ("disagrees") when a lower layer moved most or the share's interval lies below TOP_SHARE;
an interval across TOP_SHARE is "undecided". The paper's own verdict is computed on the 7 layers it
reports (0, 4 and 8-12): the drops of the layers it leaves out are unknown, so its share is an upper
bound of the share over all 12.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from telly.profiles import Profile
from telly.report.paper import PAPER_MODEL, PAPER_NUM_LAYERS, PAPER_RSA
from telly.similarity import MEASURES, top_blocks

TOP_SHARE = 0.5  # "only the top layers change much": they hold at least half of the summed drop
NEGLIGIBLE_DROP = 1e-3  # a drop whose interval does not clear this is not called movement
VERDICTS = ("agrees", "disagrees", "undecided", "no movement")


def _bounds(layer: Mapping, measure: str) -> tuple[float | None, float | None]:
    return layer.get(f"{measure}_low"), layer.get(f"{measure}_high")


def layer_rows(document: dict) -> list[dict]:
    """Flatten a similarity document to one row per (comparison, layer, measure) for tables and
    charts: value with its interval (low, high; None in a document without intervals)."""
    rows = []
    for comparison in document["comparisons"]:
        for layer in comparison["layers"]:
            for measure in MEASURES:
                if measure in layer:
                    low, high = _bounds(layer, measure)
                    rows.append({"task": document.get("task"), "model": document["model"],
                                 "label": comparison["label"], "epoch": comparison["epoch"],
                                 "layer": layer["layer"], "measure": measure, "value": layer[measure],
                                 "low": low, "high": high, "n": layer["n"]})
    return rows


def final_comparison(document: dict) -> dict:
    """The comparison of the best (final) fine-tuned weights: label "best", else the last one."""
    best = [c for c in document["comparisons"] if c["label"] == "best"]
    return best[0] if best else document["comparisons"][-1]


def study_rows(documents: Mapping[str, dict]) -> list[dict]:
    """One row per (task, layer, measure) of the final weights, with depth = layer / L and the
    interval (low, high)."""
    rows = []
    for task, document in documents.items():
        layers = final_comparison(document)["layers"]
        top = len(layers) - 1
        for layer in layers:
            for measure in MEASURES:
                if measure in layer:
                    low, high = _bounds(layer, measure)
                    rows.append({"task": task, "layer": layer["layer"], "depth": layer["layer"] / top,
                                 "measure": measure, "value": layer[measure], "low": low, "high": high,
                                 "source": f"ours ({document['model']})"})
    return rows


def _with_interval(value: float, low: float | None, high: float | None) -> str:
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def layer_table(rows: Sequence[Mapping]) -> pd.DataFrame:
    """`study_rows` as a table: one row per (task, layer), one column per measure, each cell
    "value [low, high]" (the 95% bootstrap interval over the compared functions)."""
    if not rows:
        raise ValueError("layer_table: no rows (did the study compare any checkpoint?)")
    frame = pd.DataFrame(list(rows))
    frame["cell"] = [_with_interval(v, lo, hi) for v, lo, hi in zip(frame["value"], frame["low"], frame["high"])]
    table = frame.pivot(index=["task", "layer"], columns="measure", values="cell")
    return table[[m for m in MEASURES if m in table.columns]].rename_axis(columns=None)


def epoch_rows(document: dict) -> list[dict]:
    """One row per (epoch, layer, measure) of the per-epoch comparisons (best weights left out).

    Epoch 0 is the pre-trained model compared with itself: similarity 1 by definition (rsa(X, X)
    = CKA(X, X) = 1, no interval), drawn so that a single-epoch run still shows a trajectory.
    """
    rows = [row for row in layer_rows(document) if row["epoch"] is not None]
    start = [dict(row, label="pre-trained", epoch=0, value=1.0, low=1.0, high=1.0) for row in rows
             if row["epoch"] == min(r["epoch"] for r in rows)]
    return start + rows


def inputs_prose(study: dict, profile: Profile) -> str:
    """Markdown on what was compared (from the first document's inputs) and which tasks were skipped."""
    inputs = next(iter(study["documents"].values()))["inputs"]
    texts, bootstrap = inputs["texts"], inputs.get("bootstrap")
    what = ("each without its docstring" if texts.get("field") == "code_without_doc"
            else f"as their `{texts.get('field', 'code')}` text")
    interval = (f" Intervals are {bootstrap['confidence']:.0%} percentile intervals over "
                f"{bootstrap['samples']} bootstrap resamples of the functions." if bootstrap else "")
    return (f"Compared on **{texts['n']}** held-out functions ({texts['source']} corpus, {texts['split']} "
            f"split, {what}, at most {texts['max_length']} tokens each), profile `{profile.name}`. "
            f"Pooling: {inputs.get('pooling', 'mean over tokens')}.{interval}"
            + "".join(f"\n\n**Skipped {task}**: {why}" for task, why in study["skipped"].items()))


def movement(similarity: Mapping[int, float], *, num_layers: int | None = None,
             intervals: Mapping[int, tuple[float, float]] | None = None,
             share_interval: tuple[float, float] | None = None) -> dict:
    """How a {layer: similarity} curve moved, judged against the paper's "top two layers" (the
    rule is in the module docstring).

    similarity: every layer's value, or the layers reported (the paper's 7). num_layers: L
    (default: the highest layer given). intervals: {layer: (low, high)}; share_interval: the
    interval of the top blocks' share of the summed drop. Returns num_layers, top_blocks, drops,
    moved (layers), most_moved (layers by drop, as many as there are top blocks), top_share,
    share_interval, verdict (one of VERDICTS) and reason (a phrase saying why).
    """
    if len(similarity) < 3:
        raise ValueError(f"need at least 3 layers to judge where the model moved, got {sorted(similarity)}")
    num_layers = max(similarity) if num_layers is None else num_layers
    blocks = top_blocks(num_layers)
    if num_layers not in similarity:
        raise ValueError(f"the top block {num_layers} has no value; layers given: {sorted(similarity)}")
    drops = {layer: max(1.0 - value, 0.0) for layer, value in similarity.items()}
    ceiling = 1.0 - NEGLIGIBLE_DROP
    moved = sorted(layer for layer, value in similarity.items()
                   if (intervals[layer][1] if intervals is not None else value) < ceiling)
    ranked = sorted(drops, key=lambda layer: (-drops[layer], -layer))
    total = sum(drops.values())
    share = sum(drops[k] for k in blocks if k in drops) / total if total > 0 else None
    verdict = {"num_layers": num_layers, "top_blocks": blocks, "drops": drops, "moved": moved,
               "most_moved": ranked[:len(blocks)], "top_share": share, "share_interval": share_interval}
    low, high = share_interval if share_interval is not None else (share, share)
    if not moved:
        what = "interval" if intervals is not None else "value"
        return verdict | {"verdict": "no movement", "reason": f"no layer's {what} lies below {ceiling}"}
    if ranked[0] not in blocks:
        return verdict | {"verdict": "disagrees", "reason": f"layer {ranked[0]}, below the top blocks, moved most"}
    if low >= TOP_SHARE:
        return verdict | {"verdict": "agrees", "reason": f"the top blocks hold at least {TOP_SHARE:.0%} of the drop"}
    if high < TOP_SHARE:
        return verdict | {"verdict": "disagrees", "reason": f"the top blocks hold less than {TOP_SHARE:.0%} of the drop"}
    return verdict | {"verdict": "undecided", "reason": f"the top blocks' share of the drop may be "
                      f"above or below {TOP_SHARE:.0%}"}


def comparison_movement(document: dict, measure: str = "rsa", comparison: dict | None = None) -> dict:
    """`movement` of one comparison of a document (default: the final weights), with its intervals."""
    chosen = final_comparison(document) if comparison is None else comparison
    layers = chosen["layers"]
    if measure not in layers[0]:
        raise ValueError(f"the document has no {measure!r}; it has {[m for m in MEASURES if m in layers[0]]}")
    values = {r["layer"]: r[measure] for r in layers}
    has_intervals = f"{measure}_low" in layers[0]
    intervals = {r["layer"]: _bounds(r, measure) for r in layers} if has_intervals else None
    share = (chosen.get("top_share") or {}).get(measure)
    return movement(values, num_layers=document.get("num_layers", max(values)), intervals=intervals,
                    share_interval=(share["low"], share["high"]) if share else None)


def paper_movement(task: str) -> dict:
    """`movement` of the paper's RSA for `task`, on the 7 layers it reports (no intervals)."""
    if task not in PAPER_RSA:
        raise ValueError(f"the paper reports no RSA for {task!r}; it has {list(PAPER_RSA)}")
    return movement(PAPER_RSA[task], num_layers=PAPER_NUM_LAYERS)


def layer_ranges(layers: Sequence[int]) -> str:
    """[1, 2, 3, 5] -> "1-3, 5"."""
    runs: list[list[int]] = []
    for layer in sorted(layers):
        if runs and layer == runs[-1][-1] + 1:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return ", ".join(f"{r[0]}" if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def _share_text(share: float | None, low: float | None = None, high: float | None = None) -> str:
    if share is None or pd.isna(share):
        return "-"
    return f"{share:.0%}" + ("" if low is None or pd.isna(low) else f" [{low:.0%}, {high:.0%}]")


def _top_blocks_hold(verdict: dict) -> str:
    """"The top block (4 of 4) holds", "The top 5 blocks (26-30 of 30) hold"."""
    blocks = verdict["top_blocks"]
    what = "The top block" if len(blocks) == 1 else f"The top {len(blocks)} blocks"
    return f"{what} ({layer_ranges(blocks)} of {verdict['num_layers']}) hold{'s' if len(blocks) == 1 else ''}"


VERDICT_WORDS = {"agrees": "agrees with", "disagrees": "does not match",
                 "undecided": "cannot tell (the interval crosses the threshold) whether it matches"}


def movement_rows(documents: Mapping[str, dict], measure: str = "rsa") -> list[dict]:
    """One row per task: which layers moved (interval below 1), the most-moved layer with its
    interval, the top blocks, their share of the drop with its interval, the verdict, and the
    paper's verdict on its 7 reported layers."""
    rows = []
    for task, document in documents.items():
        verdict = comparison_movement(document, measure)
        layer = {r["layer"]: r for r in final_comparison(document)["layers"]}[verdict["most_moved"][0]]
        interval = verdict["share_interval"] or (None, None)
        rows.append({"task": task, "model": document["model"], "measure": measure,
                     "moved": layer_ranges(verdict["moved"]) or "none",
                     "most_moved": verdict["most_moved"][0],
                     "most_moved_value": _with_interval(layer[measure], *_bounds(layer, measure)),
                     "top_blocks": f"{layer_ranges(verdict['top_blocks'])} of {verdict['num_layers']}",
                     "top_share": verdict["top_share"], "top_share_low": interval[0],
                     "top_share_high": interval[1], "verdict": verdict["verdict"],
                     "paper_verdict": paper_movement(task)["verdict"] if task in PAPER_RSA else None})
    return rows


def movement_table(documents: Mapping[str, dict], measure: str = "rsa") -> pd.DataFrame:
    """`movement_rows` as the chapter's table, one row per task."""
    frame = pd.DataFrame(movement_rows(documents, measure)).set_index("task")
    frame["top_share"] = [_share_text(*values) for values in
                          zip(frame["top_share"], frame["top_share_low"], frame["top_share_high"])]
    return frame.drop(columns=["model", "measure", "top_share_low", "top_share_high"])


def movement_prose(documents: Mapping[str, dict], measure: str = "rsa") -> str:
    """Markdown naming, per task, the layers that moved and whether that is the paper's "top two
    layers" (by the rule of the module docstring), then the same test on the paper's numbers."""
    lines, counts = [], dict.fromkeys(VERDICTS, 0)
    for task, document in documents.items():
        verdict = comparison_movement(document, measure)
        counts[verdict["verdict"]] += 1
        if verdict["verdict"] == "no movement":
            lines.append(f"- **{task}**: no layer moved ({measure}: {verdict['reason']}), so this run "
                         f"cannot test the claim.")
            continue
        layers = {r["layer"]: r for r in final_comparison(document)["layers"]}
        most = verdict["most_moved"][0]
        lines.append(
            f"- **{task}**: layers {layer_ranges(verdict['moved'])} moved (interval below 1); layer {most} "
            f"moved most ({measure} {_with_interval(layers[most][measure], *_bounds(layers[most], measure))}). "
            f"{_top_blocks_hold(verdict)} "
            f"{_share_text(verdict['top_share'], *(verdict['share_interval'] or ()))} of the summed drop: {VERDICT_WORDS[verdict['verdict']]} the paper's "
            f"\"top two layers\" ({verdict['reason']}){paper_top_layer(task)}.")
    model = next(iter(documents.values()))["model"]
    judged = len(documents) - counts["no movement"]
    if not judged:
        return "\n".join([f"No layer of {model} moved on any task, so these runs cannot test the "
                          f"paper's \"top two layers\".", "", *lines])
    paper_tasks = [t for t in documents if t in PAPER_RSA]
    paper_agree = sum(paper_movement(t)["verdict"] == "agrees" for t in paper_tasks)
    undecided = f"; on {counts['undecided']} the interval cannot tell" if counts["undecided"] else ""
    summary = (f"By {measure}, {model} agrees with the paper's \"top two layers\" on **{counts['agrees']} of "
               f"{judged}** tasks where it moved and disagrees on {counts['disagrees']}{undecided}. "
               f"By the same test, UniXcoder agrees on {paper_agree} of {len(paper_tasks)} of these tasks, "
               f"judged on the 7 layers the paper reports (0, 4, 8-12): the drops of layers 1-3 and 5-7 "
               f"are unknown, so its shares are upper bounds.")
    return "\n".join([summary, "", *lines])


def paper_top_layer(task: str) -> str:
    """A parenthesis quoting the paper's RSA at its top layer for `task` ("" when it reports none)."""
    if task not in PAPER_RSA:
        return ""
    top = max(PAPER_RSA[task])
    return f"; {PAPER_MODEL} in the paper: RSA {PAPER_RSA[task][top]:.3f} at its top layer, {top}"


def epoch_prose(document: dict, measure: str = "rsa") -> str:
    """Markdown on *when* layers moved: the top block's drop after the first epoch against the last,
    and whether it had moved (interval below 1) after the first."""
    epochs = [c for c in document["comparisons"] if c["epoch"] is not None]
    if not epochs:
        return f"The {document.get('task')} run kept no per-epoch checkpoints."
    first, last = epochs[0], epochs[-1]
    at_first = {r["layer"]: r for r in first["layers"]}
    at_last = {r["layer"]: r for r in last["layers"]}
    top = max(at_last)

    def state(rows: dict, layer: int) -> str:
        return f"{measure} {_with_interval(rows[layer][measure], *_bounds(rows[layer], measure))}"

    if len(epochs) == 1:
        return (f"The {document['task']} run stopped after one epoch, so the per-epoch view shows only "
                f"the pre-trained start and epoch {first['epoch']}, where the top block ({top}) has "
                f"{state(at_last, top)}. A profile with more epochs shows the trajectory.")
    final = comparison_movement(document, measure, last)
    if top not in final["moved"]:
        return (f"By epoch {last['epoch']} the top block ({top}) had not moved ({state(at_last, top)}: "
                f"its interval does not lie below {1 - NEGLIGIBLE_DROP}).")
    early = comparison_movement(document, measure, first)
    share = (1.0 - at_first[top][measure]) / (1.0 - at_last[top][measure])
    pace = "had already moved" if share >= 0.5 else "had moved only"
    first_state = "" if top in early["moved"] else ", its interval not yet clear of 1"
    biggest = final["most_moved"][0]
    return (f"After epoch {first['epoch']} the top block ({top}) {pace} {share:.0%} of the way to its "
            f"{measure} after epoch {last['epoch']} ({state(at_first, top)}{first_state}, against "
            f"{state(at_last, top)}); the layer that moved most by the last epoch is layer {biggest} "
            f"({state(at_last, biggest)}).")
