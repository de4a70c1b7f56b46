"""telly.report.study: what a chapter says about the study's records, from a hand-made ledger."""
from __future__ import annotations

from pathlib import Path

from telly.profiles import get_profile
from telly.report import study as report
from telly.studies.records import StudyRecords

PROVENANCE = {"model": "smollm2-135m", "profile": "study", "corpus_fingerprint": "abc", "device": "cpu",
              "date": "2026-12-01T12:00:00+00:00", "versions": {"torch": "2.13.0"}}


def _study(parts: dict) -> StudyRecords:
    ledger = {"kind": "study", "model": "smollm2-135m", "profile": "study", "parts": parts}
    return StudyRecords(Path("book/records/smollm2-135m"), ledger, [], {}, [], None)


def test_status_names_what_is_shown_and_what_is_not_there_yet():
    study = _study({"rq3/code-search": {"status": "finished", "wall_seconds": 3000.0},
                    "rq3/clone-detection": {"status": "running", "wall_seconds": 60.0},
                    "rq1": {"status": "pending", "wall_seconds": None}})
    text = report.study_status(study, "rq3")
    assert "(1 of 2 parts finished)" in text and "rq3/clone-detection (started, not finished)" in text and "rq1" not in text
    assert "No study records" in report.study_status(StudyRecords(Path("x"), None, [], {}, [], None), "rq1")
    assert "has no precision check part yet" in report.study_status(study, "precision")


def test_the_box_says_where_and_when_the_shown_parts_were_measured():
    finished = {"status": "finished", "wall_seconds": 5400.0, "machine": "cpu (Xeon)", "commit": "0123456789abcdef",
                "dirty": True, "date": "2026-12-01T13:00:00+00:00"}
    study = _study({"rq1": finished, "rq3/code-search": {"status": "pending", "wall_seconds": None}})
    rows = dict(report.study_box(study, "rq1", [{"provenance": PROVENANCE}]).rows)
    assert rows["parts"] == "rq1" and rows["machine"] == "cpu (Xeon)" and rows["measured wall time"] == "1.5 h"
    assert rows["commit"] == "0123456789ab (with uncommitted changes)" and rows["finished"] == finished["date"]
    assert rows["profile"] == "study" and rows["model"] == "smollm2-135m" and "torch 2.13.0" in rows["versions"]
    assert rows["backbone"].startswith("SmolLM2-135M-Instruct, quantised to 4 bits (Q4_1) and dequantised")
    run = {"provenance": PROVENANCE, "task": "code-search", "mixed_precision": {"training": "bf16"},
           "data": {"sizes": {"train": 160, "valid": 64, "test": 200}, "source": "stdlib corpus abc"}}
    scaled = dict(report.study_box(study, "rq1", [run]).rows)
    assert scaled["splits"] == "code-search: 160 train, 64 valid, 200 test (stdlib corpus abc)"
    assert scaled["training precision"] == "bf16 autocast"
    assert report.study_box(study, "rq3", []) is None  # nothing finished: no box


def test_sources_come_studies_first_in_order_and_only_when_they_hold_something():
    from dataclasses import replace

    laptop = get_profile("laptop")
    pilot, resized = replace(_study({}), root=Path("records/smollm2-135m-pilot")), _study({})
    blocks = report.shown([(pilot, ["pilot record"]), (resized, ["resized record"])], ["live record"],
                          model="minilm-l6", profile=laptop)
    assert list(blocks.values()) == [["pilot record"], ["resized record"], ["live record"]]
    assert list(blocks)[0] == ("smollm2-135m: the code-model study's records in `records/smollm2-135m-pilot` "
                               "(profile `study`)")
    assert "`book/records/smollm2-135m`" in list(blocks)[1] and "live run" in list(blocks)[2]
    assert list(report.shown([(pilot, []), (resized, None)], ["live"], model="minilm-l6", profile=laptop).values()) \
        == [["live"]]
    no_ledger = StudyRecords(Path("x"), None, [], {}, [], None)
    assert list(report.shown([(no_ledger, ["orphan"])], [], model="minilm-l6", profile=laptop)) == []
    pairs = report.headed([(pilot, [{"model": "smollm2-135m"}]), (resized, [])], [{"model": "minilm-l6"}], profile=laptop)
    assert [h for h, _ in pairs] == [report.study_heading(pilot), report.live_heading("minilm-l6", laptop)]


def test_the_bench_and_precision_notes_say_where_they_come_from_and_follow_the_check():
    from dataclasses import replace

    study = _study({"precision/code-search": {"status": "pending", "wall_seconds": None}})
    assert "No bench of the study's model" in report.bench_origin(study)
    bench = {"profile": "study", "sections": ["training"], "device": "cpu: 2 cores", "cpu": "Xeon",
             "device_type": "cpu", "wall_seconds": 456.0, "provenance": {"date": "2026-12-01T13:30:43+00:00"}}
    text = report.bench_origin(replace(study, bench=bench))
    assert "`telly bench --model smollm2-135m --profile study --sections training`" in text
    assert "on 2026-12-01, 7.6 min of benching" in text and "not rerun by this build" in text
    # No check yet: the ledger's state; a finished check: its verdict, in words that follow it.
    assert "precision check part" in report.precision_note(study) and "(0 of 1 parts finished)" in report.precision_note(study)
    check = {"task": "code-search", "run": "Full fine-tuning", "metric": "mrr", "margin": 0.02, "seeds": [0, 1, 2],
             "alpha": 0.05, "float32": {"value": 0.70, "epoch_seconds": 10.0}, "bf16": {"value": 0.69, "epoch_seconds": 6.0},
             "difference": -0.01, "low": -0.03, "high": 0.01, "p_lower": 0.2, "p_upper": 0.001, "verdict": "not shown",
             "epoch_ratio": 0.6, "timing": "separate runs"}
    note = report.precision_note(replace(study, precision=check))
    assert "mrr 0.690 under bf16 autocast against 0.700 in float32" in note
    assert "a difference below -0.02 cannot be ruled out" in note and "0.60x float32's" in note
    shown = report.precision_note(replace(study, precision=check | {"verdict": "equivalent", "p_lower": 0.01}))
    assert "keeps the quality within the margin" in shown and "ruled out" not in shown


def _row(freeze, verdict, low, high, **extra):
    return {"method": "telly", "freeze": freeze, "verdict": verdict, "low": low, "high": high,
            "seed_sd": 1.0, "row_se": 0.5, "units": 120, **extra}


SUMMARY = {"tasks": {
    "code-generation": {"margin": 2.0, "largest_non_inferior_k": 15, "smallest_inferior_k": 29, "no_verdict": [],
                        "scale": {"sizes": {"train": 160, "valid": 32, "test": 120}, "seeds": 3, "precision": "bf16"},
                        "rows": [_row(15, "non-inferior", -1.0, 1.5), _row(25, "inconclusive", -3.5, 0.5),
                                 _row(29, "inferior", -9.0, -6.0)]},
    "code-search": {"margin": 0.02, "largest_non_inferior_k": None, "smallest_inferior_k": None, "rows": [],
                    "no_verdict": ["full fine-tuning does not beat lexical ranker (TF-IDF)"], "scale": {"seeds": 3}},
}}
PLAN = {"half_width_share": 0.6, "min_seeds": 5, "hours": 4.0, "budget_hours": 9.0, "depths": [-1, 6, 15, 29],
        "tasks": {"code-generation": {"metric": "bleu", "margin": 2.0, "target_half_width": 1.2, "depths": [-1, 15, 29],
                                      "choice": {"seeds": 5, "test_rows": 445, "hours": 0.86, "expected_half_width": 1.19}},
                  "code-search": {"metric": "mrr", "margin": 0.02, "target_half_width": 0.012,
                                  "why_not": "in the pilot full fine-tuning did not beat TF-IDF"}}}


def test_the_decisive_rows_follow_the_verdicts_and_say_what_would_decide():
    rows = {row["task"]: row for row in report.decisive_rows(SUMMARY, plan=PLAN)}
    generation = rows["code-generation"]
    assert generation["non-inferior up to K"] == 15 and generation["inferior from K"] == 29
    assert generation["inconclusive K"].startswith("25 (needs ") and "seeds x" in generation["inconclusive K"]
    assert generation["half-width achieved"] == 2.0 and generation["half-width planned"] == 1.19
    assert generation["scale"].startswith("160 train, 32 valid, 120 test examples") and "3 seeds" in generation["scale"]
    search = rows["code-search"]
    assert search["no verdict because"] == "full fine-tuning does not beat lexical ranker (TF-IDF)"
    assert search["inconclusive K"] == "-" and search["half-width planned"] is None
    # the sizes that would decide follow the measured spread: a wider one needs more
    calm = report.sizes_to_decide(_row(25, "inconclusive", -1, 1, seed_sd=0.5, row_se=0.2), 2.0)
    noisy = report.sizes_to_decide(_row(25, "inconclusive", -1, 1, seed_sd=3.0, row_se=0.2), 2.0)
    assert int(calm.split()[0]) < int(noisy.split()[0]) or "more than" in noisy


def test_the_plan_table_puts_the_plan_beside_what_was_achieved():
    ledger = {"parts": {"rq3/code-generation": {"status": "finished", "wall_seconds": 3600.0}}}
    achieved = {"tasks": {"code-generation": {"seeds": [0, 1, 2, 3, 4], "rows": SUMMARY["tasks"]["code-generation"]["rows"]}}}
    table = report.plan_table(PLAN, achieved=achieved, ledger=ledger)
    row = table.loc["code-generation (bleu, margin 2)"]
    assert row["plan"] == "5 seeds x 445 test rows, depths -1, 15, 29"
    assert row["half-width: target / expected / achieved"] == "1.2 / 1.19 / 2 (5 seeds)"
    assert row["CPU h: planned / measured"] == "0.86 / 1.00"
    assert table.loc["code-search (mrr, margin 0.02)", "plan"] == "in the pilot full fine-tuning did not beat TF-IDF"
    assert report.plan_table(PLAN).loc["code-generation (bleu, margin 2)", "CPU h: planned / measured"] == "0.86 / -"
    running = {"parts": {"rq3/code-generation": {"status": "running", "wall_seconds": 900.0}}}
    assert report.plan_table(PLAN, ledger=running).loc["code-generation (bleu, margin 2)",
                                                       "CPU h: planned / measured"] == "0.86 / 0.25 so far"
    text = report.plan_prose(PLAN)
    assert "dropped depths 6 (depths go before seeds and rows)" in text and "No runs for code-search" in text
    assert "4.00 of a 9-hour budget" in text and "rescaled" not in text
    scaled = report.plan_prose(PLAN | {"machine_scale": {"code-generation": {"train_per_example": 2.93, "eval_per_row": 2.1},
                                                         "code-summarization": {"train_per_example": 2.77, "eval_per_row": 2.43}}})
    assert "rescaled to the machine that runs the study" in scaled and "training 2.8-2.9x and decoding or scoring 2.1-2.4x" in scaled


def test_the_lead_verdicts_are_the_resized_studys_where_its_part_landed():
    resized = {"tasks": {"code-generation": SUMMARY["tasks"]["code-generation"] | {"largest_non_inferior_k": 29}}}
    latest = report.latest_summary(SUMMARY, resized)
    assert latest["tasks"]["code-generation"]["source"] == "re-sized study"
    assert latest["tasks"]["code-generation"]["largest_non_inferior_k"] == 29
    assert latest["tasks"]["code-search"]["source"] == "pilot"
    text = report.decisive_markdown(latest, plan=PLAN)
    assert "**code-generation**, re-sized study (" in text and "**code-search**, pilot (" in text
    assert report.latest_summary(None, None) == {"tasks": {}}
    # Chapter 5's runs of a task the plan gave no sweep (full fine-tuning beside LoRA) do not replace its verdicts.
    lora_only = {"rows": [{"run": "LoRA", "method": "lora", "freeze": None, "verdict": "inconclusive"}]}
    assert report.latest_summary(SUMMARY, {"tasks": {"code-search": lora_only}})["tasks"]["code-search"]["source"] == "pilot"


def test_the_decisive_blocks_say_the_same_in_words():
    text = report.decisive_markdown(SUMMARY, plan=PLAN)
    assert "**code-generation** (160 train, 32 valid, 120 test examples" in text
    assert "keeps quality (non-inferior) up to K = 15; loses it (inferior) from K = 29" in text
    assert "- inconclusive: K = 25 (needs " in text and "the re-sized study plans 1.19" in text
    assert "- no verdict: full fine-tuning does not beat lexical ranker (TF-IDF)" in text
    undecided = {"tasks": {"code-generation": SUMMARY["tasks"]["code-generation"]
                           | {"largest_non_inferior_k": None, "smallest_inferior_k": None}}}
    assert "- no depth is shown to keep quality; no depth swept is shown to lose it" in report.decisive_markdown(undecided)
    kept = {"tasks": {"code-generation": SUMMARY["tasks"]["code-generation"]
                      | {"largest_non_inferior_k": 29, "smallest_inferior_k": None}}}
    assert "- keeps quality (non-inferior) up to K = 29; no depth swept is shown to lose it" in \
        report.decisive_markdown(kept)


def test_the_sweep_view_leaves_out_chapter_5s_tasks_that_have_no_sweep():
    from dataclasses import replace

    from telly.studies.records import load_study

    study = load_study(Path(__file__).resolve().parents[1] / "book" / "records" / "smollm2-135m")  # the committed one
    lora_only = {"rows": [{"run": "LoRA", "method": "lora", "freeze": None, "verdict": "inconclusive"}]}
    with_beyond = replace(study, summary={**study.summary, "tasks": {**study.summary["tasks"], "code-completion": lora_only}})
    view = report.sweep_view(with_beyond)
    assert set(view["summary"]["tasks"]) == {r["task"] for r in study.runs} == {"code-generation", "code-summarization"}
