"""What a chapter says about the code-model study's records (`telly.studies.records.StudyRecords`):
which parts it shows, where they were measured, and which block of a page is the study's and which
the build's own live run. Pure functions of the records."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from telly import stats
from telly.analysis import widest_half_width
from telly.layout import BENCH_DIR, CHECKS, EXTENSIONS, QUESTIONS
from telly.profiles import Profile
from telly.report.charts import ProvenanceBox, provenance_box
from telly.report.freezing import sweep_view as freezing_sweep_view
from telly.report.freezing_prose import precision_text, scale_sentence
from telly.report.similarity import movement_rows

# What each registered backbone is, in the words a page uses wherever it says "pre-trained".
DESCRIPTIONS = {
    "minilm-l6": "all-MiniLM-L6-v2, a 6-layer sentence encoder pre-trained on text, not code",
    "smollm2-135m": ("SmolLM2-135M-Instruct, quantised to 4 bits (Q4_1) and dequantised: a 30-layer decoder whose "
                     "pre-training mix includes code (The Stack)"),
    "unixcoder-base": "UniXcoder-base, a 12-layer encoder pre-trained on code (the paper's backbone)",
}

QUESTION_NAMES = {"rq1": "probing", "rq2": "layer similarity", "rq3": "freezing", "precision": "precision check",
                  "quantisation": "quantisation check"}


def study_heading(study) -> str:
    """The heading of a study's block on a page, naming its folder (the pilot and the re-sized study share
    a model and a profile)."""
    return f"{study.model}: the code-model study's records in `{study.root}` (profile `{study.profile}`)"


def live_heading(model: str, profile: Profile) -> str:
    """The heading of the build's own live run on a page."""
    return f"{model}: this build's live run (profile `{profile.name}`)"


def shown(studies: Sequence[tuple[Any, Any]], live_part: Any, *, model: str, profile: Profile) -> dict[str, Any]:
    """heading -> what to show: each (study, its part) in the order given (the pilot, then the re-sized
    study), then the live run, each only when it holds something (a record list, a document dict, ...):
    the order in which every section of a chapter shows its sources."""
    blocks = {study_heading(study): part for study, part in studies if study.ledger is not None and part}
    if live_part:
        blocks[live_heading(model, profile)] = live_part
    return blocks


def study_status(study, question: str) -> str:
    """Markdown: which of the study's parts of `question` this page shows, and which are not there yet."""
    where = f"`{study.root}`"
    if study.ledger is None:
        return (f"No study records in {where}: this page shows only the live run below. `make study` "
                f"writes them (hours on a CPU; it resumes where it stopped).")
    finished, unfinished = study.finished(question), study.unfinished(question)
    what = QUESTION_NAMES[question]
    if not finished and not unfinished:  # a ledger written before this part existed
        return (f"The code-model study of **{study.model}** in {where} has no {what} part yet: `make study` "
                f"runs it after the parts already there, and this page shows it once its records exist.")
    text = (f"The {what} part of the code-model study of **{study.model}** ({len(finished)} of "
            f"{len(finished) + len(unfinished)} parts finished), read from {where}: recorded by `make study`, "
            f"not rerun by this build.")
    if unfinished:
        # "running" is what the ledger last said: the session may have stopped since.
        said = {"running": "started, not finished"}
        text += (" Not there yet: " + ", ".join(f"{part} ({said.get(status, status)})" for part, status in unfinished.items())
                 + "; `make study` resumes them, and this page shows them once their records exist.")
    return text


def scale_rows(records: Sequence[Mapping]) -> list[tuple[str, str]]:
    """The scale of fine-tuning records: each task's split sizes and data, and the training precision."""
    splits, precisions = {}, set()
    for record in records:
        data = record.get("data") or {}
        if "task" in record and data.get("sizes"):
            sizes = data["sizes"]
            splits[record["task"]] = (f"{sizes.get('train', 0):,} train, {sizes.get('valid', 0):,} valid, "
                                      f"{sizes.get('test', 0):,} test ({data.get('source', 'its data')})")
        if isinstance(record.get("mixed_precision"), Mapping):  # fine-tuning records name their training precision
            precisions.add(record["mixed_precision"].get("training", "no"))
    rows = [("splits", "; ".join(f"{task}: {text}" for task, text in sorted(splits.items())))] if splits else []
    if precisions:
        rows.append(("training precision", ", ".join(sorted("bf16 autocast" if p == "bf16" else "float32"
                                                            for p in precisions))))
    return rows


def study_box(study, question: str, records: Sequence[Mapping]) -> ProvenanceBox | None:
    """Where the shown parts of `question` were measured: machine, date, profile, commit, measured
    wall time (from study.json), then the records' own provenance. None when none is finished."""
    finished = study.finished(question)
    if study.ledger is None or not finished or not records:
        return None
    entries = [study.ledger["parts"][part] for part in finished]
    dates = sorted(e["date"] for e in entries if e.get("date"))
    commits = list(dict.fromkeys(
        (e["commit"] or "unknown")[:12] + (" (with uncommitted changes)" if e.get("dirty") else "")
        for e in entries if "commit" in e))
    seconds = sum(e.get("wall_seconds") or 0.0 for e in entries)
    when = "unknown" if not dates else dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    rows = [("study", f"`make study` records in {study.root}"),
            ("backbone", DESCRIPTIONS.get(study.model, study.model)), ("parts", ", ".join(finished)),
            ("machine", "; ".join(dict.fromkeys(e["machine"] for e in entries if e.get("machine"))) or "unknown"),
            ("finished", when), ("commit", ", ".join(commits) or "unknown"),
            ("measured wall time", duration(seconds) if seconds else "not measured"),
            ("profile", study.profile)]
    rows += scale_rows(records)
    own = provenance_box(list(records)).rows
    rows += [(label, value) for label, value in own if label not in {"profile"}]
    return ProvenanceBox(rows, f"Provenance of the study's records: {study.model}, {QUESTION_NAMES[question]}")


def headed(studies: Sequence[tuple[Any, Sequence[Mapping]]], live_records: Sequence[Mapping], *,
           profile: Profile) -> list[tuple[str, Mapping]]:
    """(heading, record) pairs: each (study, its records) in the order given, then the live run's
    (each under its model)."""
    return [(study_heading(study), r) for study, records in studies for r in records] + \
        [(live_heading(r["model"], profile), r) for r in live_records]


def sweep_view(study) -> dict | None:
    """The study's RQ3 runs as chapter 3 shows a sweep (`telly.report.freezing.sweep_view`), or None."""
    if not study.runs or study.summary is None:
        return None
    swept = {r["task"] for r in study.runs}  # summary.json also holds chapter 5's tasks without a sweep
    summary = {**study.summary, "tasks": {t: e for t, e in study.summary["tasks"].items() if t in swept}}
    return freezing_sweep_view(study.runs, summary, kind=study.runs[0]["provenance"]["backbone"]["kind"])


def bench_origin(study) -> str:
    """Markdown: where the study's bench record comes from (chapter 4 shows it first)."""
    where = f"`{study.root / BENCH_DIR / 'bench.json'}`"
    bench = study.bench
    if bench is None:
        return (f"No bench of the study's model in {where}: `telly bench --model <model> --profile study "
                f"--sections training --out {study.root / BENCH_DIR}` writes it (on an idle machine).")
    return (f"Measured once by `telly bench --model {study.model or 'the study model'} --profile {bench['profile']} "
            f"--sections {','.join(bench['sections'])}` on {bench['device']} ({bench.get('cpu') or bench['device_type']}) "
            f"on {bench['provenance']['date'][:10]}, {duration(bench['wall_seconds'])} of benching; read from {where}, "
            f"not rerun by this build.")


def precision_note(study) -> str:
    """Markdown: whether bf16 autocast kept fine-tuning quality in the study (its precision check),
    or which state the check is in."""
    if study.precision is None:
        return study_status(study, "precision")
    return "**Does bf16 autocast keep fine-tuning quality?** " + precision_text(study.precision)


def duration(seconds: float | None) -> str:
    """A measured time as a reader wants it (minutes or hours); None: not measured here."""
    if seconds is None:
        return "not measured here"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def part_lines(document: Mapping) -> list[str]:
    """One line per part and one for the total, from study.json's numbers: what the command prints."""
    lines = []
    for part, entry in document["parts"].items():
        line = f"{part}: {entry['status']}, {duration(entry.get('wall_seconds'))}"
        if entry.get("runs") is not None:
            line += f", {entry['runs']} runs"
        if entry.get("error") or entry.get("failed"):
            line += f" ({entry.get('error') or '; '.join(f['run'] + ': ' + f['error'] for f in entry['failed'])})"
        lines.append(line)
    totals = document["wall_seconds"]
    lines.append("measured: " + ", ".join(f"{q.upper()} {duration(totals[q])}" for q in QUESTIONS)
                 + "".join(f", {c} check {duration(totals.get(c))}" for c in CHECKS)
                 + "".join(f", {e} (chapter 5) {duration(totals.get(e))}" for e in EXTENSIONS if e in totals)
                 + f", total {duration(totals['total'])}")
    return lines


# ----------------------------------------------------------------------------- the decisive table

DECIDING_SEEDS = (5, 10, 20)  # seed counts an inconclusive depth's "sizes that would decide" are given for


def sizes_to_decide(row: Mapping, margin: float) -> str:
    """An inconclusive depth's way out: the fewest of DECIDING_SEEDS seeds, and the test units with
    them, at which its test would show the margin at 80% power, were its variances the ones measured."""
    measured = {"seed_sd": row["seed_sd"], "row_se": row["row_se"], "units": row["units"]}
    for option in stats.sizes_to_show(measured, margin, seed_options=DECIDING_SEEDS):
        if option["rows"] is not None:
            return f"{option['seeds']} seeds x {max(option['rows'], row['units']):,} test units"
    return f"more than {DECIDING_SEEDS[-1]} seeds"


def decisive_rows(summary: Mapping, *, plan: Mapping | None = None,
                  similarity: Mapping[str, Mapping] | None = None) -> list[dict]:
    """Per task, what chapter 3 leads with: the scale, the largest non-inferior K and the smallest
    inferior K, each inconclusive depth with the sizes that would decide it (or why no depth gets a
    verdict), the widest achieved 95% half-width beside the plan's expected one, and RQ2's movement
    of the task's full fine-tune (the layers whose similarity to the pre-trained model fell, and the
    one that moved most)."""
    rows = []
    for task, entry in summary["tasks"].items():
        telly = [r for r in entry.get("rows", []) if r.get("method") == "telly"]
        planned = ((plan or {}).get("tasks") or {}).get(task) or {}
        choice = planned.get("choice") or {}
        inconclusive = [f"{r['freeze']} (needs {sizes_to_decide(r, entry['margin'])})"
                        for r in telly if r.get("verdict") == "inconclusive"]
        achieved = widest_half_width(telly)
        row = {"task": task, "scale": scale_sentence(entry).removeprefix("Scale: "),
               "non-inferior up to K": entry.get("largest_non_inferior_k"),
               "inferior from K": entry.get("smallest_inferior_k"),
               "inconclusive K": "; ".join(inconclusive) or "-",
               "no verdict because": "; ".join(entry.get("no_verdict") or []) or "-",
               "half-width achieved": achieved,
               "half-width planned": None if planned.get("why_not") else choice.get("expected_half_width"),
               "margin": entry["margin"]}
        if similarity and task in similarity:
            moved = movement_rows({task: similarity[task]})[0]
            row |= {"RQ2: layers that moved": moved["moved"], "RQ2: moved most": moved["most_moved"]}
        rows.append(row)
    return rows


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def plan_rows(plan: Mapping, *, achieved: Mapping | None = None, ledger: Mapping | None = None) -> list[dict]:
    """plan.json beside what was achieved, per task: the plan (seeds, test rows, depths) or why the task
    got no runs; the 95% half-width targeted, expected and achieved (the widest over the task's depths
    in the study's summary.json, with the seeds run); the CPU hours planned and measured (its rq3 part
    in study.json, "so far" while it runs)."""
    rows = []
    for task, entry in plan["tasks"].items():
        choice = entry.get("choice") or {}
        summary_entry = ((achieved or {}).get("tasks") or {}).get(task) or {}
        telly = [r for r in summary_entry.get("rows", []) if r.get("method") == "telly"]
        part = ((ledger or {}).get("parts") or {}).get(f"rq3/{task}") or {}
        skipped = bool(entry.get("why_not"))
        widest = widest_half_width(telly)
        seeds = len(summary_entry["seeds"]) if summary_entry.get("seeds") else None
        measured = f"{part['wall_seconds'] / 3600:.2f}" if part.get("wall_seconds") else "-"
        if part.get("wall_seconds") and part.get("status") != "finished":
            measured += " so far"
        rows.append({
            "task": f"{task} ({entry.get('metric')}, margin {entry.get('margin'):g})",
            "plan": entry["why_not"] if skipped else
            (f"{choice['seeds']} seeds x {choice['test_rows']:,} test rows, depths {', '.join(map(str, entry['depths']))}"
             + (" (capped by the budget)" if entry.get("capped") else "")),
            "half-width: target / expected / achieved": "-" if skipped else
            f"{_number(entry.get('target_half_width'))} / {_number(choice.get('expected_half_width'))} / "
            f"{_number(widest)}" + (f" ({seeds} seeds)" if seeds else ""),
            "CPU h: planned / measured": "-" if skipped else f"{choice.get('hours'):.2f} / "
            + measured,
        })
    return rows


def plan_table(plan: Mapping, *, achieved: Mapping | None = None, ledger: Mapping | None = None) -> pd.DataFrame:
    """`plan_rows` as chapter 3's table, one row per task."""
    return pd.DataFrame(plan_rows(plan, achieved=achieved, ledger=ledger)).set_index("task")


def latest_summary(pilot: Mapping | None, resized: Mapping | None) -> Mapping:
    """The verdicts chapter 3 leads with: per task the re-sized study's once its RQ3 part has landed
    (an entry with Telly-K rows: chapter 5's tasks without a sweep have none), else the pilot's, each
    entry tagged with its `source`."""
    tasks = {task: {**entry, "source": "pilot"} for task, entry in ((pilot or {}).get("tasks") or {}).items()}
    tasks |= {task: {**entry, "source": "re-sized study"} for task, entry in ((resized or {}).get("tasks") or {}).items()
              if any(row.get("method") == "telly" for row in entry.get("rows", []))}
    return {"tasks": tasks}


def decisive_markdown(summary: Mapping, *, plan: Mapping | None = None,
                      similarity: Mapping[str, Mapping] | None = None) -> str:
    """`decisive_rows` as one short block per task (a table this wide would not fit the text column)."""
    blocks = []
    for row in decisive_rows(summary, plan=plan, similarity=similarity):
        source = summary["tasks"][row["task"]].get("source")
        lines = [f"**{row['task']}**" + (f", {source}" if source else "") + f" ({row['scale']})"]
        if row["no verdict because"] != "-":
            lines.append(f"- no verdict: {row['no verdict because']}")
        else:
            keep, lose = _k(row["non-inferior up to K"]), _k(row["inferior from K"])
            kept = "no depth is shown to keep quality" if keep == "none" else \
                f"keeps quality (non-inferior) up to K = {keep}"
            lost = "no depth swept is shown to lose it" if lose == "none" else f"loses it (inferior) from K = {lose}"
            lines.append(f"- {kept}; {lost}")
            if row["inconclusive K"] != "-":
                lines.append(f"- inconclusive: K = {row['inconclusive K']}")
        planned = row["half-width planned"]
        lines.append(f"- widest 95% half-width {_number(row['half-width achieved'])} against a margin of "
                     f"{row['margin']:g}" + ("" if planned is None else f"; the re-sized study plans {planned:.3g}"))
        if "RQ2: layers that moved" in row:
            lines.append(f"- RQ2: layers {row['RQ2: layers that moved']} moved during full fine-tuning, "
                         f"layer {row['RQ2: moved most']} most")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _k(value) -> str:
    return "none" if value is None else str(int(value))


def plan_prose(plan: Mapping) -> str:
    """What the plan decided, in words that follow its numbers: depths kept and dropped, hours, budget."""
    kept = sorted({k for entry in plan["tasks"].values() if entry.get("depths") and not entry.get("why_not")
                   for k in entry["depths"]})
    dropped = [k for k in plan["depths"] if k not in kept]
    capped = [task for task, entry in plan["tasks"].items() if entry.get("capped")]
    skipped = [task for task, entry in plan["tasks"].items() if entry.get("why_not")]
    text = (f"The plan asks for a 95% interval half-width of at most {plan['half_width_share']:g} x the margin with "
            f"at least {plan['min_seeds']} seeds, from the pilot's measured variances and costs; it spends "
            f"{plan['hours']:.2f} of a {plan['budget_hours']:g}-hour budget for RQ3.")
    scales = list((plan.get("machine_scale") or {}).values())
    if scales:
        def spread(part: str) -> str:
            low, high = min(s[part] for s in scales), max(s[part] for s in scales)
            return f"{low:.1f}x" if round(low, 1) == round(high, 1) else f"{low:.1f}-{high:.1f}x"
        text += (" Its costs were measured on the pilot's machine and rescaled to the machine that runs the study by "
                 f"that machine's own short runs: training {spread('train_per_example')} and decoding or scoring "
                 f"{spread('eval_per_row')} the pilot's seconds.")
    if dropped:
        text += f" To fit, it dropped depths {', '.join(map(str, dropped))} (depths go before seeds and rows)."
    if capped:
        text += (f" Even so, {', '.join(capped)} could not reach the target within the budget: its row says what the "
                 "budget buys instead.")
    if skipped:
        text += f" No runs for {', '.join(skipped)}: the table says why."
    return text
