"""A study read back from its committed records, never run: what chapters show of `telly study`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from telly.jsonio import read_json
from telly.layout import (
    BENCH_DIR,
    CLOCK_DIR,
    PILOT_DIMENSIONS,
    PLAN,
    PRECISION_DIR,
    QUANTISATION_DIR,
    SIMILARITY_DIR,
    STUDY,
    SUMMARY,
)
from telly.store import RunStore
from telly.studies.probing import record_dir
from telly.studies.similarity import output_path


def read_study(records: str | Path) -> dict:
    """The study.json in `records` (a FileNotFoundError names the folder and how to fill it)."""
    path = Path(records) / f"{STUDY}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: `make study` (telly study) writes it")
    return read_json(path)


@dataclass(frozen=True)
class StudyRecords:
    """What a chapter shows of a study: the records of its finished parts, read back, never run.
    A part still running or pending shows nothing yet (its ledger entry says how far it got)."""

    root: Path
    ledger: dict | None  # study.json; None when the folder holds no study
    probing: list[dict]  # [the RQ1 record] once rq1 finished, else []
    similarity: dict[str, dict]  # task -> RQ2 document, for each finished rq2 part
    runs: list[dict]  # the RQ3 records of each task whose rq3 part finished
    summary: dict | None  # summary.json: RQ3's verdicts over those tasks
    precision: dict | None = None  # precision/precision.json once the precision check finished
    precision_runs: list[dict] = field(default_factory=list)  # the runs it trained in the other precision
    bench: dict | None = None  # bench/bench.json: `telly bench` on the study's model, when committed
    plan: dict | None = None  # plan.json: the power plan the study was sized by, when it was
    quantisation: dict | None = None  # quantisation/quantisation.json once the quantisation check finished
    # Chapter 5's records of each task without an rq3 part whose beyond part finished (with its own full fine-tunes)
    beyond_runs: list[dict] = field(default_factory=list)
    # clock-anchors/<machine>/: full fine-tunes trained again where chapter 5's methods ran (telly.report.beyond.full_clock)
    clock_anchors: list[dict] = field(default_factory=list)
    pilot_dimensions: dict | None = None  # telly-auto-dimensions.json (`telly pilot-dimensions`), when committed

    @property
    def model(self) -> str | None:
        return self.ledger["model"] if self.ledger else None

    @property
    def profile(self) -> str | None:
        return self.ledger["profile"] if self.ledger else None

    @property
    def not_applicable(self) -> dict[str, str]:
        """Chapter 5's methods the study's beyond parts left out, each with why (BitFit on SmolLM2)."""
        return {method: why for part, entry in (self.ledger or {}).get("parts", {}).items()
                if part.startswith("beyond/") for method, why in (entry.get("not_applicable") or {}).items()}

    @property
    def beyond_tasks(self) -> list[str]:
        """The tasks the study runs chapter 5's methods on (its beyond parts, whatever their status)."""
        return [part.partition("/")[2] for part in (self.ledger or {}).get("parts", {}) if part.startswith("beyond/")]

    def finished(self, question: str) -> list[str]:
        """The finished parts of one research question ("rq1", "rq2", "rq3") or check ("precision"),
        in run order."""
        return [part for part, entry in (self.ledger or {}).get("parts", {}).items()
                if part.split("/")[0] == question and entry["status"] == "finished"]

    def unfinished(self, question: str) -> dict[str, str]:
        """Parts of `question` not finished: part -> status (pending, running, failed)."""
        return {part: entry["status"] for part, entry in (self.ledger or {}).get("parts", {}).items()
                if part.split("/")[0] == question and entry["status"] != "finished"}


def load_study(records: str | Path) -> StudyRecords:
    """The finished parts of the study whose records are in `records` (e.g. book/records/smollm2-135m):
    an empty StudyRecords (ledger None) when the folder holds no study.json."""

    root = Path(records)
    plan_path = root / f"{PLAN}.json"
    plan = read_json(plan_path) if plan_path.exists() else None
    try:
        ledger = read_study(root)
    except FileNotFoundError:
        return StudyRecords(root, None, [], {}, [], None, plan=plan)
    if not isinstance(ledger, dict) or ledger.get("kind") != "study" or "parts" not in ledger:
        raise ValueError(f"{root / f'{STUDY}.json'}: not a study ledger (expected kind 'study' and its parts)")
    found = StudyRecords(root, ledger, [], {}, [], None)
    model, store = ledger["model"], RunStore(root)
    probing = [read_json(record_dir(root, model) / "probing.json")] if found.finished("rq1") else []
    tasks = {question: [part.partition("/")[2] for part in found.finished(question)]
             for question in ("rq2", "rq3", "beyond")}
    similarity = {task: read_json(output_path(root / SIMILARITY_DIR, task)) for task in tasks["rq2"]}
    runs = store.records(model=model, profile=ledger["profile"], tasks=tasks["rq3"]) if tasks["rq3"] else []
    unplanned = [task for task in tasks["beyond"] if task not in tasks["rq3"]]
    beyond_runs = store.records(model=model, profile=ledger["profile"], tasks=unplanned) if unplanned else []
    summary_path = store.document_path(SUMMARY)
    summary = read_json(summary_path) if (runs or beyond_runs) and summary_path.exists() else None
    precision, precision_runs = None, []
    if found.finished("precision"):
        checked = RunStore(root / PRECISION_DIR)
        precision = read_json(checked.document_path(PRECISION_DIR))
        precision_runs = checked.records(model=model, profile=ledger["profile"])
    quantisation = None
    if found.finished("quantisation"):
        quantisation = read_json(RunStore(root / QUANTISATION_DIR).document_path(QUANTISATION_DIR))
    bench_path = root / BENCH_DIR / "bench.json"
    bench = read_json(bench_path) if bench_path.exists() else None
    anchors = [record for folder in sorted((root / CLOCK_DIR).glob("*/"))
               for record in RunStore(folder).records(model=model, profile=ledger["profile"])]
    dimensions_path = root / f"{PILOT_DIMENSIONS}.json"
    dimensions = read_json(dimensions_path) if dimensions_path.exists() else None
    return StudyRecords(root, ledger, probing, similarity, runs, summary, precision, precision_runs, bench, plan,
                        quantisation, beyond_runs, anchors, dimensions)
