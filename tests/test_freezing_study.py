import os
from dataclasses import replace
from pathlib import Path

import pytest

from telly import cli, trainer
from telly.methods import Full, LoRA, Telly
from telly.profiles import get_profile
from telly.report.freezing import compare_to_full, degenerate_findings, freeze_findings, freeze_table
from telly.store import RunStore, Variant
from telly.studies.freezing import parse_freeze, plan, sweep

UNIT = replace(get_profile("smoke"), name="unit", train_examples=8, valid_examples=8, test_examples=8,
               batch_size=8, epochs=1, bootstrap_samples=20)


def test_parse_freeze_accepts_lists_ranges_and_all():
    assert parse_freeze("-1,0,3", 6) == [-1, 0, 3]
    assert parse_freeze("-1..2", 6) == [-1, 0, 1, 2]
    assert parse_freeze("all", 4) == [-1, 0, 1, 2, 3]
    assert parse_freeze([2, 2, 0], 4) == [2, 0]
    with pytest.raises(ValueError, match=r"\[6\] out of range -1\.\.5"):
        parse_freeze("0,6", 6)
    with pytest.raises(ValueError, match="'x' is not an integer"):
        parse_freeze("0,x", 6)


def test_plan_collapses_telly_minus_one_into_full_and_checks_names():
    variants = plan(["code-search"], [-1, 2], [0, 1], ["full", "telly", "lora"], model="m", profile="unit")
    assert variants == [Variant("code-search", "m", Full(), 0, "unit"), Variant("code-search", "m", Full(), 1, "unit"),
                        Variant("code-search", "m", Telly(2), 0, "unit"), Variant("code-search", "m", Telly(2), 1, "unit"),
                        Variant("code-search", "m", LoRA(), 0, "unit"), Variant("code-search", "m", LoRA(), 1, "unit")]
    assert [v.run_id for v in variants[::2]] == ["code-search__m__full__seed0__unit", "code-search__m__telly2__seed0__unit",
                                                "code-search__m__lora__seed0__unit"]
    assert [v.label for v in variants[::2]] == ["Full fine-tuning", "Telly-2 cached", "LoRA"]
    with pytest.raises(ValueError, match="unknown task"):
        plan(["code-search", "typo"], [0], [0], ["telly"], model="m", profile="unit")
    with pytest.raises(ValueError, match="unknown method"):
        plan(["code-search"], [0], [0], ["prefix-tuning"], model="m", profile="unit")


def test_a_killed_sweep_resumes_with_only_the_unfinished_run(tmp_path, monkeypatch):
    real = trainer.finetune
    calls = []

    def dies_on_second_run(*args, **kwargs):
        calls.append(args[0].freeze)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the sweep is killed while the second run trains
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "finetune", dies_on_second_run)
    with pytest.raises(KeyboardInterrupt):
        sweep(["code-search"], "2,3", [0], model="tiny-random", profile=UNIT, store=tmp_path, progress=False)
    first = RunStore(tmp_path).record_path(Variant.of("code-search", "tiny-random", 2, profile="unit"))
    second = RunStore(tmp_path).record_path(Variant.of("code-search", "tiny-random", 3, profile="unit"))
    assert first.exists() and not second.exists()
    stamp = first.stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(trainer, "finetune", lambda *a, **k: calls.append(a[0].freeze) or real(*a, **k))
    result = sweep(["code-search"], "2,3", [0], model="tiny-random", profile=UNIT, store=tmp_path, progress=False)
    assert calls == [3]  # only the unfinished run is redone
    assert result["skipped"] == [first.stem] and len(result["records"]) == 2 and not result["failed"]
    assert first.stat().st_mtime_ns == stamp and second.exists()

    calls.clear()
    sweep(["code-search"], "2,3", [0], model="tiny-random", profile=UNIT, store=tmp_path, force=True, progress=False)
    assert len(calls) == 2  # --force reruns everything

    calls.clear()  # records made under other settings of the same profile name are not reused
    sweep(["code-search"], "2,3", [0], model="tiny-random", profile=replace(UNIT, learning_rate=1e-3),
          store=tmp_path, progress=False)
    assert calls == [2, 3]


def test_a_damaged_record_is_rerun(tmp_path, monkeypatch):
    path = RunStore(tmp_path).record_path(Variant.of("code-search", "tiny-random", 3, profile="unit"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"run": "half')
    calls = []
    monkeypatch.setattr(trainer, "finetune", lambda *a, **k: calls.append(a) or {"run": "x"})
    sweep(["code-search"], "3", [0], model="tiny-random", profile=UNIT, store=tmp_path, progress=False)
    assert len(calls) == 1


def test_sweep_cli_rejects_bad_input_before_running(tmp_path, capsys):
    assert cli.main(["sweep", "--tasks", "code-search,nope", "--model", "tiny-random", "--profile", "smoke",
                     "--out", str(tmp_path)]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert cli.main(["sweep", "--tasks", "code-search", "--freeze=-1..9", "--model", "tiny-random",
                     "--profile", "smoke", "--out", str(tmp_path)]) == 2
    assert "out of range -1..3" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    profile = replace(UNIT, train_examples=16, test_examples=16, epochs=2)
    sweep(["code-search"], "-1,2,3", [0], model="tiny-random", profile=profile, store=out, progress=False)
    return out


def test_freeze_table_compares_every_depth_to_full_fine_tuning(tiny_sweep):
    records = RunStore(tiny_sweep).records(model="tiny-random", profile="unit")
    assert len(records) == 3 and not RunStore(tiny_sweep).records(profile="laptop")
    table = freeze_table(records)
    assert list(table.freeze) == [-1, 2, 3] and list(table.method) == ["full", "telly", "telly"]
    full = table.iloc[0]
    assert full.epoch_seconds_ratio == 1.0 and full.within_full_ci
    assert table.trainable_millions.is_monotonic_decreasing
    for row in table.itertuples():
        assert row.low <= row.value <= row.high
        assert row.within_full_ci == (row.value >= full.low)
    with pytest.raises(ValueError, match="run the sweep first"):
        freeze_table([])


def test_compare_to_full_and_generated_findings(tiny_sweep):
    records = RunStore(tiny_sweep).records()
    comparisons = compare_to_full(records, "code-search", samples=100)
    assert set(comparisons.method) == {"telly", "zero-shot"} and len(comparisons) == 3
    for row in comparisons.itertuples():
        assert row.low <= row.difference <= row.high and 0 <= row.p_value <= 1
    text = freeze_findings(freeze_table(records), comparisons)
    full = freeze_table(records).iloc[0]
    assert text.startswith("**code-search**") and f"mrr {full.value:.3f}" in text
    assert ("stays within that CI for K =" in text) or ("No Telly-K run" in text)
    with pytest.raises(ValueError, match="no full fine-tuning record"):
        compare_to_full([r for r in records if r["method"] != "full"], "code-search")


def test_freeze_results_chart_and_paper_rows(tiny_sweep):
    from telly.report.charts import freeze_results_chart
    from telly.report.paper import paper_telly_rows, paper_trainable_millions

    table = freeze_table(RunStore(tiny_sweep).records())
    spec = freeze_results_chart(table, "code-search").to_dict()
    assert [len(row["hconcat"]) for row in spec["vconcat"]] == [2, 2]  # two panels abreast, readable on a page
    with pytest.raises(ValueError, match="no full or Telly-K rows"):
        freeze_results_chart(table, "clone-detection")
    assert paper_trainable_millions(0) == 85.05 and paper_trainable_millions(11) == 7.09
    rows = paper_telly_rows(["code-search"])
    assert {r["freeze"] for r in rows} == {-1, 5, 8, 10, 11}
    assert next(r for r in rows if r["freeze"] == 5)["epoch_seconds"] == 11 * 60 + 42
    with pytest.raises(ValueError, match="no Telly-K results"):
        paper_telly_rows(["type-inference"])


def _generation_record(freeze, bleu, reasons):
    return {"task": "code-summarization", "method": "full" if freeze == -1 else "telly", "freeze": freeze,
            "metric": "bleu", "test": {"bleu": bleu, "degenerate": float(bool(reasons))},
            "generation": {"degenerate": {"is_degenerate": bool(reasons), "reasons": reasons}}}


def test_degenerate_findings_name_the_degenerate_runs_from_the_records():
    records = [_generation_record(-1, 0.042, []), _generation_record(5, 0.011, ["all 8 predictions are identical: 'the'"]),
               {"task": "code-search", "method": "full", "freeze": -1, "metric": "mrr", "test": {"mrr": 0.5}}]
    text = degenerate_findings(records)
    assert "code-search" not in text and "best test bleu 0.042 over 2 runs" in text
    assert "1 of 2 runs" in text and "Telly-5 (all 8 predictions are identical: 'the')" in text
    assert "Base (full)" not in text
    assert "no run's outputs are degenerate" in degenerate_findings([_generation_record(-1, 0.1, [])])
    assert degenerate_findings(records[2:]) == ""


def test_a_real_data_run_never_reuses_or_mixes_with_the_offline_run(tmp_path):
    data = tmp_path / "csn"
    (data / "python").mkdir(parents=True)
    for split in ("train", "valid", "test"):  # the three splits of a tiny CodeXGLUE-layout copy
        (data / "python" / f"{split}.jsonl").write_text(
            Path("tests/data/codesearchnet/python/train.jsonl").read_text())
    offline = sweep(["code-search"], "3", [0], model="tiny-random", profile=UNIT, store=tmp_path, progress=False)
    real = sweep(["code-search"], "3", [0], model="tiny-random", profile=UNIT, store=tmp_path, progress=False,
                 data_paths={"code-search": str(data)})
    assert not real["skipped"] and not real["failed"]  # the offline record is not taken for it
    assert real["records"][0]["run"] != offline["records"][0]["run"]
    assert "__data-csn-" in real["records"][0]["run"]
    assert real["records"][0]["data"]["source"] != offline["records"][0]["data"]["source"]
    assert [r["run"] for r in RunStore(tmp_path).records()] == [offline["records"][0]["run"]]
    assert [r["run"] for r in RunStore(tmp_path).records(data_paths={"code-search": data})] == [real["records"][0]["run"]]
    again = sweep(["code-search"], "3", [0], model="tiny-random", profile=UNIT, store=tmp_path, progress=False,
                  data_paths={"code-search": str(data)})
    assert again["skipped"] == [real["records"][0]["run"]]
    with pytest.raises(ValueError, match=r"data paths given for task\(s\) \['clone-detection'\]"):
        sweep(["code-search"], "3", [0], model="tiny-random", profile=UNIT, store=tmp_path, progress=False,
              data_paths={"clone-detection": str(data)})
    assert cli.main(["sweep", "--tasks", "code-search", "--freeze", "3", "--data", "code-search"]) == 2


def test_the_freeze_explorer_redraws_on_the_slider_and_trains_a_missing_depth(tiny_sweep, tmp_path):
    import shutil

    from telly.studies.freezing import FreezeExplorer

    store = tmp_path / "store"
    shutil.copytree(tiny_sweep, store)
    profile = replace(UNIT, train_examples=16, test_examples=16, epochs=2)
    explorer = FreezeExplorer("code-search", "tiny-random", profile, store, start=2)

    def marked(chart):  # the depth the chart's red rule marks, and the depths it plots
        spec = chart.to_dict()
        datasets = spec["datasets"].values()
        rule = [row["freeze"] for rows in datasets for row in rows if set(row) == {"freeze", "run"}]
        plotted = sorted({row["freeze"] for rows in datasets for row in rows if "value" in row and "run" in row})
        return rule, plotted

    assert marked(explorer.chart) == ([2], [-1, 2, 3]) and explorer.button.disabled
    explorer.slider.value = 1  # not run yet: the chart marks it, the button offers to train it
    assert marked(explorer.chart) == ([1], [-1, 2, 3])
    assert not explorer.button.disabled and "not run yet" in explorer.status.value
    explorer.button.click()
    record = RunStore(store).find(Variant.of("code-search", "tiny-random", 1, profile="unit"), profile)
    assert record is not None and record["freeze"] == 1
    assert explorer.progress.value == explorer.progress.max == profile.epochs
    assert marked(explorer.chart) == ([1], [-1, 1, 2, 3]) and explorer.button.disabled
