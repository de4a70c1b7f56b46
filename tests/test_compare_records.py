"""tools/compare_records.py: what a refactor must not change in a results store, and what it may."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("compare_records", ROOT / "tools" / "compare_records.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(root: Path, name: str, record: dict) -> None:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(json.dumps(record))


RECORD = {"data": {"fingerprint": "abc", "sizes": {"test": 4}}, "test": {"mrr": 0.5},
          "test_per_example": {"reciprocal_rank": [1.0, 0.5, 0.25, 0.25]}, "wall_seconds": 10.0,
          "provenance": {"date": "2026-12-06", "versions": {"torch": "2.13.0"}}, "epochs": [{"train_seconds": 3.0}]}


def test_timings_dates_and_versions_may_differ_numbers_and_fingerprints_may_not(tmp_path, capsys):
    tool = _tool()
    before, after = tmp_path / "before", tmp_path / "after"
    _write(before, "run.json", RECORD)
    _write(after, "run.json", RECORD | {"wall_seconds": 99.0, "provenance": {"date": "2027-01-01"},
                                        "epochs": [{"train_seconds": 9.0}]})
    assert tool.main([str(before), str(after)]) == 0
    assert "1 files in both stores, 0 differences" in capsys.readouterr().out

    _write(after, "run.json", RECORD | {"data": {"fingerprint": "abd", "sizes": {"test": 4}}, "test": {"mrr": 0.51}})
    _write(after, "extra/similarity.json", {"layers": []})
    assert tool.main([str(before), str(after)]) == 1
    out = capsys.readouterr().out
    assert "run.json/data/fingerprint: 'abc' before, 'abd' after" in out
    assert "run.json/test/mrr: 0.5 before, 0.51 after" in out
    assert "extra/similarity.json: only in after" in out


def test_a_missing_store_is_named(tmp_path, capsys):
    assert _tool().main([str(tmp_path / "nowhere"), str(tmp_path)]) == 2
    assert "nowhere: not a folder" in capsys.readouterr().err
