"""telly.report.study: what a chapter says about the study's records, from a hand-made ledger."""
from __future__ import annotations

from pathlib import Path

from telly.report import study as report
from telly.studies.study import StudyRecords

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


def test_the_box_says_where_and_when_the_shown_parts_were_measured():
    finished = {"status": "finished", "wall_seconds": 5400.0, "machine": "cpu (Xeon)", "commit": "0123456789abcdef",
                "dirty": True, "date": "2026-12-01T13:00:00+00:00"}
    study = _study({"rq1": finished, "rq3/code-search": {"status": "pending", "wall_seconds": None}})
    rows = dict(report.study_box(study, "rq1", [{"provenance": PROVENANCE}]).rows)
    assert rows["parts"] == "rq1" and rows["machine"] == "cpu (Xeon)" and rows["measured wall time"] == "1.5 h"
    assert rows["commit"] == "0123456789ab (with uncommitted changes)" and rows["finished"] == finished["date"]
    assert rows["profile"] == "study" and rows["model"] == "smollm2-135m" and "torch 2.13.0" in rows["versions"]
    assert report.study_box(study, "rq3", []) is None  # nothing finished: no box


def test_sources_come_study_first_and_only_when_they_hold_something():
    study = _study({})
    blocks = report.shown(study, ["study record"], ["live record"], model="minilm-l6", profile="laptop")
    assert list(blocks.values()) == [["study record"], ["live record"]]
    assert list(blocks)[0].startswith("smollm2-135m: the code-model study") and "live run" in list(blocks)[1]
    assert list(report.shown(study, [], ["live"], model="minilm-l6", profile="laptop").values()) == [["live"]]
    assert [h for h, _ in report.headed(study, [{"model": "smollm2-135m"}], [{"model": "minilm-l6"}], profile="laptop")] \
        == [report.study_heading(study), report.live_heading("minilm-l6", "laptop")]
