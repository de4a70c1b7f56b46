"""What a chapter says about the code-model study's records (`telly.studies.records.StudyRecords`):
which parts it shows, where they were measured, and which block of a page is the study's and which
the build's own live run. Pure functions of the records."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from telly.layout import BENCH_DIR, CHECKS, QUESTIONS
from telly.profiles import Profile
from telly.report.charts import ProvenanceBox, provenance_box
from telly.report.freezing import sweep_view as freezing_sweep_view
from telly.report.freezing_prose import precision_text

# What each registered backbone is, in the words a page uses wherever it says "pre-trained".
DESCRIPTIONS = {
    "minilm-l6": "all-MiniLM-L6-v2, a 6-layer sentence encoder pre-trained on text, not code",
    "smollm2-135m": ("SmolLM2-135M-Instruct, quantised to 4 bits (Q4_1) and dequantised: a 30-layer decoder whose "
                     "pre-training mix includes code (The Stack)"),
    "unixcoder-base": "UniXcoder-base, a 12-layer encoder pre-trained on code (the paper's backbone)",
}

QUESTION_NAMES = {"rq1": "probing", "rq2": "layer similarity", "rq3": "freezing", "precision": "precision check"}


def study_heading(study) -> str:
    """The heading of the study's block on a page."""
    return f"{study.model}: the code-model study's records (profile `{study.profile}`)"


def live_heading(model: str, profile: Profile) -> str:
    """The heading of the build's own live run on a page."""
    return f"{model}: this build's live run (profile `{profile.name}`)"


def shown(study, study_part: Any, live_part: Any, *, model: str, profile: Profile) -> dict[str, Any]:
    """heading -> what to show, the study's first, each only when it holds something (a record
    list, a document dict, ...): the order in which every section of a chapter shows its sources."""
    blocks = {}
    if study.ledger is not None and study_part:
        blocks[study_heading(study)] = study_part
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


def headed(study, study_records: Sequence[Mapping], live_records: Sequence[Mapping], *,
           profile: Profile) -> list[tuple[str, Mapping]]:
    """(heading, record) pairs: the study's records first, then the live run's (each under its model)."""
    return [(study_heading(study), r) for r in study_records] + \
        [(live_heading(r["model"], profile), r) for r in live_records]


def sweep_view(study) -> dict | None:
    """The study's RQ3 runs as chapter 3 shows a sweep (`telly.report.freezing.sweep_view`), or None."""
    if not study.runs or study.summary is None:
        return None
    return freezing_sweep_view(study.runs, study.summary, kind=study.runs[0]["provenance"]["backbone"]["kind"])


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
                 + f", total {duration(totals['total'])}")
    return lines
