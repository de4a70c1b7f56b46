"""telly.studies.study: the whole study (RQ3, RQ2, RQ1) on tiny-random with a tiny profile, killed
mid-way and resumed, then rerun on the same machine and on a "fresh clone" holding only the records."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from telly import trainer
from telly.analysis import machine_of
from telly.jsonio import read_json, write_json
from telly.layout import PILOT_DIMENSIONS
from telly.profiles import get_profile
from telly.report import beyond as beyond_report
from telly.report.study import part_lines
from telly.store import RunStore, Variant, this_machine
from telly.studies import freezing as rq3_study
from telly.studies import ledger as ledger_module
from telly.studies import quantisation, study
from telly.studies import records as study_records
from telly.studies import similarity as rq2_study

TASKS = ("code-search", "code-completion")  # one pooled-representation task, one generation task
TINY = get_profile("smoke").changed(name="tiny-study", train_examples=8, valid_examples=8, test_examples=8,
               batch_size=8, epochs=2, patience=2, generation_examples=(8, 8, 8), max_target_tokens=8,
               bootstrap_samples=20, seeds=(0,), sweep_freeze="-1,3", generation_freeze="-1,3",
               probe_functions=48, similarity_functions=12, max_code_tokens=32, probe_epochs=4,
               probe_weight_refits=3)


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A TELLY_CACHE of the test's own, holding a copy of the parsed corpus when there is one."""
    cache = tmp_path / "cache"
    parsed = Path(os.environ.get("TELLY_CACHE", Path.home() / ".cache" / "telly")) / "corpus"
    if parsed.is_dir():
        shutil.copytree(parsed, cache / "corpus")
    monkeypatch.setenv("TELLY_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


REAL_FINETUNE = trainer.finetune
REAL_BEYOND = study.Study.beyond


@pytest.fixture(autouse=True)
def quick_quantisation_check(monkeypatch):
    """The study's last part sweeps MiniLM-L6 twice at laptop sizes: here a stand-in that writes its
    document (the real check has its own test below)."""
    def check(profile, store, *, progress=True):
        document = {"inputs": {"profile": profile.name, "runs": []}, "tasks": {}, "models": list(quantisation.MODELS)}
        store.write_document(quantisation.DOCUMENT, document)
        return document

    monkeypatch.setattr(study, "quantisation_check", check)


@pytest.fixture(autouse=True)
def quick_beyond(monkeypatch):
    """Chapter 5's part trains three methods per seed: here it is marked finished without running
    (the real part has its own test below)."""
    monkeypatch.setattr(study.Study, "beyond", lambda self, part, task: self.ledger.finish(part, ran=False))


def _patch_finetune(monkeypatch, replacement) -> None:
    """Every study module calls trainer.finetune by the name it imported: replace it in each."""
    for module in (study, rq3_study, rq2_study):
        monkeypatch.setattr(module, "finetune", replacement)


def _counting_finetune(monkeypatch, calls: list, die_at: int | None = None):
    """Record each fine-tuned run id; raise KeyboardInterrupt (a kill) on call `die_at`."""
    def finetune(variant, *args, **kwargs):
        calls.append(variant.run_id)
        if die_at is not None and len(calls) == die_at:
            raise KeyboardInterrupt
        return REAL_FINETUNE(variant, *args, **kwargs)

    _patch_finetune(monkeypatch, finetune)


def _stamps(root: Path) -> dict[str, int]:
    """Every JSON record under `root` but the ledger, by path -> modification time."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*.json") if p.name != "study.json"}


def _run(tmp_path, **options):
    return study.run_study("tiny-random", TINY, out=tmp_path / "out", records=tmp_path / "records", tasks=TASKS,
                           progress=False, **options)


def test_the_study_resumes_after_a_kill_and_a_fresh_clone_reruns_nothing(tmp_path, private_cache, monkeypatch):
    records, weights = tmp_path / "records", tmp_path / "out" / study.WEIGHTS_DIR
    full = {task: Variant.of(task, "tiny-random", -1, profile=TINY) for task in TASKS}

    # 1. Killed while the third run (code completion's full fine-tune) trains.
    calls: list[str] = []
    _counting_finetune(monkeypatch, calls, die_at=3)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path)
    ledger = read_json(records / "study.json")
    assert ledger["parts"]["rq3/code-search"]["status"] == "finished"
    assert ledger["parts"]["rq3/code-search"]["wall_seconds"] > 0
    assert ledger["parts"]["rq3/code-completion"]["status"] == "running"
    assert ledger["parts"]["rq1"]["status"] == "finished"  # right after code search, the task it probes
    assert ledger["parts"]["rq2/code-completion"] == {"status": "pending", "wall_seconds": None}  # listed before it is reached
    finished = {path: stamp for path, stamp in _stamps(records).items() if path != "summary.json"}  # summary grows
    assert {f"{Variant.of('code-search', 'tiny-random', k, profile=TINY).run_id}.json" for k in (-1, 3)} \
        <= set(finished) and f"{full['code-completion'].run_id}.json" not in finished
    # A chapter shows the finished parts only: code search's three, none of code completion's yet.
    shown = study_records.load_study(records)
    assert shown.finished("rq3") == ["rq3/code-search"] and shown.unfinished("rq2") == {"rq2/code-completion": "pending"}
    assert {r["task"] for r in shown.runs} == {"code-search"} and len(shown.runs) == 2
    assert list(shown.similarity) == ["code-search"] and [r["model"] for r in shown.probing] == ["tiny-random"]
    assert set(shown.summary["tasks"]) == {"code-search"}

    # 2. Resumed: only code completion's two runs train, then the precision check runs code search's
    # full fine-tune and its deciding Telly-K (one seed: no verdict, so the deepest, 3) again under bf16
    # (the profile trains in float32); nothing finished is written again.
    # On a CPU that would emulate bf16, the precision part fails with why, and the others still run.
    calls.clear()
    _counting_finetune(monkeypatch, calls)
    monkeypatch.setattr(study, "bf16_units", lambda: [])
    monkeypatch.setattr(study, "default_device", lambda: torch.device("cpu"))
    document = _run(tmp_path)
    assert calls == [full["code-completion"].run_id, Variant.of("code-completion", "tiny-random", 3, profile=TINY).run_id]
    assert document["parts"]["precision/code-search"]["status"] == "failed"
    assert "precision/code-search trains under bf16 autocast" in document["parts"]["precision/code-search"]["error"]
    # A machine with bf16 units resumes it.
    calls.clear()
    monkeypatch.setattr(study, "bf16_units", lambda: ["amx_bf16"])
    document = _run(tmp_path)
    assert calls == [full["code-search"].run_id, Variant.of("code-search", "tiny-random", 3, profile=TINY).run_id]
    assert {path: stamp for path, stamp in _stamps(records).items() if path in finished} == finished
    assert [part for part, entry in document["parts"].items() if entry["status"] == "finished"] == study.parts(TASKS)
    assert [session["ran"] for session in document["sessions"][-2:]] == [
        ["rq3/code-completion", "rq2/code-completion", "quantisation/minilm-l6"], ["precision/code-search"]]
    checked = read_json(records / "precision" / f"{full['code-search'].run_id}.json")
    assert checked["mixed_precision"]["training"] == "bf16" and document["parts"]["precision/code-search"]["runs"] == 2
    precision = read_json(records / "precision" / "precision.json")
    assert precision["seeds"] == [0] and [v["run"] for v in precision["variants"]] == ["Base (full)", "Telly-3"]
    assert precision["difference_of_differences"]["run"] == "Telly-3"
    assert (precision["verdict"] == "equivalent") == (max(precision["p_lower"], precision["p_upper"]) < 0.05)
    assert precision["float32"]["value"] == read_json(records / f"{full['code-search'].run_id}.json")["test"]["mrr"]
    worked = {part: entry for part, entry in document["parts"].items() if not part.startswith("beyond/")}  # stand-in
    assert all(entry["wall_seconds"] > 0 for entry in worked.values())
    assert document["wall_seconds"]["total"] == pytest.approx(sum(entry["wall_seconds"] for entry in worked.values()))
    assert document["parts"]["rq3/code-completion"]["runs"] == 2
    assert {"machine", "commit", "date"} <= set(document["parts"]["rq1"])
    assert {"machine", "commit", "started", "updated"} <= set(document["sessions"][-1])
    assert document["depths"] == {task: [-1, 3] for task in TASKS} and document["profile"] == TINY.name
    # RQ2 compared each epoch checkpoint; RQ1 probed the code-search fine-tune; no weights among the records.
    similarity = read_json(records / "similarity" / "similarity-code-completion.json")
    assert [c["label"] for c in similarity["comparisons"]][:2] == ["epoch-1", "epoch-2"]
    probing = read_json(records / "probing" / "tiny-random" / "probing.json")
    assert "finetuned" in probing["backbones"]
    assert (records / "summary.json").exists() and not list(records.rglob("*.safetensors"))
    # Only the full fine-tunes' weights are kept (RQ2 and RQ1 read them).
    assert sorted(p.name for p in weights.iterdir()) == sorted(RunStore(records).run_dir(v).name for v in full.values())

    shown = study_records.load_study(records)
    assert len(shown.runs) == 4 and list(shown.similarity) == list(TASKS) and shown.unfinished("rq3") == {}
    assert shown.precision == precision

    # 3. Rerun on the same machine: nothing trains, nothing is rewritten, no time is added.
    stamps, seconds = _stamps(records), document["wall_seconds"]
    calls.clear()
    again = _run(tmp_path)
    assert calls == [] and _stamps(records) == stamps and again["wall_seconds"] == seconds
    assert again["sessions"][-1]["ran"] == []

    # 4. A fresh clone: the committed records without the weights. Still nothing runs.
    shutil.rmtree(tmp_path / "out")
    fresh = _run(tmp_path)
    assert calls == [] and _stamps(records) == stamps and fresh["wall_seconds"] == seconds

    # 5. ... but a part whose recorded inputs differ from what it would read now runs again, which
    # without weights means fine-tuning its full run again first (its record is replaced).
    ledger = read_json(records / "study.json")
    ledger["parts"]["rq2/code-search"]["inputs"]["finetuned"]["date"] = "1970-01-01T00:00:00+00:00"
    write_json(records / "study.json", ledger)
    redone = _run(tmp_path)
    assert calls == [full["code-search"].run_id]
    assert redone["sessions"][-1]["ran"][0] == "rq2/code-search"
    retrained = read_json(records / f"{full['code-search'].run_id}.json")
    assert redone["parts"]["rq2/code-search"]["inputs"]["finetuned"]["date"] == retrained["provenance"]["date"]
    assert redone["parts"]["rq2/code-search"]["wall_seconds"] > seconds["rq2"] - redone["parts"]["rq2/code-completion"]["wall_seconds"]

    # 6. A task's records removed as stale (its head changed): its RQ3 part runs afresh, and the
    # time the study had measured making them no longer counts.
    for path in records.glob("code-completion__*.json"):
        path.unlink()
    ledger = read_json(records / "study.json")
    ledger["parts"]["rq3/code-completion"]["wall_seconds"] = 1e6
    write_json(records / "study.json", ledger)
    calls.clear()
    rerun = _run(tmp_path)
    assert calls == [full["code-completion"].run_id, Variant.of("code-completion", "tiny-random", 3, profile=TINY).run_id]
    assert 0 < rerun["parts"]["rq3/code-completion"]["wall_seconds"] < 1e5


def test_a_failing_part_is_recorded_and_the_others_still_run(tmp_path, private_cache, monkeypatch):
    attempted = []

    def broken(variant, *args, **kwargs):
        attempted.append(variant.task)
        raise ValueError(f"{variant.task} exploded")

    _patch_finetune(monkeypatch, broken)
    document = study.run_study("tiny-random", TINY, out=tmp_path / "out", records=tmp_path / "records",
                               tasks=["code-completion"], progress=False)
    assert attempted == ["code-completion", "code-completion", "code-search"]  # rq3, rq2, then rq1's fine-tune
    assert {part: entry["status"] for part, entry in document["parts"].items()} == \
        {"rq3/code-completion": "failed", "rq2/code-completion": "failed", "rq1": "failed",
         "quantisation/minilm-l6": "finished", "beyond/code-completion": "finished"}  # (a stand-in here)
    assert document["parts"]["rq1"]["error"] == "ValueError: code-search exploded"  # the others still ran
    assert "rq1: failed" in "\n".join(part_lines(document))


def test_part_lines_follow_the_numbers():
    def document(status, seconds, runs=None):
        entry = {"status": status, "wall_seconds": seconds, **({"runs": runs} if runs is not None else {})}
        return {"parts": {"rq3/code-search": entry},
                "wall_seconds": {"rq1": 0.0, "rq2": 0.0, "rq3": seconds or 0.0, "precision": 0.0,
                                 "quantisation": 60.0, "beyond": 120.0, "total": (seconds or 0.0) + 180.0}}

    finished = part_lines(document("finished", 5400.0, runs=15))
    assert finished[0] == "rq3/code-search: finished, 1.5 h, 15 runs"
    assert finished[-1] == ("measured: RQ3 1.5 h, RQ2 0.0 min, RQ1 0.0 min, precision check 0.0 min, "
                            "quantisation check 1.0 min, beyond (chapter 5) 2.0 min, total 1.6 h")
    assert part_lines(document("running", 90.0))[0] == "rq3/code-search: running, 1.5 min"
    assert part_lines(document("finished", None))[0] == "rq3/code-search: finished, not measured here"


def test_the_cli_names_an_unknown_task_before_anything_runs(tmp_path, capsys):
    from telly.cli import main

    assert main(["study", "--profile", "smoke", "--out", str(tmp_path / "out"), "--records",
                 str(tmp_path / "records"), "--tasks", "code-search,typo"]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert not (tmp_path / "records").exists()


def test_the_study_command_defaults_to_the_code_model_and_its_profile(capsys):
    from telly.cli import build_parser, main

    args = build_parser().parse_args(["study"])
    assert (args.model, args.profile, args.out, args.records) == ("smollm2-135m", get_profile("study"), "runs/study", None)
    assert args.tasks.split(",") == ["code-search", "clone-detection", "code-summarization", "code-generation",
                                     "code-completion"]
    with pytest.raises(SystemExit) as exit_:
        main(["study", "--help"])
    assert exit_.value.code == 0 and "--records" in capsys.readouterr().out


def test_a_folder_without_a_study_shows_nothing(tmp_path):
    empty = study_records.load_study(tmp_path / "nothing-here")
    assert empty.ledger is None and empty.model is None and empty.runs == [] and empty.probing == []
    write_json(tmp_path / "study.json", {"kind": "bench"})
    with pytest.raises(ValueError, match="study.json: not a study ledger"):
        study_records.load_study(tmp_path)


def test_a_planned_profile_runs_rq3_only_for_its_tasks_in_its_order():
    tasks = ["code-search", "clone-detection", "code-summarization", "code-generation"]
    assert study.parts(tasks, ["code-generation", "code-summarization"]) == [
        "rq3/code-generation", "rq2/code-generation", "rq3/code-summarization", "rq2/code-summarization",
        "rq2/code-search", "rq1", "precision/code-generation", "quantisation/minilm-l6",
        "beyond/code-generation", "beyond/code-summarization"]
    assert study.parts(tasks) == ["rq3/code-search", "rq2/code-search", "rq1", "rq3/clone-detection",
                                  "rq2/clone-detection", "rq3/code-summarization", "rq2/code-summarization",
                                  "rq3/code-generation", "rq2/code-generation", "precision/code-search",
                                  "quantisation/minilm-l6", "beyond/code-search", "beyond/clone-detection",
                                  "beyond/code-summarization", "beyond/code-generation"]
    # Chapter 5's methods also run on code completion where the plan gave it no RQ3 part, after the planned tasks;
    # that part trains its full fine-tunes itself, so code completion keeps the pilot's RQ2 as clone detection does.
    assert study.parts([*tasks, "code-completion"], ["code-generation", "code-summarization"])[4:] == [
        "rq2/code-search", "rq1", "precision/code-generation", "quantisation/minilm-l6",
        "beyond/code-generation", "beyond/code-summarization", "beyond/code-completion"]
    planned = TINY.changed(task_sizes=(("code-generation", 5, 8, 8, 8),))
    assert study.planned_tasks(planned) == ["code-generation"] and study.planned_tasks(TINY) == []


def test_the_deciding_depth_is_the_largest_non_inferior_else_the_smallest_inferior_else_the_deepest():
    rows = [{"method": "telly", "freeze": k} for k in (15, 29)]
    assert study.deciding_depth({"largest_non_inferior_k": 15, "smallest_inferior_k": 29, "rows": rows}) == 15
    assert study.deciding_depth({"largest_non_inferior_k": None, "smallest_inferior_k": 29, "rows": rows}) == 29
    assert study.deciding_depth({"largest_non_inferior_k": None, "smallest_inferior_k": None, "rows": rows}) == 29
    assert study.deciding_depth({"rows": []}) is None


def test_the_quantisation_check_sweeps_minilm_and_its_round_trip_then_reads_them_back(tmp_path, private_cache,
                                                                                     monkeypatch):
    tiny = TINY.changed(seeds=(0, 1))
    calls: list[str] = []
    _counting_finetune(monkeypatch, calls)
    document = quantisation.quantisation_check(tiny, RunStore(tmp_path), tasks=("code-search",), progress=False)
    assert sorted(calls) == sorted(Variant.of("code-search", model, k, seed=s, profile=tiny).run_id
                                   for model in quantisation.MODELS for k in (-1, 3) for s in (0, 1))
    entry = document["tasks"]["code-search"]
    assert [r["freeze"] for r in entry["rows"]] == [3] and entry["rows"][0]["seeds"] == [0, 1]
    assert set(entry["full"]) == {"original", "round trip"}
    calls.clear()
    again = quantisation.quantisation_check(tiny, RunStore(tmp_path), tasks=("code-search",), progress=False)
    assert calls == [] and again == read_json(tmp_path / "quantisation.json")


def test_a_planned_study_runs_its_parts_in_the_plans_order(tmp_path, monkeypatch):
    """The run itself follows the plan (not only `parts`): each part's method notes its turn."""
    planned = TINY.changed(task_sizes=(("code-completion", 2, 8, 8, 8),))
    seen = []
    for name in ("rq3", "rq2", "rq1", "precision", "quantisation", "beyond"):
        monkeypatch.setattr(study.Study, name, lambda self, part, *args: seen.append(part))
    document = study.run_study("tiny-random", planned, out=tmp_path / "out", records=tmp_path / "records",
                               tasks=TASKS, progress=False)
    assert seen == study.parts(TASKS, ["code-completion"]) == [
        "rq3/code-completion", "rq2/code-completion", "rq2/code-search", "rq1", "precision/code-completion",
        "quantisation/minilm-l6", "beyond/code-completion"]
    assert list(document["parts"]) == seen


def test_a_bf16_study_is_refused_on_a_cpu_that_would_emulate_bf16(tmp_path, monkeypatch):
    bf16 = TINY.changed(mixed_precision="bf16")
    with pytest.raises(ValueError, match="the study trains under bf16 autocast, and this CPU"):
        study.check_precision("bf16", "the study", torch.device("cpu"), units=[])
    study.check_precision("bf16", "the study", torch.device("cpu"), units=["amx_bf16"])  # the pilot's kind of CPU
    study.check_precision("no", "the study", torch.device("cpu"), units=[])  # float32 trains at full speed anywhere
    study.check_precision("bf16", "the study", torch.device("cuda"), units=[])  # a GPU brings its own bf16
    monkeypatch.setattr(study, "bf16_units", lambda: None)  # no /proc/cpuinfo to ask: not refused
    study.check_precision("bf16", "the study", torch.device("cpu"))
    monkeypatch.setattr(study, "bf16_units", lambda: [])
    monkeypatch.setattr(study, "default_device", lambda: torch.device("cpu"))
    with pytest.raises(ValueError, match="about 26x slower than float32"):  # before anything runs or is written
        study.run_study("tiny-random", bf16, out=tmp_path / "out", records=tmp_path / "records", tasks=TASKS,
                        progress=False)
    assert not (tmp_path / "records" / "study.json").exists()


def test_chapter_5s_methods_run_last_beside_rq3s_full_fine_tunes(tmp_path, private_cache, monkeypatch):
    from telly.methods import BitFit, TellyAuto

    monkeypatch.setattr(study.Study, "beyond", REAL_BEYOND)
    runner = study.Study("tiny-random", TINY, tmp_path / "records", tmp_path / "out", ["code-search"], "stdlib", False)
    monkeypatch.setattr(TellyAuto, "calibration", None)
    with pytest.raises(ValueError, match="not calibrated yet"):  # issue 23: calibrated before any study run
        runner.beyond("beyond/code-search", "code-search")
    monkeypatch.setattr(TellyAuto, "calibration", "a test's")
    with pytest.raises(RuntimeError, match="pairs with rq3/code-search's full fine-tunes of seeds \\[0\\]"):
        runner.beyond("beyond/code-search", "code-search")
    runner.rq3("rq3/code-search", "code-search")
    calls: list[str] = []
    _counting_finetune(monkeypatch, calls)
    runner.beyond("beyond/code-search", "code-search")
    assert [c.split("__")[2] for c in calls] == ["telly-auto", "lora-mlp", "bitfit"]
    entry = read_json(tmp_path / "records" / "study.json")["parts"]["beyond/code-search"]
    assert entry["status"] == "finished" and entry["runs"] == 3
    rows = {r["run"] for r in read_json(tmp_path / "records" / "summary.json")["tasks"]["code-search"]["rows"]}
    assert {"Telly-auto", "BitFit"} <= rows
    assert not any((tmp_path / "out" / study.WEIGHTS_DIR / c).exists() for c in calls)  # records only
    calls.clear()
    runner.beyond("beyond/code-search", "code-search")  # read back: nothing trains
    assert calls == []
    # rq3's full fine-tune made on another machine: a clock anchor (the same full fine-tune) trains here, once
    full_path = runner.store.record_path(runner.full_variant("code-search"))
    write_json(full_path, read_json(full_path) | {"provenance": read_json(full_path)["provenance"] | {"cpu": "Other"}})
    memos = trainer.memo_names("code-search", "tiny-random", TINY.name)
    for name in memos.values():  # marked, to see that the anchor's store reads these and does not compute its own
        write_json(runner.store.document_path(name), read_json(runner.store.document_path(name)) | {"shared": True})
    runner.beyond("beyond/code-search", "code-search")
    assert [c.split("__")[2] for c in calls] == ["full"]
    assert all(read_json(runner.anchor_store().document_path(name))["shared"] for name in memos.values())
    entry = read_json(tmp_path / "records" / "study.json")["parts"]["beyond/code-search"]
    assert entry["clock_anchor"]["run"] == calls[0] and entry["clock_anchor"]["seconds"] > 0
    anchors = study_records.load_study(tmp_path / "records").clock_anchors
    assert [(a["method"], a["seed"], machine_of(a)) for a in anchors] == [("full", 0, this_machine())]
    assert study_records.load_study(tmp_path / "records").pilot_dimensions is None
    write_json(tmp_path / "records" / f"{PILOT_DIMENSIONS}.json", {"kind": "telly-auto pilot dimensions", "pilots": []})
    assert study_records.load_study(tmp_path / "records").pilot_dimensions["kind"] == "telly-auto pilot dimensions"
    assert not any((tmp_path / "out" / study.WEIGHTS_DIR / study.CLOCK_DIR).glob("*/*/"))  # records only
    calls.clear()
    runner.beyond("beyond/code-search", "code-search")
    assert calls == []
    # on a third machine, where none of the methods ran, no anchor is needed
    monkeypatch.setattr(study, "this_machine", lambda: ("cpu: elsewhere", "Third"))
    runner.beyond("beyond/code-search", "code-search")
    assert calls == []
    # A backbone without bias terms (SmolLM2): BitFit is left out, with why, and nothing else changes.
    monkeypatch.setattr(BitFit, "bias_names", staticmethod(lambda module: []))
    runner.beyond("beyond/code-search", "code-search")
    assert calls == []
    shown = study_records.load_study(tmp_path / "records")
    assert shown.not_applicable == {"bitfit": "tiny-random has no bias terms, the only backbone parameters BitFit trains"}
    assert "**BitFit not run:** tiny-random has no bias terms" in beyond_report.study_status(shown.runs, shown.not_applicable)


def test_chapter_5s_methods_on_a_task_without_rq3_train_their_own_full_fine_tunes(tmp_path, private_cache,
                                                                                  monkeypatch):
    from telly.methods import TellyAuto

    monkeypatch.setattr(study.Study, "beyond", REAL_BEYOND)
    monkeypatch.setattr(TellyAuto, "calibration", "a test's")
    monkeypatch.setattr(study, "BEYOND_UNPLANNED", ("code-search",))  # the cheap task stands in for code completion
    planned = TINY.changed(task_sizes=(("code-completion", 1, 8, 8, 8),))
    runner = study.Study("tiny-random", planned, tmp_path / "records", tmp_path / "out", list(TASKS), "stdlib", False)
    assert runner.parts[-2:] == ["beyond/code-completion", "beyond/code-search"]
    calls: list[str] = []
    _counting_finetune(monkeypatch, calls)
    runner.beyond("beyond/code-search", "code-search")
    assert [c.split("__")[2] for c in calls] == ["full", "telly-auto", "lora-mlp", "bitfit"]
    weights = tmp_path / "out" / study.WEIGHTS_DIR
    assert (weights / calls[0]).exists() and not any((weights / c).exists() for c in calls[1:])  # rq2's run stays
    summary = read_json(tmp_path / "records" / "summary.json")
    assert list(summary["tasks"]) == ["code-search"] and {"Telly-auto", "LoRA"} <= {
        r["run"].split(" ")[0] for r in summary["tasks"]["code-search"]["rows"]}
    shown = study_records.load_study(tmp_path / "records")
    assert shown.runs == [] and shown.beyond_tasks == ["code-completion", "code-search"]
    assert sorted(r["method"] for r in shown.beyond_runs) == ["bitfit", "full", "lora", "telly-auto"]
    assert shown.summary == summary
    # a task with no rq2 part (clone detection under this plan): nothing reads its full fine-tune's weights
    unread = Variant.of("clone-detection", "tiny-random", -1, seed=0, profile=planned)
    runner.store.run_dir(unread).mkdir(parents=True)
    runner.drop_weights("clone-detection", [unread])
    assert not runner.store.run_dir(unread).exists() and (weights / calls[0]).exists()


def test_a_part_killed_before_its_first_run_ended_keeps_its_time(tmp_path, monkeypatch):
    """A killed session's measured time stays with the unfinished part when the next session starts it
    with no current record; only a finished part whose records went stale starts its time again."""
    clock = iter(range(0, 1000, 100))
    monkeypatch.setattr(ledger_module.time, "perf_counter", lambda: float(next(clock)))
    monkeypatch.setattr(ledger_module, "git_state", lambda: {"commit": None, "dirty": None})
    header = {"kind": "study", "inputs": {"model": "m"}}
    first = ledger_module.Ledger(RunStore(tmp_path), header, ["rq3/t"])
    first.start("rq3/t", afresh=True)
    first.tick()  # an epoch, then the session is killed
    assert first.entry("rq3/t")["wall_seconds"] == 100
    second = ledger_module.Ledger(RunStore(tmp_path), header, ["rq3/t"])
    second.start("rq3/t", afresh=True)
    second.finish("rq3/t", ran=True)
    assert second.entry("rq3/t")["wall_seconds"] == 200
    third = ledger_module.Ledger(RunStore(tmp_path), header, ["rq3/t"])
    third.start("rq3/t", afresh=True)  # its records were removed as stale
    assert third.entry("rq3/t")["wall_seconds"] is None


def test_a_part_the_study_no_longer_has_leaves_the_ledger_unless_time_was_measured_on_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_module, "git_state", lambda: {"commit": None, "dirty": None})
    header = {"kind": "study", "inputs": {"model": "m"}}
    first = ledger_module.Ledger(RunStore(tmp_path), header, ["rq3/t", "rq2/t", "rq2/u", "rq2/v", "rq2/w"])
    first.start("rq2/t")
    first.finish("rq2/t", ran=True)
    first.start("rq2/w")  # killed before it measured anything
    first.start("rq2/u")
    first.tick()  # killed while running, after an epoch
    again = ledger_module.Ledger(RunStore(tmp_path), header, ["rq3/t", "beyond/t"])
    assert list(again.document["parts"]) == ["rq3/t", "rq2/t", "rq2/u", "beyond/t"]  # rq2/v, rq2/w: nothing measured
    assert again.entry("rq2/t")["status"] == "finished" and again.entry("rq2/u")["status"] == "running"
