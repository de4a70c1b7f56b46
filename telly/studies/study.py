"""The code-model study: RQ1, RQ2 and RQ3 on one backbone in one resumable command (`telly study`,
`make study`), its records (JSON, never weights) in a folder that can be committed as parts finish.

Parts, in this order: code search first (rq3, then rq2, then rq1, which probes its fine-tune),
then each other task (rq3, then rq2), so that a session cut short leaves every question answered
for the tasks it reached, and so that each task's seed-0 full fine-tune keeps the per-epoch
checkpoints that RQ2 and RQ1 then reuse instead of training again.

  rq3/<task>  the seed-0 full fine-tune with a checkpoint per epoch (`telly.trainer.finetune`),
              then every depth and seed of the profile (`telly.studies.freezing.sweep`: sweep_freeze,
              or generation_freeze for the generation tasks, x the task's seeds, Profile.seeds_for), then the
              non-inferiority summary of every task done so far (`write_summary`). The weights of
              the task's other runs are deleted once their records are written: nothing reads them.
  rq2/<task>  per-layer RSA/CKA of each epoch checkpoint of that full fine-tune against the
              pre-trained model (`telly.studies.similarity.task_similarity`).
  rq1         the four probes on every layer of the random, pre-trained and fine-tuned states
              (`telly.studies.probing.run_probing`), the fine-tuned state being the seed-0 full
              code-search run, as the paper probes a code-search fine-tune.
  precision/<task>
              last: the full fine-tunes of every seed, and those of the Telly-K that decides the task
              (its largest non-inferior K, else its smallest inferior K, else its deepest), again in
              the other precision (float32 when the profile trains under bf16 autocast, else bf16),
              compared paired with rq3's (`telly.analysis.precision_check`): whether the profile's
              precision keeps quality, and Telly-K - full, the difference the verdicts rest on.
              The task: code search, or the first task of the profile's plan.
  quantisation/minilm-l6
              after it: full fine-tuning and Telly-K on code search and clone detection at the laptop
              profile's sizes, on MiniLM-L6 and on its GGUF round trip (Q4_1, the study backbone's own
              format), in records/quantisation/ (`telly.studies.quantisation`): whether the format
              moves Telly-K - full by more than the margin.
  beyond/<task>
              last, per task with RQ3 runs: chapter 5's methods (`telly.studies.beyond`: Telly-auto,
              LoRA on attention and MLP, BitFit) on the task's first BEYOND_SEEDS seeds, beside rq3's
              records, which hold the full fine-tunes they are paired with; then on each task of
              BEYOND_UNPLANNED that a plan gave no RQ3 runs, beside full fine-tunes of those seeds that
              the part trains itself and summarises with them; a method that cannot run
              on the model (BitFit without bias terms) is left out, its reason in the ledger. When the full
              fine-tunes its methods pair with name another machine (or none), it first trains a clock anchor:
              the first seed's full fine-tune again, on this machine, so that chapter 5 times both on one machine
              (`Study.clock_anchor`). Refused (the part fails,
              saying why) while Telly-auto's pilot share and threshold are not calibrated on MiniLM
              (`telly.methods.TellyAuto.calibration`), as issue 23 asks before any SmolLM2 run.

A planned profile (Profile.training.task_sizes, from the power planner's plan.json) runs rq3 only
for the tasks its plan sized, in the plan's order, each followed by its rq2; then rq2 of PROBED_TASK,
whose seed-0 full fine-tune's weights rq1 reads anyway; the other tasks keep the pilot's RQ2, measured
at the same sizes (BEYOND_UNPLANNED's beyond part reads only the records of its full fine-tunes). The
tasks the plan left out keep the reason it gave (plan.json beside the records).

Where things go (RunStore(records, weights_root=out/weights), the layout a chapter's store has):

  records/<run id>.json                      one RQ3 run; zero-shot/ and summary.json beside them
  records/similarity/similarity-<task>.json  RQ2
  records/probing/<model>/probing.json       RQ1
  records/precision/                         the precision check's runs and precision.json
  records/clock-anchors/<machine>/           chapter 5's clock anchors (a beyond part's full fine-tune of
                                             its first seed on a machine its rq3 runs did not name)
  records/bench/bench.json                   `telly bench` on the study's model (run apart: timings
                                             need an idle machine); chapter 4 shows it
  records/study.json                         this ledger (below)
  out/weights/<run id>/                      weights; epoch-<i>/ checkpoints of the full fine-tunes

Resuming. A part is skipped when its records are there and current:
  * rq3: every planned run has a finished record made under the profile's settings (trainer.finished_run);
  * rq2, rq1 with the full fine-tune's weights on this machine: the library's own rule (a stored
    document made from the same inputs, checkpoint fingerprints included, is returned as is);
  * rq2, rq1 without them (a fresh clone holding only the committed records): study.json lists the
    part as finished from the same inputs, the same fine-tuning record among them, and its document
    is there.
A part that is not covered runs; for rq2 or rq1 without the weights that first fine-tunes the
seed-0 full run again (its new record replaces the old one).

study.json (`telly.studies.ledger`; a store document, current while model, profile settings and tasks are the same):
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
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from telly.analysis import machine_of, precision_check
from telly.backbones import load
from telly.corpus import load_corpus
from telly.jsonio import as_stored, read_json
from telly.layout import CLOCK_DIR, PRECISION_DIR, QUANTISATION_DIR, SIMILARITY_DIR, SUMMARY, WEIGHTS_DIR
from telly.methods import TellyAuto
from telly.profiles import LAPTOP, Profile
from telly.progress import progress_bar
from telly.store import BF16_FLAGS, RunStore, Variant, bf16_units, cpu_model, slug, this_machine
from telly.studies.bench_harness import default_device
from telly.studies.beyond import METHODS as BEYOND_METHODS
from telly.studies.beyond import applicable
from telly.studies.beyond import variants as beyond_variants
from telly.studies.freezing import GENERATION_TASKS, parse_freeze, plan, run_variants, sweep, write_summary
from telly.studies.ledger import Ledger
from telly.studies.probing import probing_inputs, record_dir, run_probing
from telly.studies.quantisation import DOCUMENT as QUANTISATION_DOCUMENT
from telly.studies.quantisation import MODELS as QUANTISATION_MODELS
from telly.studies.quantisation import quantisation_check
from telly.studies.similarity import output_path, similarity_texts, task_similarity
from telly.tasks import TASKS, get_task
from telly.trainer import finetune, finished_run, memo_names

FULL_SEED = 0  # the full fine-tune whose epoch checkpoints RQ2 and RQ1 read (ensure_finetuned's seed)
PROBED_TASK = "code-search"  # RQ1's fine-tuned state
PRECISION_TASK = "code-search"  # the cheapest full fine-tune: run again in the other precision
QUANTISATION_PART = "quantisation/minilm-l6"  # MiniLM-L6 against its GGUF round trip, at laptop sizes
QUANTISATION_PROFILE = LAPTOP
BEYOND_SEEDS = 3  # chapter 5's methods per task: issue 23 asks for at least three seeds
# Chapter 5's one task that neither backbone would cover otherwise: MiniLM runs code search and clone detection
# live, and on SmolLM2 their full fine-tunes do not beat the model-free baselines at the study's sizes.
BEYOND_UNPLANNED = ("code-completion",)
OTHER_PRECISION = {"bf16": "no", "no": "bf16"}  # Profile.training.mixed_precision -> the one it is checked against
# What a failing part may raise without stopping the others (a kill still stops everything).
PART_ERRORS = (ValueError, RuntimeError, OSError, MemoryError)


def records_dir(model: str) -> Path:
    """Where `telly study` keeps a model's records by default: book/records/<model>/."""
    return Path("book") / "records" / slug(model)


def parts(tasks: Sequence[str], planned: Sequence[str] = ()) -> list[str]:
    """The study's parts in run order: per task rq3/<task> then rq2/<task>, with rq1 right after the
    task it probes (PROBED_TASK, moved to the front when it is studied), and the precision check
    last (when its task is studied). With a plan (`planned`: the tasks it sized, in its order), rq3
    and rq2 of those tasks first, then rq2 of PROBED_TASK (rq1 reads its seed-0 full fine-tune's weights)
    and rq1, and the precision check on the plan's first task."""
    planned = [task for task in planned if task in tasks]
    if planned:
        order = [part for task in planned for part in (f"rq3/{task}", f"rq2/{task}")]
        if PROBED_TASK in tasks and PROBED_TASK not in planned:
            order.append(f"rq2/{PROBED_TASK}")
        order.append("rq1")
        unplanned = [task for task in BEYOND_UNPLANNED if task in tasks and task not in planned]
        return [*order, f"precision/{planned[0]}", QUANTISATION_PART,
                *(f"beyond/{task}" for task in [*planned, *unplanned])]
    ordered = sorted(tasks, key=lambda task: task != PROBED_TASK)  # stable: the others keep their order
    order = []
    for task in ordered:
        order += [f"rq3/{task}", f"rq2/{task}"] + (["rq1"] if task == PROBED_TASK else [])
    order = order if PROBED_TASK in tasks else [*order, "rq1"]
    return (order + ([f"precision/{PRECISION_TASK}"] if PRECISION_TASK in tasks else []) + [QUANTISATION_PART]
            + [f"beyond/{task}" for task in ordered])


def check_precision(precision: str, what: str, device: torch.device | None = None,
                    units: Sequence[str] | None = None) -> None:
    """Refuse, before it runs, training under bf16 autocast (`precision`, for `what`) on a CPU with no
    bf16 units: there bf16 is emulated (a SmolLM2 training step took 77-81 s under bf16 against 3.0 s in
    float32 on a 2-core AMD EPYC without them), so it would take many times its plan."""
    device = device or default_device()
    units = bf16_units() if units is None else units
    if precision == "bf16" and device.type == "cpu" and units is not None and not units:
        raise ValueError(
            f"{what} trains under bf16 autocast, and this CPU ({cpu_model()}) has no bf16 units "
            f"(none of {', '.join(BF16_FLAGS)} in /proc/cpuinfo): bf16 would be emulated, about 26x slower than "
            "float32 for SmolLM2 on such a CPU. Run it on a CPU with AMX or AVX-512 BF16 or on a GPU; a study "
            "can instead train in float32 (mixed_precision='no'), planned for its machine (telly plan "
            "--machine-records).")


def planned_tasks(profile: Profile) -> list[str]:
    """The tasks a planned profile sized (Profile.training.task_sizes), in its order."""
    return [row[0] for row in profile.training.task_sizes]


def deciding_depth(entry: Mapping) -> int | None:
    """The Telly-K whose verdict decides a task (a summary.json entry): its largest non-inferior K,
    else its smallest inferior K, else the deepest K it swept; None without a Telly-K row."""
    for key in ("largest_non_inferior_k", "smallest_inferior_k"):
        if entry.get(key) is not None:
            return int(entry[key])
    depths = [int(r["freeze"]) for r in entry.get("rows", []) if r.get("method") == "telly"]
    return max(depths) if depths else None


def _identity(record: Mapping | None) -> dict | None:
    """A fine-tuning record as a part's input: its run id and when it was written."""
    return None if record is None else {"run": record["run"], "date": record["provenance"]["date"]}


def _stamp(path: Path) -> int | None:
    """A document's modification time: a part whose document did not change ran nothing."""
    return path.stat().st_mtime_ns if path.exists() else None


class Study:
    """One model's study under one profile: the parts, how each is found current, how each runs."""

    def __init__(self, model: str, profile: Profile, records: Path, out: Path, tasks: Sequence[str],
                 corpus: str, progress: bool) -> None:

        for task in tasks:
            get_task(task)  # an unknown task fails here, naming the valid ones, before anything runs
        check_precision(profile.training.mixed_precision, f"profile {profile.name!r}")
        self.model, self.profile, self.tasks, self.corpus, self.progress = model, profile, list(tasks), corpus, progress
        self.store = RunStore(records, weights_root=out / WEIGHTS_DIR)
        num_layers = load(model).num_layers
        self.depths = {task: parse_freeze(profile.generation.generation_freeze if task in GENERATION_TASKS
                                          else profile.training.sweep_freeze, num_layers) for task in tasks}
        self.parts = parts(self.tasks, planned_tasks(profile))  # the run order
        self.ledger = Ledger(self.store, {
            "kind": "study", "model": model, "profile": profile.name, "profile_settings": profile.to_dict(),
            "tasks": self.tasks, "depths": self.depths,
            "seeds": {task: list(profile.seeds_for(task)) for task in self.tasks},
            "inputs": {"model": model, "profile_settings": profile.to_dict(), "tasks": self.tasks}},
            self.parts)
        # Fine-tune under the profile's precision (Profile.training.mixed_precision: bf16 autocast or float32).
        self.finetune_options = {"mixed_precision": profile.training.mixed_precision}

    # ------------------------------------------------------------------ shared pieces

    def full_variant(self, task: str) -> Variant:
        return Variant.of(task, self.model, -1, seed=FULL_SEED, profile=self.profile)

    def full_weights_here(self, task: str) -> bool:
        """Whether the seed-0 full fine-tune of `task` has its record, best weights and epoch
        checkpoints on this machine."""
        variant = self.full_variant(task)
        if finished_run(variant, self.store) is None or not self.store.weights(variant).exists():
            return False
        try:
            return any(epoch is not None for _, epoch, _ in self.store.epoch_checkpoints(variant))
        except FileNotFoundError:
            return False

    def full_run(self, task: str) -> bool:
        """Make sure the seed-0 full fine-tune of `task` is on this machine with its epoch
        checkpoints, fine-tuning it (again) when not; whether it trained."""

        variant = self.full_variant(task)
        if self.full_weights_here(task):
            return False
        replaces = finished_run(variant, self.store) is not None
        finetune(variant, self.store, save_epoch_checkpoints=True,
                 progress=self.progress, on_epoch=self.ledger.tick, **self.finetune_options)
        if replaces:  # RQ3's summary read the record this run replaced
            self.summarise()
        return True

    def drop_weights(self, task: str, variants: Sequence[Variant]) -> None:
        """Delete the weights of `variants` but the seed-0 full fine-tune's when the study has an rq2 part
        of `task` (its epoch checkpoints are what RQ2, and RQ1 for PROBED_TASK, read): nothing reads the
        others, whose records hold what the study keeps."""
        keep = self.store.run_dir(self.full_variant(task)) if f"rq2/{task}" in self.parts else None
        for variant in variants:
            if self.store.run_dir(variant) != keep:
                shutil.rmtree(self.store.run_dir(variant), ignore_errors=True)

    def summarise(self) -> None:
        """The non-inferiority summary (summary.json) of every task whose RQ3 or beyond part finished."""

        parts = self.ledger.document["parts"]
        done = [task for task in self.tasks if any(
            parts.get(f"{question}/{task}", {}).get("status") == "finished" for question in ("rq3", "beyond"))]
        if done:
            write_summary(self.store.records(model=self.model, profile=self.profile.name, tasks=done),
                          self.profile, self.store)

    # ------------------------------------------------------------------ the parts

    def rq3(self, part: str, task: str) -> None:

        seeds = list(self.profile.seeds_for(task))
        variants = plan([task], self.depths[task], seeds, ["telly"],
                        model=self.model, profile=self.profile)
        found = [finished_run(v, self.store) for v in variants]
        if all(found) and finished_run(self.full_variant(task), self.store) is not None:
            self.ledger.finish(part, ran=False, runs=len(found), run_seconds=sum(r["wall_seconds"] for r in found))
        else:
            self.ledger.start(part, afresh=not any(found))
            self.full_run(task)
            result = sweep([task], self.depths[task], seeds, model=self.model,
                           profile=self.profile, store=self.store, progress=self.progress,
                           on_epoch=self.ledger.tick, **self.finetune_options)
            self.ledger.finish(part, ran=True, status="failed" if result["failed"] else "finished",
                               runs=len(result["records"]), failed=result["failed"],
                               run_seconds=sum(r["wall_seconds"] for r in result["records"]))
        self.drop_weights(task, variants)
        self.summarise()  # read back while current

    def rq2(self, part: str, task: str) -> None:

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
        """The full fine-tunes of `task` and those of its deciding Telly-K (every seed) again in the
        other precision, in their own store (records/precision/), and precision.json comparing them
        with rq3's."""

        other = OTHER_PRECISION[self.profile.training.mixed_precision]
        store = RunStore(self.store.root / PRECISION_DIR, weights_root=self.store.weights_root / PRECISION_DIR)
        summary_path = self.store.document_path(SUMMARY)
        summary = read_json(summary_path) if summary_path.exists() else None
        depth = deciding_depth(summary["tasks"].get(task, {})) if summary else None
        variants = [Variant.of(task, self.model, k, seed=seed, profile=self.profile)
                    for k in ([-1] if depth is None else [-1, depth]) for seed in self.profile.seeds_for(task)]
        reference = [finished_run(v, self.store) for v in variants]
        if not all(reference):
            raise RuntimeError(f"{part} compares with rq3/{task}'s fine-tunes, and some are missing")

        def current(variant: Variant) -> dict | None:
            record = finished_run(variant, store)
            return record if record and record["mixed_precision"]["training"] == other else None

        found = [current(v) for v in variants]
        if not all(found):
            check_precision(other, part)  # a part that cannot run here fails with why; a later machine resumes it
            self.ledger.start(part)
        checked = []
        for variant, record in zip(variants, found):
            if record is None:
                record = finetune(variant, store, mixed_precision=other,
                                  progress=self.progress, on_epoch=self.ledger.tick)
            checked.append(record)
        shutil.rmtree(store.weights_root, ignore_errors=True)  # records only: nothing reads these weights
        runs = {self.profile.training.mixed_precision: reference, other: checked}
        inputs = {"runs": [_identity(r) for r in reference + checked]}
        if store.find_document(PRECISION_DIR, inputs) is None:  # rewritten only when its runs changed
            store.write_document(PRECISION_DIR, {"inputs": inputs,
                                                 **precision_check(runs["no"], runs["bf16"], self.profile)})
        self.ledger.finish(part, ran=not all(found), runs=len(checked),
                           run_seconds=sum(r["wall_seconds"] for r in checked))

    def quantisation(self, part: str) -> None:
        """MiniLM-L6 and its GGUF round trip, fine-tuned at the laptop profile's sizes in their own
        store (records/quantisation/, weights discarded), and quantisation.json comparing Telly-K - full
        between them."""
        store = RunStore(self.store.root / QUANTISATION_DIR, weights_root=self.store.weights_root / QUANTISATION_DIR)
        path = store.document_path(QUANTISATION_DOCUMENT)
        inputs = as_stored({"profile_settings": QUANTISATION_PROFILE.to_dict(), "models": list(QUANTISATION_MODELS)})
        if path.exists() and self.ledger.finished_with(part, inputs):
            self.ledger.finish(part, ran=False)
            return
        before = _stamp(path)
        self.ledger.start(part)
        document = quantisation_check(QUANTISATION_PROFILE, store, progress=self.progress)
        shutil.rmtree(store.weights_root, ignore_errors=True)  # records only: nothing reads these weights
        self.ledger.finish(part, ran=_stamp(path) != before, runs=len(document["inputs"]["runs"]), inputs=inputs)

    def beyond(self, part: str, task: str) -> None:
        """Chapter 5's methods on `task`'s first BEYOND_SEEDS seeds, in the study's store, paired with
        rq3's full fine-tunes, or for a task without an rq3 part with full fine-tunes of those seeds that
        this part trains where missing; only their records are kept."""
        if TellyAuto.calibration is None:
            raise ValueError(f"{part}: Telly-auto's pilot share and threshold are not calibrated yet; issue 23 fixes "
                             "them on MiniLM at the laptop profile (telly calibrate-auto) before any SmolLM2 run")
        seeds = list(self.profile.seeds_for(task))[:BEYOND_SEEDS]
        full = [finished_run(Variant.of(task, self.model, -1, seed=s, profile=self.profile), self.store) for s in seeds]
        swept = f"rq3/{task}" in self.parts
        if swept and not all(full):
            raise RuntimeError(f"{part} pairs with rq3/{task}'s full fine-tunes of seeds {seeds}, and some are missing")
        methods, not_applicable = applicable(load(self.model), tuple(BEYOND_METHODS))
        variants = beyond_variants([task], {task: seeds}, [] if swept else [-1], model=self.model, profile=self.profile,
                                   methods=methods)
        found = [finished_run(v, self.store) for v in variants]
        anchor = self.clock_anchor(task, seeds[0], full, found)
        if all(found) and anchor is None:
            self.ledger.finish(part, ran=False, runs=len(found), run_seconds=sum(r["wall_seconds"] for r in found),
                               not_applicable=not_applicable)
            self.summarise()  # read back while current, as rq3 does
            return
        self.ledger.start(part, afresh=not any(found))
        anchored = {}
        if anchor is not None:
            anchors = self.anchor_store()
            self.share_memos(task, anchors)
            trained = run_variants([anchor], anchors, progress=self.progress, on_epoch=self.ledger.tick,
                                   **self.finetune_options)
            shutil.rmtree(anchors.run_dir(anchor), ignore_errors=True)  # its record is all it is for
            if trained["failed"]:
                raise RuntimeError(f"{part}: the clock anchor failed: {trained['failed']}")
            anchored = {"clock_anchor": {"run": anchor.run_id, "machine": " ".join(map(str, this_machine())),
                                         "seconds": trained["records"][0]["wall_seconds"]}}
        result = run_variants(variants, self.store, progress=self.progress, on_epoch=self.ledger.tick,
                              **self.finetune_options)
        self.drop_weights(task, variants)
        self.ledger.finish(part, ran=True, status="failed" if result["failed"] else "finished",
                           runs=len(result["records"]), failed=result["failed"], not_applicable=not_applicable,
                           run_seconds=sum(r["wall_seconds"] for r in result["records"]), **anchored)
        self.summarise()

    def share_memos(self, task: str, store: RunStore) -> None:
        """Copy `task`'s shared documents (`telly.trainer.memo_names`) into `store`, so that a run there
        reads back the zero-shot decoding instead of repeating it (each is used only while its inputs match)."""
        for name in memo_names(task, self.model, self.profile.name).values():
            source, target = self.store.document_path(name), store.document_path(name)
            if source.exists() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)

    def anchor_store(self) -> RunStore:
        """This machine's clock anchors (records/clock-anchors/<machine>/)."""
        folder = f"{CLOCK_DIR}/{slug(' '.join(map(str, this_machine())))}"
        return RunStore(self.store.root / folder, weights_root=self.store.weights_root / folder)

    def clock_anchor(self, task: str, seed: int, full: Sequence[dict | None],
                     found: Sequence[dict | None]) -> Variant | None:
        """The full fine-tune (of `seed`) still to train on this machine so that chapter 5 can time the
        methods run here against full fine-tuning on one machine: needed when a method runs here (now, or
        did before) but some of the full fine-tunes it is paired with name another machine or none; None
        when it is not needed or already trained (`telly.report.beyond` scales by it)."""
        here = this_machine()
        runs_here = not all(found) or any(r is not None and machine_of(r) == here for r in found)
        if not runs_here or all(r is None or machine_of(r) == here for r in full):
            return None
        variant = Variant.of(task, self.model, -1, seed=seed, profile=self.profile)
        return None if finished_run(variant, self.anchor_store()) else variant

    def part_inputs(self, part: str, task: str) -> dict:
        """What an rq2 / rq1 document is made from, as far as can be told without the weights: the
        library's description of its data and settings and the fine-tuning record it read."""
        finetuned = _identity(finished_run(self.full_variant(task), self.store))
        if part == "rq1":

            return probing_inputs(self.model, self.profile, load_corpus(self.corpus, progress=False)) \
                | {"finetuned": finetuned}

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
        bar = progress_bar(self.parts, desc=f"study {self.model}", unit="part", disable=not self.progress)
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
                elif question == "quantisation":
                    self.quantisation(part)
                elif question == "beyond":
                    self.beyond(part, task)
                else:
                    self.rq1(part)
            except PART_ERRORS as exc:  # the other parts still run; the command exits non-zero
                self.ledger.finish(part, ran=self.ledger.running == part, status="failed",
                                   error=f"{type(exc).__name__}: {exc}")
            except BaseException:  # interrupted: keep the time measured so far, then stop
                self.ledger.tick()
                raise
        return self.ledger.document


def run_study(model: str, profile: Profile, *, out: str | Path = "runs/study",
              records: str | Path | None = None, tasks: Sequence[str] | None = None, corpus: str = "stdlib",
              progress: bool = True) -> dict:
    """Run (or resume) the whole study of `model` under `profile`; returns study.json's document.

    records: the folder of JSON records (default book/records/<model>/); out: where weights go
    (out/weights/); tasks: default all five. See the module docstring for the parts, their order
    and what counts as finished."""

    records = Path(records) if records is not None else records_dir(model)
    study = Study(model, profile, records, Path(out), list(tasks) if tasks else list(TASKS), corpus, progress)
    return study.run()
