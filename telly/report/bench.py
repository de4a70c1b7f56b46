"""RQ3 cost: the bench record (`telly.studies.bench`) as markdown tables, prose and README text.

Pure functions of a record. They read records written before the redesign too (the shipped
reference): rows are found by their fields (method, freeze, cached), and a row's peak memory is
`peak_tensor_memory_mb`, or `peak_memory_mb` in those older records.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _params(count: int) -> str:
    return f"{count / 1e6:.2f}M"


def _payback(epochs: float | None) -> str:
    if epochs is None:
        return "never"
    return f"{epochs:.2f} (after epoch {max(1, math.ceil(epochs))})"


def _memory_mb(row: Mapping) -> float:
    return row["peak_tensor_memory_mb"] if "peak_tensor_memory_mb" in row else row["peak_memory_mb"]


def _row(rows: Sequence[Mapping], method: str, freeze: int = -1, cached: bool = False) -> Mapping:
    """The training row of one variant, by its fields."""
    for row in rows:
        if row["method"] == method and row["freeze"] == freeze and bool(row["cached"]) == cached:
            return row
    raise ValueError(f"the bench record has no training row with method {method!r}, freeze {freeze}, "
                     f"cached {cached} (it has {[(r['method'], r['freeze'], r['cached']) for r in rows]})")


def _not_applicable(record: Mapping, model: str, method: str) -> str:
    """Why the record holds no `method` row for `model`."""
    return next((s["reason"] for s in record.get("not_applicable", []) if (s["model"], s["method"]) == (model, method)),
                "no row in the record")


def markdown(record: Mapping) -> str:
    """The bench record as markdown tables (what bench.md and the README show)."""
    cpu = f" ({record['cpu']})" if record.get("cpu") and record["device_type"] == "cpu" else ""
    lines = [f"Device: {record['device']}{cpu}" + (f", {record['amp']}" if record.get("amp") else "")
             + f"; profile `{record['profile']}`; {record['timing']}; torch {record['provenance']['versions']['torch']}; "
             f"{record['provenance']['date']}; load average {record['load_average']['start'][0]:.1f} at the start, "
             f"{record['load_average']['end'][0]:.1f} at the end; {record['wall_seconds']:.0f} s wall, "
             f"{record['process_cpu_seconds']:.0f} s CPU.", ""]
    if "training" in record:
        epoch = record["epoch"]
        lines += [f"Training: one epoch = {epoch['steps']} AdamW steps over {epoch['examples']} {epoch['task']} "
                  f"examples (batch {epoch['batch_size']}, code <= {epoch['code_tokens']} tokens, query <= "
                  f"{epoch['query_tokens']} tokens), after 1 untimed warm-up step. Peak memory: "
                  f"{record['memory_method']}.", ""]
        for model in dict.fromkeys(r["model"] for r in record["training"]):
            rows = [r for r in record["training"] if r["model"] == model]
            shape = f", batch {rows[0]['batch_size']} x {rows[0]['code_tokens']} code tokens" if "code_tokens" in rows[0] else ""
            lines += [f"**{model}** (L = {rows[0]['num_layers']}, {_params(rows[0]['total_parameters'])} parameters{shape})", "",
                      "| variant | trainable | epoch s | ratio to full | compute limit (L-K)/L | peak memory MB | memory ratio |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
            for r in rows:
                limit = "-" if r["compute_limit"] is None else f"{r['compute_limit']:.3f}"
                lines.append(f"| {r['label']} | {_params(r['trainable_parameters'])} | {_seconds(r['epoch_seconds'])} | "
                             f"{_ratio(r['ratio_to_full'])} | {limit} | {_memory_mb(r):.0f} | "
                             f"{_ratio(r['peak_memory_ratio'])} |")
            lines.append("")
        lines += ["Frozen-prefix cache: one-time build cost, and the epoch after which it has paid for itself.", "",
                  "| model | K | build s | cached epoch s | uncached epoch s | pays back vs uncached (epochs) | vs full (epochs) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for c in record["cache"]:
            lines.append(f"| {c['model']} | {c['freeze']} | {_seconds(c['cache_seconds'])} | "
                         f"{_seconds(c['cached_epoch_seconds'])} | {_seconds(c['uncached_epoch_seconds'])} | "
                         f"{_payback(c['payback_epochs'])} | {_payback(c['payback_epochs_vs_full'])} |")
        precision = precision_markdown(record)
        lines += ["", *precision] if precision else []
        lines += ["", "Acceptance (issue 8; binding at the UniXcoder shape, other models for reference):", "",
                  "| model | target | value | threshold | result |", "|---|---|---:|---:|---|"]
        for a in record["acceptance"]:
            result = "met" if a["met"] else f"MISSED by {100 * a['missed_by']:.0f}%"
            model = a["model"] if a["binding"] else f"{a['model']} (reference)"
            lines.append(f"| {model} | {a['target']} | {a['value']:.3f} | {a['threshold']:.3f} | {result} |")
        lines.append("")
        for skipped in record.get("not_applicable", []):
            lines += [f"{skipped.get('label', skipped['method'])} on {skipped['model']}: not applicable ({skipped['reason']}).", ""]
        if record.get("skipped_models"):
            lines += ["Not measured: " + "; ".join(f"{model} ({reason})" for model, reason in record["skipped_models"].items())
                      + ".", ""]
    if "runs" in record:
        lines += runs_markdown(record)
    if "probing" in record:
        p = record["probing"]
        lines += [f"Probing features ({p['model']}, {p['texts']} texts x <= {p['max_length']} tokens): all "
                  f"{p['num_layers'] + 1} layers from one pass {_seconds(p['one_pass_seconds'])} s; per-layer "
                  f"truncated forwards {_seconds(p['truncated_seconds'])} s; speedup {p['speedup']:.2f}x "
                  f"(limit (L+1)/2 = {p['speedup_limit']:.1f}x).", ""]
    if "similarity" in record:
        s = record["similarity"]
        lines += [f"Similarity ({s['n']:,} inputs x {s['layers']} layers x d = {s['dim']}): RSA "
                  f"{_seconds(s['rsa_seconds'])} s, linear CKA {_seconds(s['cka_seconds'])} s, debiased CKA "
                  f"{_seconds(s['cka_debiased_seconds'])} s.", ""]
    if "corpus" in record:
        c = record["corpus"]
        lines += [f"Corpus ({c['source']}, {c['functions']:,} functions): cold load {_seconds(c['cold_seconds'])} s, "
                  f"cached {_seconds(c['cached_seconds'])} s ({c['speedup']:.0f}x).", ""]
    return "\n".join(lines)


RUN_PARTS = ("load", "prepare", "cache", "train", "eval", "test", "other")  # (a Telly-auto run adds "pilot")


def runs_markdown(record: Mapping) -> list[str]:
    """The runs section: whole fine-tuning runs, wall time split into its parts, ratios to full."""
    timing = record.get("runs_timing", "interleaved in one process")
    lines = ["Whole fine-tuning runs (load, cache, training, validation, test and writing; the task's "
             f"preparation shared, as a sweep shares it), {timing}:", ""]
    for section in record["runs"]:
        sizes = section["sizes"]
        lines += [f"**{section['task']}** on {section['model']} (L = {section['num_layers']}; profile "
                  f"`{section['profile']}`: {sizes['train']} train, {sizes['valid']} valid, {sizes['test']} test rows)", "",
                  "| variant | epochs | wall s | ratio to full | " + " | ".join(f"{part} s" for part in RUN_PARTS) + " |",
                  "|---|---:|---:|---:|" + "---:|" * len(RUN_PARTS)]
        for row in section["rows"]:
            parts = " | ".join(_seconds(row["split"].get(part)) for part in RUN_PARTS)
            lines.append(f"| {row['variant']} | {row['epochs_run']} | {_seconds(row['wall_seconds'])} | "
                         f"{_ratio(row['ratio_to_full'])} | {parts} |")
        lines.append("")
    lines += ["| task | target | value | result |", "|---|---|---:|---|"]
    for a in record["run_acceptance"]:
        result = "met" if a["met"] else f"MISSED by {100 * a['missed_by']:.0f}%"
        lines.append(f"| {a['task']} | {a['target']} | {a['value']:.3f} | {result} |")
    return [*lines, ""]


PART_NAMES = {"load": "loading", "prepare": "preparation", "pilot": "pilot", "cache": "cache building",
              "train": "training", "eval": "validation", "test": "test pass", "other": "writing"}
WHY_PART = {"test": ("the test pass scores every test row once however deep the freeze (a generation task decodes "
                     "through every layer for every new token)"),
            "eval": "validation runs the blocks above the frozen prefix every epoch",
            "cache": "the prefix cache is built once per run, before the first epoch"}


def runs_findings(record: Mapping) -> str:
    """Markdown: per missed whole-run target, the part of the run that holds most of its time, against
    full fine-tuning's same part; "" when every target was met."""
    sections = {section["task"]: section for section in record["runs"]}
    lines = []
    for check in record["run_acceptance"]:
        if check["met"]:
            continue
        section = sections[check["task"]]
        rows = {row["freeze"]: row for row in section["rows"]}
        freeze, full, row = check["freeze"], rows[-1], rows[check["freeze"]]
        part, seconds = max(row["split"].items(), key=lambda item: item[1])
        share = seconds / sum(row["split"].values())
        against = full["split"].get(part, 0.0)
        sentence = (f"{section['task']}: cached Telly-{freeze}'s run took {row['ratio_to_full']:.2f}x full "
                    f"fine-tuning's wall time (target {check['threshold']}x). Its largest part is the "
                    f"{PART_NAMES.get(part, part)}, {_seconds(seconds)} s ({share:.0%} of the run)")
        if against > 0:
            sentence += f", {seconds / against:.2f}x full fine-tuning's {_seconds(against)} s"
        lines.append(sentence + (f": {WHY_PART[part]}." if part in WHY_PART else "."))
    return "\n\n".join(lines)


def precision_markdown(record: Mapping) -> list[str]:
    """The bf16-autocast-against-float32 table of a bench record (none in records made before it)."""
    precision = record.get("precision")
    if not precision or not precision["rows"]:
        return []
    units = precision["bf16_units"]
    if units is None:
        hardware = ""
    elif units:
        hardware = f" This CPU's bf16 units: {', '.join(units)}."
    else:
        hardware = " This CPU reports no bf16 unit (amx_bf16, avx512_bf16, bf16): autocast may gain nothing on it."
    lines = [f"Mixed precision: `{precision['autocast']}` against float32 on the same weights and batch "
             f"({record['timing']}; each after one untimed call): one full fine-tuning step (AdamW), and one "
             "forward pass of the backbone over the batch's code returning every layer's states. Ratio = bf16 time "
             f"/ float32 time.{hardware}", "",
             "| model | batch | fp32 step s | bf16 step s | step ratio | fp32 forward s | bf16 forward s | forward ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in precision["rows"]:
        lines.append(f"| {r['model']} | {r['batch_size']} x {r['code_tokens']} | {_seconds(r['fp32_step_seconds'])} | "
                     f"{_seconds(r['bf16_step_seconds'])} | {_ratio(r['step_ratio'])} | "
                     f"{_seconds(r['fp32_forward_seconds'])} | {_seconds(r['bf16_forward_seconds'])} | "
                     f"{_ratio(r['forward_ratio'])} |")
    return lines


def precision_sentence(row: Mapping) -> str:
    """What bf16 autocast did to one model's training step and forward pass, and which wins."""
    faster = [name for name, ratio in (("training step", row["step_ratio"]), ("forward pass", row["forward_ratio"]))
              if ratio < 1]
    verdict = ("bf16 autocast is the faster choice for both here" if len(faster) == 2 else
               "float32 is as fast or faster for both here" if not faster else
               f"bf16 autocast is faster only for the {faster[0]} here")
    return (f"Under bf16 autocast a training step of {row['model']} took {row['step_ratio']:.2f}x its float32 time "
            f"and a forward pass {row['forward_ratio']:.2f}x: {verdict}.")


def summary_text(record: Mapping) -> str:
    """A paragraph of prose about the bench record, every number read from it."""
    parts = [f"Measured on {record['device']} ({record['timing']})."]
    for model in dict.fromkeys(r["model"] for r in record.get("training", [])):
        rows = [r for r in record["training"] if r["model"] == model]
        deep = rows[0]["num_layers"] - 2
        full, lora = _row(rows, "full"), _row(rows, "lora")
        bitfit = next((r for r in rows if r["method"] == "bitfit"), None)
        cached, uncached = _row(rows, "telly", deep, cached=True), _row(rows, "telly", deep)
        parts.append(
            f"On {model} one epoch of full fine-tuning took {_seconds(full['epoch_seconds'])} s. "
            f"Telly-{deep} took {uncached['ratio_to_full']:.2f}x of that when the frozen blocks run "
            f"every batch (the paper's way; compute estimate {uncached['paper_estimate']:.2f}x) and "
            f"{cached['ratio_to_full']:.2f}x from the frozen-prefix cache, against a compute limit of "
            f"{cached['compute_limit']:.2f}x; its peak memory was {cached['peak_memory_ratio']:.2f}x full "
            f"fine-tuning's. LoRA took {lora['ratio_to_full']:.2f}x "
            + (f"and BitFit {bitfit['ratio_to_full']:.2f}x of full fine-tuning's epoch time." if bitfit is not None else
               f"of full fine-tuning's epoch time; BitFit was not run ({_not_applicable(record, model, 'bitfit')})."))
        cache = next(c for c in record["cache"] if c["model"] == model and c["freeze"] == deep)
        payback = cache["payback_epochs"]
        parts.append(f"Building that cache cost {_seconds(cache['cache_seconds'])} s once, "
                     + (f"repaid against uncached Telly-{deep} after {payback:.2f} epochs."
                        if payback is not None else f"which never pays back against uncached Telly-{deep}."))
    parts += [precision_sentence(row) for row in record.get("precision", {}).get("rows", [])]
    missed = [a for a in record.get("acceptance", []) if a["binding"] and not a["met"]]
    binding = [a for a in record.get("acceptance", []) if a["binding"]]
    if binding:
        parts.append(f"Of the {len(binding)} acceptance targets at the UniXcoder shape, "
                     + (f"{len(binding) - len(missed)} were met; missed: "
                        + "; ".join(f"{a['target']} ({a['value']:.3f}, {100 * a['missed_by']:.0f}% over)" for a in missed)
                        + "." if missed else "all were met."))
    if "probing" in record:
        p = record["probing"]
        parts.append(f"Extracting all {p['num_layers'] + 1} layers of {p['model']} in one pass was "
                     f"{p['speedup']:.1f}x faster than one truncated forward per layer (the block count "
                     f"alone predicts {p['speedup_limit']:.1f}x).")
    if "similarity" in record:
        s = record["similarity"]
        parts.append(f"RSA over {s['n']:,} inputs and {s['layers']} layers took {_seconds(s['rsa_seconds'])} s; "
                     f"linear CKA {_seconds(s['cka_seconds'])} s.")
    if "corpus" in record:
        c = record["corpus"]
        parts.append(f"Loading the corpus from its cache took {_seconds(c['cached_seconds'])} s against "
                     f"{_seconds(c['cold_seconds'])} s cold.")
    return " ".join(parts)


def origin_note(record: Mapping, out: str | Path) -> str:
    """One sentence for the page: which run produced these numbers and how to measure this machine."""
    when = record["provenance"]["date"][:10]
    if record.get("origin") == "reference":
        return (f"**These are the reference numbers shipped with Telly**, measured by `make bench` on "
                f"{record['device']} ({record.get('cpu') or record['device_type']}) on {when}: this build "
                f"did not run the `{record['profile']}` bench (this one ran {record['wall_seconds'] / 60:.0f} minutes "
                f"there; its profile leaves it out of book builds). `telly bench --profile {record['profile']}` "
                f"writes `{Path(out) / 'bench.json'}` on your machine; the next build shows that instead.")
    how = "ran it for this build" if record.get("origin") == "run" else "was run on this machine before this build"
    return (f"The `{record['profile']}` bench {how} ({record['device']}, {when}); it is read from "
            f"`{Path(out) / 'bench.json'}`.")


def readme_with_table(text: str, record: Mapping, path: str | Path) -> str:
    """`text` (a README) with the record's table between its `<!-- bench:cpu:start -->` ...
    `<!-- bench:cpu:end -->` markers (`gpu` for a CUDA record), appended under a heading when the
    markers are absent. `path` only names the file in the error for a lone marker."""
    kind = "gpu" if record["device_type"] == "cuda" else "cpu"
    start, end = f"<!-- bench:{kind}:start -->", f"<!-- bench:{kind}:end -->"
    block = f"{start}\n{markdown(record)}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        return before + block + rest.split(end, 1)[1]
    if start in text or end in text:
        raise ValueError(f"{path}: has only one of the markers {start} / {end}")
    return text.rstrip("\n") + f"\n\n## Latest {kind.upper()} bench\n\n{block}\n"
