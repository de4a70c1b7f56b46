"""The code-model study: RQ1, RQ2 and RQ3 on one backbone in one resumable command (`telly study`,
`make study`), its records (JSON, never weights) in a folder that can be committed as parts finish.

Parts, in this order: code search first (rq3, then rq2, then rq1, which probes its fine-tune),
then each other task (rq3, then rq2), so that a session cut short leaves every question answered
for the tasks it reached, and so that each task's seed-0 full fine-tune keeps the per-epoch
checkpoints that RQ2 and RQ1 then reuse instead of training again.

  rq3/<task>  the seed-0 full fine-tune with a checkpoint per epoch (`telly.trainer.finetune`),
              then every depth and seed of the profile (`telly.studies.freezing.sweep`: sweep_freeze,
              or generation_freeze for the generation tasks, x profile.seeds), then the
              non-inferiority summary of every task done so far (`write_summary`). The weights of
              the task's other runs are deleted once their records are written: nothing reads them.
  rq2/<task>  per-layer RSA/CKA of each epoch checkpoint of that full fine-tune against the
              pre-trained model (`telly.studies.similarity.task_similarity`).
  rq1         the four probes on every layer of the random, pre-trained and fine-tuned states
              (`telly.studies.probing.run_probing`), the fine-tuned state being the seed-0 full
              code-search run, as the paper probes a code-search fine-tune.
  precision/code-search
              last: the full code-search fine-tunes of every seed again in the other precision
              (float32 when the profile trains under bf16 autocast, else bf16), compared paired with
              rq3's (`telly.report.freezing.precision_check`): whether the profile's precision keeps
              quality.

Where things go (RunStore(records, weights_root=out/weights), the layout a chapter's store has):

  records/<run id>.json                      one RQ3 run; zero-shot/ and summary.json beside them
  records/similarity/similarity-<task>.json  RQ2
  records/probing/<model>/probing.json       RQ1
  records/precision/                         the precision check's runs and precision.json
  records/bench/bench.json                   `telly bench` on the study's model (run apart: timings
                                             need an idle machine); chapter 4 shows it
  records/study.json                         this ledger (below)
  out/weights/<run id>/                      weights; epoch-<i>/ checkpoints of the full fine-tunes

Resuming. A part is skipped when its records are there and current:
  * rq3: every planned run has a finished record made under the profile's settings (RunStore.find);
  * rq2, rq1 with the full fine-tune's weights on this machine: the library's own rule (a stored
    document made from the same inputs, checkpoint fingerprints included, is returned as is);
  * rq2, rq1 without them (a fresh clone holding only the committed records): study.json lists the
    part as finished from the same inputs, the same fine-tuning record among them, and its document
    is there.
A part that is not covered runs; for rq2 or rq1 without the weights that first fine-tunes the
seed-0 full run again (its new record replaces the old one).

study.json (a store document, current while model, profile settings and tasks are the same):
{"kind": "study", "model", "profile", "profile_settings", "tasks", "depths": {task: [K, ...]},
 "seeds", "inputs", "parts": {part: {"status": "running" | "finished" | "failed", "wall_seconds",
 "machine", "commit", "date", ...}}, "wall_seconds": {"rq1", "rq2", "rq3", "precision", "total"},
 "sessions": [{"started", "updated", "machine", "commit", "ran": [part, ...]}]}
A part's wall_seconds is the time this study measured working on it, summed over the sessions that
did (a killed session's unfinished run counts up to its last finished epoch); None when the records
came from elsewhere. An rq3 or precision part also carries `runs` and `run_seconds` (the sum of its
records' own wall_seconds).
"""
from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from telly.profiles import Profile, get_profile
from telly.progress import progress_bar
from telly.store import RunStore, Variant, as_stored, read_json, slug

DOCUMENT = "study"  # records/study.json
WEIGHTS_DIR = "weights"  # under --out
FULL_SEED = 0  # the full fine-tune whose epoch checkpoints RQ2 and RQ1 read (ensure_finetuned's seed)
PROBED_TASK = "code-search"  # RQ1's fine-tuned state
QUESTIONS = ("rq3", "rq2", "rq1")  # the research questions, as study.json totals them
CHECKS = ("precision",)  # parts beside the questions, totalled apart
PRECISION_TASK = "code-search"  # the cheapest full fine-tune: run again in the other precision
PRECISION_DIR = "precision"  # records/precision/: its runs (same run ids as rq3's) and precision.json
OTHER_PRECISION = {"bf16": "no", "no": "bf16"}  # Profile.mixed_precision -> the one it is checked against
BENCH_DIR = "bench"  # records/bench/: `telly bench --model <model> --profile <profile> --out records/bench`
# What a failing part may raise without stopping the others (a kill still stops everything).
PART_ERRORS = (ValueError, RuntimeError, OSError, MemoryError)


def records_dir(model: str) -> Path:
    """Where `telly study` keeps a model's records by default: book/records/<model>/."""
    return Path("book") / "records" / slug(model)


def parts(tasks: Sequence[str]) -> list[str]:
    """The study's parts in run order: per task rq3/<task> then rq2/<task>, with rq1 right after the
    task it probes (PROBED_TASK, moved to the front when it is studied), and the precision check
    last (when its task is studied)."""
    ordered = sorted(tasks, key=lambda task: task != PROBED_TASK)  # stable: the others keep their order
    order = []
    for task in ordered:
        order += [f"rq3/{task}", f"rq2/{task}"] + (["rq1"] if task == PROBED_TASK else [])
    order = order if PROBED_TASK in tasks else [*order, "rq1"]
    return order + ([f"precision/{PRECISION_TASK}"] if PRECISION_TASK in tasks else [])


def git_state(root: str | Path | None = None) -> dict:
    """{"commit", "dirty"} of the checkout holding the telly package (None, None outside git).
    dirty: tracked files differ from the commit (records written since are untracked, not counted)."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[2]
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  check=True, timeout=30).stdout.strip()
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def machine() -> str:
    """The device and, on a CPU, its model name: what a part's time was measured on."""
    from telly.store import device_description
    from telly.studies.bench import cpu_model

    return f"{device_description()} ({cpu_model()})"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _identity(record: Mapping | None) -> dict | None:
    """A fine-tuning record as a part's input: its run id and when it was written."""
    return None if record is None else {"run": record["run"], "date": record["provenance"]["date"]}


def _stamp(path: Path) -> int | None:
    """A document's modification time: a part whose document did not change ran nothing."""
    return path.stat().st_mtime_ns if path.exists() else None


class Ledger:
    """study.json: each part's status and measured wall time, written after every change so that
    the committed file always says how far the study got."""

    def __init__(self, store: RunStore, header: dict, parts: Sequence[str]) -> None:
        """header: the study's description, with the `inputs` that decide whether a stored ledger
        is this study's (else it starts afresh); parts: all of them, listed as pending until reached."""
        self.store = store
        stored = store.find_document(DOCUMENT, header["inputs"])
        self.document = stored or {**header, "parts": {}, "sessions": []}
        self.document.update({key: value for key, value in header.items() if key != "inputs"})
        for part in parts:
            self.entry(part)
        self.session = {"started": _now(), "updated": _now(), "machine": machine(), **git_state(), "ran": []}
        self.document["sessions"].append(self.session)
        self._part: str | None = None
        self._mark = 0.0
        self.save()

    def entry(self, part: str) -> dict:
        return self.document["parts"].setdefault(part, {"status": "pending", "wall_seconds": None})

    def finished_with(self, part: str, inputs: Mapping) -> bool:
        """Whether `part` finished, in this or an earlier session, from exactly `inputs`."""
        entry = self.document["parts"].get(part, {})
        return entry.get("status") == "finished" and entry.get("inputs") == as_stored(dict(inputs))

    def start(self, part: str, *, afresh: bool = False) -> None:
        """`part` begins work: its time counts from now. afresh: none of the records an earlier
        session made for it are left (removed as stale), so neither is the time it measured."""
        self._part, self._mark = part, time.perf_counter()
        entry = self.entry(part)
        entry["status"] = "running"
        if afresh:
            entry["wall_seconds"] = None
        self.save()

    def tick(self, *_ignored) -> None:
        """Add the time since the last tick to the running part (the trainer calls it after every
        epoch, so a killed session keeps what it measured up to its last epoch)."""
        if self._part is None:
            return
        now = time.perf_counter()
        entry = self.entry(self._part)
        entry["wall_seconds"] = (entry["wall_seconds"] or 0.0) + now - self._mark
        self._mark = now
        self.save()

    @property
    def running(self) -> str | None:
        return self._part

    def finish(self, part: str, *, ran: bool, status: str = "finished", **facts) -> None:
        """`part` is done. ran: whether this session worked on it; only then does its time count
        and do date, machine and commit name this session (a part whose records were found
        current keeps what the session that made them wrote)."""
        entry = self.entry(part)
        if ran:
            if self._part == part:
                self.tick()
            entry.update({"date": _now(), "machine": self.session["machine"],
                          "commit": self.session["commit"], "dirty": self.session["dirty"]})
            self.session["ran"].append(part)
        entry.pop("error", None)  # an earlier session's failure, if any, is history now
        entry.update(as_stored({"status": status, **facts}))
        self._part = None
        self.save()

    def save(self) -> None:
        totals = {kind: 0.0 for kind in QUESTIONS + CHECKS}
        for part, entry in self.document["parts"].items():
            totals[part.split("/")[0]] += entry.get("wall_seconds") or 0.0
        self.document["wall_seconds"] = {**totals, "total": sum(totals.values())}
        self.session["updated"] = _now()
        self.store.write_document(DOCUMENT, self.document)


class Study:
    """One model's study under one profile: the parts, how each is found current, how each runs."""

    def __init__(self, model: str, profile: Profile, records: Path, out: Path, tasks: Sequence[str],
                 corpus: str, progress: bool) -> None:
        from telly.backbones import load
        from telly.studies.freezing import GENERATION_TASKS, parse_freeze
        from telly.tasks import get_task

        for task in tasks:
            get_task(task)  # an unknown task fails here, naming the valid ones, before anything runs
        self.model, self.profile, self.tasks, self.corpus, self.progress = model, profile, list(tasks), corpus, progress
        self.store = RunStore(records, weights_root=out / WEIGHTS_DIR)
        num_layers = load(model).num_layers
        self.depths = {task: parse_freeze(profile.generation_freeze if task in GENERATION_TASKS
                                          else profile.sweep_freeze, num_layers) for task in tasks}
        self.ledger = Ledger(self.store, {
            "kind": "study", "model": model, "profile": profile.name, "profile_settings": profile.to_dict(),
            "tasks": self.tasks, "depths": self.depths, "seeds": list(profile.seeds),
            "inputs": {"model": model, "profile_settings": profile.to_dict(), "tasks": self.tasks}}, parts(self.tasks))
        # Fine-tune under the profile's precision (Profile.mixed_precision: bf16 autocast or float32).
        self.finetune_options = {"mixed_precision": profile.mixed_precision}

    # ------------------------------------------------------------------ shared pieces

    def full_variant(self, task: str) -> Variant:
        return Variant.of(task, self.model, -1, seed=FULL_SEED, profile=self.profile.name)

    def full_weights_here(self, task: str) -> bool:
        """Whether the seed-0 full fine-tune of `task` has its record, best weights and epoch
        checkpoints on this machine."""
        variant = self.full_variant(task)
        if self.store.find(variant, self.profile) is None or not self.store.weights(variant).exists():
            return False
        try:
            return any(epoch is not None for _, epoch, _ in self.store.epoch_checkpoints(variant))
        except FileNotFoundError:
            return False

    def full_run(self, task: str) -> bool:
        """Make sure the seed-0 full fine-tune of `task` is on this machine with its epoch
        checkpoints, fine-tuning it (again) when not; whether it trained."""
        from telly.trainer import finetune

        variant = self.full_variant(task)
        if self.full_weights_here(task):
            return False
        replaces = self.store.find(variant, self.profile) is not None
        finetune(variant, self.store, profile=self.profile, save_epoch_checkpoints=True,
                 progress=self.progress, on_epoch=self.ledger.tick, **self.finetune_options)
        if replaces:  # RQ3's summary read the record this run replaced
            self.summarise()
        return True

    def summarise(self) -> None:
        """The non-inferiority summary (summary.json) of every task whose RQ3 part finished."""
        from telly.studies.freezing import write_summary

        done = [task for task in self.tasks
                if self.ledger.document["parts"].get(f"rq3/{task}", {}).get("status") == "finished"]
        if done:
            write_summary(self.store.records(model=self.model, profile=self.profile.name, tasks=done),
                          self.profile, self.store)

    # ------------------------------------------------------------------ the parts

    def rq3(self, part: str, task: str) -> None:
        from telly.studies.freezing import plan, sweep

        variants = plan([task], self.depths[task], list(self.profile.seeds), ["telly"],
                        model=self.model, profile=self.profile.name)
        found = [self.store.find(v, self.profile) for v in variants]
        if all(found) and self.store.find(self.full_variant(task), self.profile) is not None:
            self.ledger.finish(part, ran=False, runs=len(found), run_seconds=sum(r["wall_seconds"] for r in found))
        else:
            self.ledger.start(part, afresh=not any(found))
            self.full_run(task)
            result = sweep([task], self.depths[task], list(self.profile.seeds), model=self.model,
                           profile=self.profile, store=self.store, progress=self.progress,
                           on_epoch=self.ledger.tick, **self.finetune_options)
            self.ledger.finish(part, ran=True, status="failed" if result["failed"] else "finished",
                               runs=len(result["records"]), failed=result["failed"],
                               run_seconds=sum(r["wall_seconds"] for r in result["records"]))
        keep = self.store.run_dir(self.full_variant(task))
        for variant in variants:  # only the full fine-tune's weights are read later
            if self.store.run_dir(variant) != keep:
                shutil.rmtree(self.store.run_dir(variant), ignore_errors=True)
        self.summarise()  # read back while current

    def rq2(self, part: str, task: str) -> None:
        from telly.studies.similarity import SIMILARITY_DIR, output_path, task_similarity

        document = output_path(self.store.root / SIMILARITY_DIR, task)
        if self.covered_elsewhere(part, task, document):
            return
        self.ledger.start(part)
        before = _stamp(document)
        trained = self.full_run(task)
        task_similarity(task, self.model, self.profile, self.store, per_epoch=True, corpus=self.corpus,
                        progress=self.progress)
        self.ledger.finish(part, ran=trained or _stamp(document) != before, inputs=self.part_inputs(part, task))

    def rq1(self, part: str) -> None:
        from telly.studies.probing import record_dir, run_probing

        out = record_dir(self.store.root, self.model)
        document = out / "probing.json"
        if self.covered_elsewhere(part, PROBED_TASK, document):
            return
        self.ledger.start(part)
        before = _stamp(document)
        trained = self.full_run(PROBED_TASK)
        run_probing(self.model, self.profile, corpus=self.corpus, out=out, progress=self.progress,
                    checkpoint=self.store.run_dir(self.full_variant(PROBED_TASK)))
        self.ledger.finish(part, ran=trained or _stamp(document) != before,
                           inputs=self.part_inputs(part, PROBED_TASK))

    def precision(self, part: str, task: str) -> None:
        """The full fine-tunes of `task` (every seed) again in the other precision, in their own
        store (records/precision/), and precision.json comparing them with rq3's."""
        from telly.report.freezing import precision_check
        from telly.trainer import finetune

        other = OTHER_PRECISION[self.profile.mixed_precision]
        store = RunStore(self.store.root / PRECISION_DIR, weights_root=self.store.weights_root / PRECISION_DIR)
        variants = [Variant.of(task, self.model, -1, seed=seed, profile=self.profile.name) for seed in self.profile.seeds]
        reference = [self.store.find(v, self.profile) for v in variants]
        if not all(reference):
            raise RuntimeError(f"{part} compares with rq3/{task}'s full fine-tunes, and some are missing")

        def current(variant: Variant) -> dict | None:
            record = store.find(variant, self.profile)
            return record if record and record["mixed_precision"]["training"] == other else None

        found = [current(v) for v in variants]
        if not all(found):
            self.ledger.start(part)
        checked = []
        for variant, record in zip(variants, found):
            if record is None:
                record = finetune(variant, store, profile=self.profile, mixed_precision=other,
                                  progress=self.progress, on_epoch=self.ledger.tick)
            checked.append(record)
        shutil.rmtree(store.weights_root, ignore_errors=True)  # records only: nothing reads these weights
        runs = {self.profile.mixed_precision: reference, other: checked}
        inputs = {"runs": [_identity(r) for r in reference + checked]}
        if store.find_document(PRECISION_DIR, inputs) is None:  # rewritten only when its runs changed
            store.write_document(PRECISION_DIR, {"inputs": inputs,
                                                 **precision_check(runs["no"], runs["bf16"], self.profile)})
        self.ledger.finish(part, ran=not all(found), runs=len(checked),
                           run_seconds=sum(r["wall_seconds"] for r in checked))

    def part_inputs(self, part: str, task: str) -> dict:
        """What an rq2 / rq1 document is made from, as far as can be told without the weights: the
        library's description of its data and settings and the fine-tuning record it read."""
        finetuned = _identity(self.store.find(self.full_variant(task), self.profile))
        if part == "rq1":
            from telly.corpus import load_corpus
            from telly.studies.probing import probing_inputs

            return probing_inputs(self.model, self.profile, load_corpus(self.corpus, progress=False)) \
                | {"finetuned": finetuned}
        from telly.studies.similarity import similarity_texts

        _, texts = similarity_texts(self.profile, self.corpus, progress=False)
        return as_stored({"model": self.model, "profile_settings": self.profile.to_dict(), "texts": texts,
                          "finetuned": finetuned})

    def covered_elsewhere(self, part: str, task: str, document: Path) -> bool:
        """Without the fine-tuned weights here, a part is current when study.json says it finished
        from the same inputs and its document is there (see the module docstring)."""
        if self.full_weights_here(task) or not document.exists():
            return False
        if not self.ledger.finished_with(part, self.part_inputs(part, task)):
            return False
        self.ledger.finish(part, ran=False)
        return True

    def run(self) -> dict:
        bar = progress_bar(parts(self.tasks), desc=f"study {self.model}", unit="part", disable=not self.progress)
        for part in bar:
            bar.set_postfix_str(part)
            question, _, task = part.partition("/")
            try:
                if question == "rq3":
                    self.rq3(part, task)
                elif question == "rq2":
                    self.rq2(part, task)
                elif question == "precision":
                    self.precision(part, task)
                else:
                    self.rq1(part)
            except PART_ERRORS as exc:  # the other parts still run; the command exits non-zero
                self.ledger.finish(part, ran=self.ledger.running == part, status="failed",
                                   error=f"{type(exc).__name__}: {exc}")
            except BaseException:  # interrupted: keep the time measured so far, then stop
                self.ledger.tick()
                raise
        return self.ledger.document


def run_study(model: str = "smollm2-135m", profile: str | Profile = "study", *, out: str | Path = "runs/study",
              records: str | Path | None = None, tasks: Sequence[str] | None = None, corpus: str = "stdlib",
              progress: bool = True) -> dict:
    """Run (or resume) the whole study of `model` under `profile`; returns study.json's document.

    records: the folder of JSON records (default book/records/<model>/); out: where weights go
    (out/weights/); tasks: default all five. See the module docstring for the parts, their order
    and what counts as finished."""
    from telly.tasks import TASKS

    profile = get_profile(profile)
    records = Path(records) if records is not None else records_dir(model)
    study = Study(model, profile, records, Path(out), list(tasks) if tasks else list(TASKS), corpus, progress)
    return study.run()


def read_study(records: str | Path) -> dict:
    """The study.json in `records` (a FileNotFoundError names the folder and how to fill it)."""
    path = Path(records) / f"{DOCUMENT}.json"
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

    @property
    def model(self) -> str | None:
        return self.ledger["model"] if self.ledger else None

    @property
    def profile(self) -> str | None:
        return self.ledger["profile"] if self.ledger else None

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
    from telly.studies.freezing import SUMMARY
    from telly.studies.probing import record_dir
    from telly.studies.similarity import SIMILARITY_DIR, output_path

    root = Path(records)
    try:
        ledger = read_study(root)
    except FileNotFoundError:
        return StudyRecords(root, None, [], {}, [], None)
    if not isinstance(ledger, dict) or ledger.get("kind") != "study" or "parts" not in ledger:
        raise ValueError(f"{root / f'{DOCUMENT}.json'}: not a study ledger (expected kind 'study' and its parts)")
    found = StudyRecords(root, ledger, [], {}, [], None)
    model, store = ledger["model"], RunStore(root)
    probing = [read_json(record_dir(root, model) / "probing.json")] if found.finished("rq1") else []
    tasks = {question: [part.partition("/")[2] for part in found.finished(question)] for question in ("rq2", "rq3")}
    similarity = {task: read_json(output_path(root / SIMILARITY_DIR, task)) for task in tasks["rq2"]}
    runs = store.records(model=model, profile=ledger["profile"], tasks=tasks["rq3"]) if tasks["rq3"] else []
    summary_path = store.document_path(SUMMARY)
    summary = read_json(summary_path) if runs and summary_path.exists() else None
    precision, precision_runs = None, []
    if found.finished("precision"):
        checked = RunStore(root / PRECISION_DIR)
        precision = read_json(checked.document_path(PRECISION_DIR))
        precision_runs = checked.records(model=model, profile=ledger["profile"])
    bench_path = root / BENCH_DIR / "bench.json"
    bench = read_json(bench_path) if bench_path.exists() else None
    return StudyRecords(root, ledger, probing, similarity, runs, summary, precision, precision_runs, bench)


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
