import os
from pathlib import Path

import numpy as np
import pytest

from telly import cli, trainer
from telly.analysis import non_inferiority_summary, precision_check
from telly.methods import Full, LoRA, Telly
from telly.profiles import get_profile
from telly.report.freezing import example_outputs, freeze_table, ours_table, paper_table, summary_table, table_view
from telly.report.freezing_prose import (
    bench_note,
    degenerate_findings,
    freeze_findings,
    generation_note,
    precision_text,
    sound_share,
    swept_depths,
    training_note,
)
from telly.store import RunStore, Variant
from telly.studies import freezing as rq3_study
from telly.studies.freezing import parse_freeze, plan, sweep

UNIT = get_profile("smoke").changed(name="unit", train_examples=8, valid_examples=8, test_examples=8,
               batch_size=8, epochs=1, bootstrap_samples=20)


def test_parse_freeze_accepts_lists_ranges_and_all():
    assert parse_freeze("-1,0,3", 6) == [-1, 0, 3]
    assert parse_freeze("-1..2", 6) == [-1, 0, 1, 2]
    assert parse_freeze("all", 4) == [-1, 0, 1, 2, 3]
    assert parse_freeze([2, 2, 0], 4) == [2, 0]
    with pytest.raises(ValueError, match=r"in -1\.\.5 for a 6-layer model, got 6"):
        parse_freeze("0,6", 6)
    with pytest.raises(ValueError, match="'x' is not an integer"):
        parse_freeze("0,x", 6)


def test_plan_collapses_telly_minus_one_into_full_and_checks_names():
    variants = plan(["code-search"], [-1, 2], [0, 1], ["full", "telly", "lora"], model="m", profile=UNIT)
    assert variants == [Variant("code-search", "m", UNIT, Full(), 0), Variant("code-search", "m", UNIT, Full(), 1),
                        Variant("code-search", "m", UNIT, Telly(2), 0), Variant("code-search", "m", UNIT, Telly(2), 1),
                        Variant("code-search", "m", UNIT, LoRA(), 0), Variant("code-search", "m", UNIT, LoRA(), 1)]
    assert [v.run_id for v in variants[::2]] == ["code-search__m__full__seed0__unit", "code-search__m__telly2__seed0__unit",
                                                "code-search__m__lora__seed0__unit"]
    assert [v.label for v in variants[::2]] == ["Full fine-tuning", "Telly-2 cached", "LoRA"]
    with pytest.raises(ValueError, match="unknown task"):
        plan(["code-search", "typo"], [0], [0], ["telly"], model="m", profile=UNIT)
    with pytest.raises(ValueError, match="unknown method"):
        plan(["code-search"], [0], [0], ["prefix-tuning"], model="m", profile=UNIT)


def test_a_killed_sweep_resumes_with_only_the_unfinished_run(tmp_path, monkeypatch):
    real = trainer.finetune
    calls = []

    def dies_on_second_run(*args, **kwargs):
        calls.append(args[0].freeze)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the sweep is killed while the second run trains
        return real(*args, **kwargs)

    monkeypatch.setattr(rq3_study, "finetune", dies_on_second_run)
    with pytest.raises(KeyboardInterrupt):
        sweep(["code-search"], "2,3", [0], model="tiny-random", profile=UNIT, store=tmp_path, progress=False)
    first = RunStore(tmp_path).record_path(Variant.of("code-search", "tiny-random", 2, profile=UNIT))
    second = RunStore(tmp_path).record_path(Variant.of("code-search", "tiny-random", 3, profile=UNIT))
    assert first.exists() and not second.exists()
    stamp = first.stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(rq3_study, "finetune", lambda *a, **k: calls.append(a[0].freeze) or real(*a, **k))
    result = sweep(["code-search"], "2,3", [0], model="tiny-random", profile=UNIT, store=tmp_path, progress=False)
    assert calls == [3]  # only the unfinished run is redone
    assert result["skipped"] == [first.stem] and len(result["records"]) == 2 and not result["failed"]
    assert first.stat().st_mtime_ns == stamp and second.exists()

    calls.clear()
    sweep(["code-search"], "2,3", [0], model="tiny-random", profile=UNIT, store=tmp_path, force=True, progress=False)
    assert len(calls) == 2  # --force reruns everything

    calls.clear()  # records made under other settings of the same profile name are not reused
    sweep(["code-search"], "2,3", [0], model="tiny-random", profile=UNIT.changed(learning_rate=1e-3),
          store=tmp_path, progress=False)
    assert calls == [2, 3]


def test_a_damaged_record_is_rerun(tmp_path, monkeypatch):
    path = RunStore(tmp_path).record_path(Variant.of("code-search", "tiny-random", 3, profile=UNIT))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"run": "half')
    calls = []
    monkeypatch.setattr(rq3_study, "finetune", lambda *a, **k: calls.append(a) or {"run": "x"})
    sweep(["code-search"], "3", [0], model="tiny-random", profile=UNIT, store=tmp_path, progress=False)
    assert len(calls) == 1


def test_sweep_cli_rejects_bad_input_before_running(tmp_path, capsys):
    assert cli.main(["sweep", "--tasks", "code-search,nope", "--model", "tiny-random", "--profile", "smoke",
                     "--out", str(tmp_path)]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert cli.main(["sweep", "--tasks", "code-search", "--freeze=-1..9", "--model", "tiny-random",
                     "--profile", "smoke", "--out", str(tmp_path)]) == 2
    assert "in -1..3 for a 4-layer model" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    profile = UNIT.changed(train_examples=16, test_examples=16, epochs=2)
    sweep(["code-search"], "-1,2,3", [0], model="tiny-random", profile=profile, store=out, progress=False)
    return out


def test_freeze_table_compares_every_depth_to_full_fine_tuning(tiny_sweep):
    records = RunStore(tiny_sweep).records(model="tiny-random", profile="unit")
    assert len(records) == 3 and not RunStore(tiny_sweep).records(profile="laptop")
    table = freeze_table(records)
    assert list(table.freeze) == [-1, 2, 3] and list(table.method) == ["full", "telly", "telly"]
    assert list(table.run) == ["Base (full)", "Telly-2", "Telly-3"] and set(table.timing) == {"separate runs"}
    full = table.iloc[0]
    assert full.epoch_seconds_ratio == 1.0 and full.seeds == 1
    assert table.trainable_millions.is_monotonic_decreasing
    for row in table.itertuples():
        assert row.low <= row.value <= row.high
    quality, cost = table_view(table), table_view(table, "cost")
    assert list(quality.columns) == ["task", "run", "metric", "value", "low", "high", "seeds", "zero-shot"]
    assert {"epoch ratio to full (separate runs)", "to-best ratio to full (separate runs)"} <= set(cost.columns)
    assert len(cost.columns) <= 8 and list(cost.run) == list(quality.run)
    with pytest.raises(ValueError, match="table_view shows"):
        table_view(table, "everything")
    with pytest.raises(ValueError, match="run the sweep first"):
        freeze_table([])


def test_the_summary_and_findings_of_a_real_sweep(tiny_sweep):
    records = RunStore(tiny_sweep).records()
    summary = non_inferiority_summary(records, UNIT, samples=100)
    entry = summary["tasks"]["code-search"]
    assert [row["run"] for row in entry["rows"]] == ["Telly-2", "Telly-3"] and entry["depths"] == [2, 3]
    for row in entry["rows"]:
        assert row["low"] <= row["difference"] <= row["high"] and 0 < row["p_value"] <= row["p_holm"] <= 1
        assert row["verdict"] == "no verdict"  # one seed, no trivial baseline
    assert entry["zero_shot"]["name"].startswith("the pre-trained model")
    assert entry["largest_non_inferior_k"] is None
    assert any("ran 1 seed, a verdict needs 3" in reason for reason in entry["no_verdict"])
    text = freeze_findings(freeze_table(records), summary)
    full = freeze_table(records).iloc[0]
    assert text.startswith("**code-search**") and f"mrr {full.value:.3f}" in text
    assert "No verdict on which depths keep its quality: full fine-tuning ran 1 seed" in text
    assert list(summary_table(summary).verdict) == ["no verdict", "no verdict"]


def test_freeze_results_chart_and_paper_rows(tiny_sweep):
    from telly.report.charts import freeze_results_chart
    from telly.report.paper import paper_telly_rows, paper_trainable_millions

    table = freeze_table(RunStore(tiny_sweep).records())
    spec = freeze_results_chart(table, "code-search").to_dict()
    assert [len(row["hconcat"]) for row in spec["vconcat"]] == [2, 2]  # two panels abreast, readable on a page
    with pytest.raises(ValueError, match="no full or Telly-K rows"):
        freeze_results_chart(table, "clone-detection")
    full = table[table.method == "full"].value.iloc[0]
    floors = [row["value"] for rows in freeze_results_chart(table, "code-search", margin=0.02).to_dict()["datasets"].values()
              for row in rows if "non-inferiority margin" in str(row.get("label"))]
    assert floors == [pytest.approx(full - 0.02)]
    assert paper_trainable_millions(0) == 85.05 and paper_trainable_millions(11) == 7.09
    rows = paper_telly_rows(["code-search"])
    assert {r["freeze"] for r in rows} == {-1, 5, 8, 10, 11}
    assert next(r for r in rows if r["freeze"] == 5)["epoch_seconds"] == 11 * 60 + 42
    with pytest.raises(ValueError, match="no Telly-K results"):
        paper_telly_rows(["type-inference"])


def _generation_record(freeze, bleu, reasons):
    return {"task": "code-summarization", "method": "full" if freeze == -1 else "telly", "freeze": freeze, "seed": 0,
            "metric": "bleu", "test": {"bleu": bleu, "degenerate": float(bool(reasons))},
            "generation": {"degenerate": {"is_degenerate": bool(reasons), "reasons": reasons}}}


def test_degenerate_findings_name_the_degenerate_runs_from_the_records():
    records = [_generation_record(-1, 0.042, []), _generation_record(5, 0.011, ["all 8 predictions are identical: 'the'"]),
               {"task": "code-search", "method": "full", "freeze": -1, "metric": "mrr", "test": {"mrr": 0.5}}]
    text = degenerate_findings(records)
    assert "code-search" not in text and "of 2 runs, the best with sound outputs is Base (full) (seed 0) at test bleu 0.042" in text
    assert "1 of 2 runs" in text and "Telly-5 seed 0 (all 8 predictions are identical: 'the')" in text
    assert "Base (full) seed" not in text  # the full run is not among the degenerate ones
    assert "no run's outputs are degenerate" in degenerate_findings([_generation_record(-1, 0.1, [])])
    assert degenerate_findings(records[2:]) == ""
    # a degenerate run is never "the best", even with the highest score
    contrary = [_generation_record(-1, 0.042, ["all empty"]), _generation_record(5, 0.011, [])]
    assert "the best with sound outputs is Telly-5 (seed 0) at test bleu 0.011" in degenerate_findings(contrary)
    assert "all 2 runs produce degenerate outputs" in degenerate_findings(
        [_generation_record(-1, 0.042, ["all empty"]), _generation_record(5, 0.011, ["all empty"])])


# ----------------------------------------------------------------------------- the verdict, from made-up runs

def _search_record(freeze, seed, reciprocal_ranks, *, cached=True, epochs_run=3, zero_shot=None, data="d"):
    """A finished code-search record whose test rows have these reciprocal ranks."""
    rr = np.asarray(reciprocal_ranks, dtype=float)
    method = "full" if freeze == -1 else "telly"
    columns = {"reciprocal_rank": rr.tolist(), **{f"hit@{k}": (1 / rr <= k).astype(float).tolist() for k in (1, 5, 10)}}
    return {"run": f"code-search__m__{method}{freeze}{'' if cached else 'u'}__seed{seed}__unit", "task": "code-search",
            "method": method, "freeze": freeze, "seed": seed, "uses_cache": cached and method == "telly",
            "label": "Full fine-tuning" if freeze == -1 else f"Telly-{freeze}", "metric": "mrr", "method_config": {},
            "test": {"mrr": float(rr.mean())},
            "test_ci": {"mrr": {"value": float(rr.mean()), "low": float(rr.mean()), "high": float(rr.mean())}},
            "test_per_example": columns, "data": {"fingerprint": data, "path": None, "source": "stdlib corpus",
                                                  "sizes": {"train": 8, "valid": 8, "test": len(rr)}},
            "parameters": {"backbone_trainable": 60 - 10 * (freeze + 1), "backbone_total": 60},
            "epoch_seconds": 10.0 - freeze, "cache_seconds": 0.5, "time_to_best_seconds": 20.0 - freeze,
            "epochs_run": epochs_run, "epochs_to_best": 2, "peak_tensor_memory_mb": 1.0,
            "zero_shot": None if zero_shot is None else {
                "data_fingerprint": data, "test": {"mrr": float(np.mean(zero_shot))},
                "test_per_example": {"reciprocal_rank": list(zero_shot),
                                     **{f"hit@{k}": [float(1 / r <= k) for r in zero_shot] for k in (1, 5, 10)}}}}


def _full_ranks(seed, n=120):
    return np.random.default_rng(seed).choice([1.0, 0.5, 1 / 3, 0.25, 0.1], size=n, p=[0.5, 0.2, 0.1, 0.1, 0.1])


def _sweep_records(*, worse=(2,), seeds=(0, 1, 2), depths=(0, 1, 2, 3), zero_shot=0.3, **options):
    """Full fine-tuning and Telly-K over `seeds`: K in `worse` loses a third of its reciprocal ranks'
    mass, the others score exactly as full fine-tuning does."""
    records = []
    for seed in seeds:
        full = _full_ranks(seed)
        records.append(_search_record(-1, seed, full, zero_shot=np.full(len(full), zero_shot), **options))
        records += [_search_record(k, seed, full * (2 / 3 if k in worse else 1.0), **options) for k in depths]
    return records


def _trivial(value, n=120):
    from telly.tasks import Evaluation

    rr = np.full(n, value)
    return {"code-search": Evaluation({"mrr": value}, {"reciprocal_rank": rr, **{f"hit@{k}": (1 / rr <= k).astype(float)
                                                                                for k in (1, 5, 10)}},
                                      extras={"name": "lexical ranker"})}


def test_the_summary_names_the_largest_k_whose_shallower_depths_all_pass():
    from telly.stats import holm

    summary = non_inferiority_summary(_sweep_records(worse=(2,)), UNIT, trivial=_trivial(0.2), samples=300)
    entry = summary["tasks"]["code-search"]
    assert entry["no_verdict"] == [] and entry["margin"] == UNIT.margin("mrr") and entry["seeds"] == [0, 1, 2]
    assert [(r["run"], r["verdict"]) for r in entry["rows"]] == [
        ("Telly-0", "non-inferior"), ("Telly-1", "non-inferior"), ("Telly-2", "inferior"), ("Telly-3", "non-inferior")]
    assert entry["largest_non_inferior_k"] == 1  # Telly-3 passes alone, but Telly-2 below it fails
    assert entry["smallest_inferior_k"] == 2 and entry["rows"][2]["high"] < -entry["margin"]
    assert [r["p_holm"] for r in entry["rows"]] == pytest.approx(holm([r["p_value"] for r in entry["rows"]]))
    assert entry["trivial"]["low"] > 0 and entry["zero_shot"]["low"] > 0
    assert summary_table(summary).shape == (4, 11)
    # the numbers flip the verdict: with every depth as good as full fine-tuning, K = 3 is named
    assert non_inferiority_summary(_sweep_records(worse=()), UNIT, trivial=_trivial(0.2),
                                   samples=300)["tasks"]["code-search"]["largest_non_inferior_k"] == 3
    assert non_inferiority_summary(_sweep_records(worse=(0,)), UNIT, trivial=_trivial(0.2),
                                   samples=300)["tasks"]["code-search"]["largest_non_inferior_k"] is None


@pytest.mark.parametrize("case,reason", [
    ("two seeds", "full fine-tuning ran 2 seeds, a verdict needs 3"),
    ("no trivial baseline", "no trivial baseline"),
    ("trivial baseline wins", "does not beat lexical ranker"),
    ("degenerate", "full fine-tuning's test outputs are degenerate (seed 0, 1, 2)"),
    ("at chance", "full fine-tuning's training loss ended at chance level (seed 1)"),
])
def test_no_verdict_where_full_fine_tuning_proves_nothing(case, reason):
    records = _sweep_records(seeds=(0, 1) if case == "two seeds" else (0, 1, 2))
    if case == "degenerate":
        for record in records:
            record["test"]["degenerate"] = 1.0
    if case == "at chance":
        next(r for r in records if r["method"] == "full" and r["seed"] == 1)["training_check"] = {"at_chance": True}
    trivial = None if case == "no trivial baseline" else _trivial(0.95 if case == "trivial baseline wins" else 0.2)
    entry = non_inferiority_summary(records, UNIT, trivial=trivial, samples=200)["tasks"]["code-search"]
    assert any(reason in r for r in entry["no_verdict"]), entry["no_verdict"]
    assert entry["largest_non_inferior_k"] is None and {r["verdict"] for r in entry["rows"]} == {"no verdict"}
    assert {r["p_value"] for r in entry["rows"]}  # the numbers are still there


def test_a_depth_whose_training_ended_at_chance_gets_no_verdict_and_the_others_keep_theirs():
    records = _sweep_records(worse=())
    next(r for r in records if r["freeze"] == 2 and r["seed"] == 0)["training_check"] = {"at_chance": True}
    rows = non_inferiority_summary(records, UNIT, trivial=_trivial(0.2), samples=200)["tasks"]["code-search"]["rows"]
    assert [(r["run"], r["verdict"], r["at_chance_seeds"]) for r in rows] == [
        ("Telly-0", "non-inferior", []), ("Telly-1", "non-inferior", []), ("Telly-2", "no verdict", [0]),
        ("Telly-3", "non-inferior", [])]


def test_the_summary_resamples_groups_and_refuses_mixed_data(monkeypatch):
    from telly import stats

    records = _sweep_records(depths=(1,))
    for record in records:
        record["test_per_example"]["group"] = [f"f{i // 3}" for i in range(120)]
    seen = []
    real = stats.non_inferiority
    monkeypatch.setattr(stats, "non_inferiority", lambda *a, **k: seen.append(k["clusters"]) or real(*a, **k))
    non_inferiority_summary(records, UNIT, trivial=_trivial(0.2), samples=50)
    assert seen and all(list(c) == [f"f{i // 3}" for i in range(120)] for c in seen)
    with pytest.raises(ValueError, match="different datasets"):
        non_inferiority_summary(records + [_search_record(-1, 5, _full_ranks(5), data="other")], UNIT)


def test_several_seeds_get_one_interval_over_seeds_and_test_rows():
    from telly.stats import seeded_difference_draws

    records = [_search_record(-1, seed, _full_ranks(seed)) for seed in (0, 1, 2)]
    for record in records:  # per-seed intervals of zero width: their mean would be no interval at all
        assert record["test_ci"]["mrr"]["low"] == record["test_ci"]["mrr"]["high"]
    row = freeze_table(records, samples=400).iloc[0]
    assert row.seeds == 3 and row.value == pytest.approx(np.mean([r["test"]["mrr"] for r in records]))
    _, draws = seeded_difference_draws([{"zero": np.zeros(120)}] * 3, [r["test_per_example"] for r in records],
                                       lambda c: {"mrr": 0.0} if "zero" in c else {"mrr": np.mean(c["reciprocal_rank"])},
                                       "mrr", samples=400)
    assert (row.low, row.high) == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])))
    assert row.high - row.low > 0.05


def test_findings_follow_the_numbers():
    records = _sweep_records(worse=(2,))
    table, summary = freeze_table(records, samples=100), non_inferiority_summary(records, UNIT, trivial=_trivial(0.2),
                                                                                   samples=300)
    text = freeze_findings(table, summary)
    assert "the largest K for which Telly-K and every shallower depth are non-inferior" in text
    assert "is K = 1: Telly-1" in text and "Inferior (the whole 95% interval below -0.02): Telly-2" in text
    assert "the smallest inferior K is 2" in text and "Inconclusive" not in text
    assert "Telly-3 passes on its own, but not below a depth that does not" in text
    # a depth a little worse, with seeds that disagree: inconclusive, with what would decide it
    noisy = _sweep_records(worse=())
    for record in noisy:
        if record["freeze"] == 2:
            shift = {0: -0.04, 1: 0.0, 2: 0.02}[record["seed"]]
            record["test_per_example"]["reciprocal_rank"] = (np.asarray(record["test_per_example"]["reciprocal_rank"])
                                                             + shift).tolist()
    unclear = freeze_findings(table, non_inferiority_summary(noisy, UNIT, trivial=_trivial(0.2), samples=300))
    assert "Inconclusive, the data cannot tell: Telly-2" in unclear and "could show a margin of" in unclear
    # every verdict states its scale, and the scale follows the records
    assert "Scale: 8 train, 8 valid, 120 test examples of stdlib corpus; 3 seeds; float32 training." in text
    for record in records:
        record["mixed_precision"] = {"training": "bf16"}
    bf16 = non_inferiority_summary(records, UNIT, trivial=_trivial(0.2), samples=100)
    assert "3 seeds; bf16 autocast training." in freeze_findings(table, bf16)
    assert bf16["tasks"]["code-search"]["scale"]["precision"] == "bf16"
    assert "No depth is shown inferior" in unclear
    assert "over separate runs of the sweep" in text and "one process" not in text
    assert "fine-tuning adds" in text and "a significant gain" in text and "Lexical ranker, a model-free answer" in text
    assert "full fine-tuning beats it" in text and "best validation score in" in text
    # the bench's in-process ratio is preferred when it measured the depth
    assert "takes 0.42x full fine-tuning's in one process" in freeze_findings(table, summary,
                                                                              bench_ratios={(1, True): 0.42})
    # zero-shot significantly better than fine-tuning is a loss, not "not a significant gain"
    better = _sweep_records(worse=(2,), zero_shot=1.0)
    flipped = freeze_findings(table, non_inferiority_summary(better, UNIT, trivial=_trivial(0.2), samples=300))
    assert "fine-tuning loses" in flipped and "a significant loss" in flipped and "not a significant gain" not in flipped
    # a trivial baseline that wins: no verdict, and the sentence says so
    lost = freeze_findings(table, non_inferiority_summary(records, UNIT, trivial=_trivial(0.95), samples=300))
    assert "full fine-tuning scores below it" in lost and "No verdict on which depths keep its quality" in lost
    # one epoch each: no time-to-best sentence
    single = _sweep_records(worse=(2,), epochs_run=1)
    assert "best validation score" not in freeze_findings(freeze_table(single, samples=50), summary)


def _precision_runs(precision, scale=1.0, seeds=(0, 1, 2), freeze=-1, cpu="AMD EPYC, family 25 model 17, no bf16 units"):
    """Code-search runs (full, or Telly-`freeze`) trained in `precision` on `cpu` whose reciprocal
    ranks are full's times `scale`."""
    runs = []
    for seed in seeds:
        record = _search_record(freeze, seed, _full_ranks(seed) * scale)
        runs.append(record | {"mixed_precision": {"training": precision, "prefix_cache": None, "evaluation": "no"},
                              "epoch_seconds": 10.0 if precision == "no" else 6.5,
                              "provenance": {"device": "cpu: x86_64, 2 cores, 2 threads", "cpu": cpu}})
    return runs


def test_the_precision_check_calls_bf16_equivalent_only_when_both_sides_are_ruled_out():
    same = precision_check(_precision_runs("no"), _precision_runs("bf16"), UNIT)
    assert same["verdict"] == "equivalent" and same["difference"] == 0.0 and same["seeds"] == [0, 1, 2]
    assert same["p_lower"] < 0.05 and same["p_upper"] < 0.05 and same["epoch_ratio"] == pytest.approx(0.65)
    assert "keeps the quality within the margin" in precision_text(same) and "0.65x float32's" in precision_text(same)
    # two machines' epoch times (or runs that name no CPU) give no ratio, and the sentence says why
    for cpu, why in (("AMD EPYC, family 25 model 17, bf16 units: avx512_bf16", "ran on different machines"),
                     (None, "do not name their CPU")):
        moved = precision_check(_precision_runs("no"), _precision_runs("bf16", cpu=cpu), UNIT)
        assert moved["epoch_ratio"] is None and moved["verdict"] == "equivalent"
        assert "Epoch times are not compared: " in precision_text(moved) and why in precision_text(moved)
        assert "x float32's" not in precision_text(moved)
    for scale, side in ((0.8, "below -0.02"), (1.25, "above +0.02")):
        apart = precision_check(_precision_runs("no"), _precision_runs("bf16", scale), UNIT)
        assert apart["verdict"] == "not shown" and (apart["difference"] < 0) == (scale < 1)
        assert f"a difference {side} cannot be ruled out" in precision_text(apart)
        assert "each pairs Telly-K with full fine-tuning trained in the same precision" in precision_text(apart)
    assert "same precision" not in precision_text(same)
    with pytest.raises(ValueError, match="'bf16' runs were trained otherwise"):
        precision_check(_precision_runs("no"), _precision_runs("no"), UNIT)
    with pytest.raises(ValueError, match="same seeds"):
        precision_check(_precision_runs("no", seeds=(0,)), _precision_runs("bf16", seeds=(1,)), UNIT)


def test_the_precision_check_tests_the_difference_the_verdicts_rest_on():
    """bf16 lowers full fine-tuning and Telly-3 alike: each variant moves, the difference of
    differences does not; a bf16 that hurts only Telly-3 moves it, and the text says which."""
    alike = precision_check(_precision_runs("no") + _precision_runs("no", freeze=3),
                            _precision_runs("bf16", 0.8) + _precision_runs("bf16", 0.8, freeze=3), UNIT)
    assert [v["run"] for v in alike["variants"]] == ["Base (full)", "Telly-3"]
    assert all(v["verdict"] == "not shown" and v["difference"] < -0.02 for v in alike["variants"])
    did = alike["difference_of_differences"]
    assert did["run"] == "Telly-3" and did["difference"] == pytest.approx(0.0, abs=1e-12) and did["verdict"] == "equivalent"
    assert "Telly-3 - full fine-tuning moved by +0.000" in precision_text(alike)
    assert "the verdicts do not move" in precision_text(alike)
    apart = precision_check(_precision_runs("no") + _precision_runs("no", freeze=3),
                            _precision_runs("bf16") + _precision_runs("bf16", 0.8, freeze=3), UNIT)
    moved = apart["difference_of_differences"]
    assert moved["difference"] < -0.02 and moved["verdict"] == "not shown"
    assert "a shift of the verdicts beyond the margin cannot be ruled out" in precision_text(apart)
    assert precision_check(_precision_runs("no"), _precision_runs("bf16"), UNIT)["difference_of_differences"] is None
    with pytest.raises(ValueError, match="at most one Telly-K"):
        precision_check(_precision_runs("no") + _precision_runs("no", freeze=2) + _precision_runs("no", freeze=3),
                        _precision_runs("bf16") + _precision_runs("bf16", freeze=2) + _precision_runs("bf16", freeze=3),
                        UNIT)


def test_the_generation_note_reads_the_numbers_not_the_backbone_kind():
    records = [_generation_record(-1, 5.0, []), _generation_record(3, 4.0, [])]

    def summary(low):
        trivial = {"name": "function name as words", "value": 2.0, "difference": 3.0, "low": low, "high": 4.0}
        return {"tasks": {"code-summarization": {"trivial": trivial}}}

    learned = generation_note(records, summary(1.0), model="minilm-l6", kind="encoder")
    floor = generation_note(records, summary(-1.0), model="minilm-l6", kind="encoder")
    assert "is an encoder, not a generative model" in learned and "floor" not in learned
    assert "beats the model-free baseline on 1 of the 1 generation tasks checked (code-summarization)" in learned
    assert "0 of the 1" in floor and "sits at the floor a model-free answer sets" in floor
    assert "encoder" not in generation_note(records, summary(1.0), model="smollm2-135m", kind="decoder")
    assert "No model-free baseline was scored for code-summarization" in generation_note(
        records, {"tasks": {}}, model="m", kind="decoder")
    # The bar: full fine-tuning's outputs non-empty and not looping on 90% of test examples.
    assert "do not loop on" not in learned  # records without the counts claim nothing
    for record, (empty, looping) in zip(records, ((3, 2), (50, 0)), strict=True):
        record["generation"]["degenerate"] |= {"n": 100, "empty": empty, "looping": looping}
    assert sound_share(records[0]) == 0.95 and sound_share(records[1]) == 0.5
    text = generation_note(records, summary(1.0), model="m", kind="decoder")
    assert "non-empty and do not loop on code-summarization 95% (1 seed): all meet the 90% bar." in text
    records[0]["generation"]["degenerate"]["empty"] = 20  # 78% sound
    assert "code-summarization 78% (1 seed): below the 90% bar (code-summarization)." in generation_note(
        records, summary(1.0), model="m", kind="decoder")


def test_example_outputs_never_pick_a_degenerate_run_as_best():
    def record(method, freeze, bleu, predictions):
        return {"task": "code-summarization", "method": method, "freeze": freeze, "metric": "bleu", "uses_cache": True,
                "test": {"bleu": bleu, "degenerate": float(len(set(predictions)) == 1)},
                "test_per_example": {"reference": ["a b", "c d"], "prediction": predictions}}

    records = [record("full", -1, 10.0, ["a", "c"]), record("telly", 3, 40.0, ["", ""]), record("telly", 5, 5.0, ["a", "d"])]
    assert [r["variant"] for r in example_outputs(records, n=1)] == ["best: Base (full)", "most frozen: Telly-5"]
    every = [record("full", -1, 10.0, ["", ""]), record("telly", 3, 40.0, ["", ""])]
    assert [r["variant"] for r in example_outputs(every, n=1)] == [
        "full fine-tuning, every run degenerate: Base (full)", "most frozen: Telly-3"]


def test_epoch_ratios_say_how_they_were_measured():
    table = freeze_table(_sweep_records(depths=(1, 3)), samples=50)
    ours = ours_table(table, bench_ratios={(3, False): 0.8, (3, True): 0.4})
    assert list(ours.columns[-3:]) == ["uncached epoch ratio (one process)", "cached epoch ratio (one process)",
                                       "cached epoch ratio (separate runs)"]
    assert ours.loc[("code-search", 3)].tolist()[-3:] == [0.8, 0.4, round(7 / 11, 3)]  # epochs of 7 s and 11 s
    assert np.isnan(ours.loc[("code-search", 1), "uncached epoch ratio (one process)"])  # the bench skipped K = 1
    assert "uncached epoch ratio (separate runs)" in paper_table(["code-search"]).columns


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

    from telly.report.freezing import explorer_chart
    from telly.studies.explorer import FreezeExplorer

    store = tmp_path / "store"
    shutil.copytree(tiny_sweep, store)
    profile = UNIT.changed(train_examples=16, test_examples=16, epochs=2)
    explorer = FreezeExplorer("code-search", "tiny-random", profile, store, chart=explorer_chart, start=2)

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
    record = trainer.finished_run(Variant.of("code-search", "tiny-random", 1, profile=profile), store)
    assert record is not None and record["freeze"] == 1
    assert explorer.progress.value == explorer.progress.max == profile.training.epochs
    assert marked(explorer.chart) == ([1], [-1, 1, 2, 3]) and explorer.button.disabled


def test_telly_sweep_writes_the_verdicts_beside_the_records(tmp_path, capsys):
    from telly.jsonio import read_json

    args = ["sweep", "--tasks", "code-search", "--freeze=-1,2", "--seeds", "0", "--model", "tiny-random",
            "--profile", "smoke", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    assert "code-search: no verdict: full fine-tuning ran 1 seed, a verdict needs 3" in capsys.readouterr().out
    summary = read_json(tmp_path / "summary.json")
    (row,) = summary["tasks"]["code-search"]["rows"]
    assert {"difference", "low", "high", "margin", "p_value", "p_holm", "verdict"} <= set(row) and row["freeze"] == 2
    assert summary["tasks"]["code-search"]["trivial"]["name"]  # the task's own model-free answer
    assert summary["tasks"]["code-search"]["largest_non_inferior_k"] is None
    assert [r["run"] for r in RunStore(tmp_path).records()] == [  # summary.json is not taken for a record
        "code-search__tiny-random__full__seed0__smoke", "code-search__tiny-random__telly2__seed0__smoke"]
    stamp = (tmp_path / "summary.json").stat().st_mtime_ns
    assert cli.main(args) == 0 and (tmp_path / "summary.json").stat().st_mtime_ns == stamp  # current: read back


def test_the_notes_on_depths_training_and_the_bench_follow_the_records():
    records = _sweep_records(depths=(0, 3))
    assert swept_depths(freeze_table(records, samples=50)) == \
        "- **code-search**: K = -1, 0, 3 over 3 seeds, 3 epochs run (mean over seeds)"
    one = [r for r in records if r["seed"] == 0] + [_search_record(3, 0, _full_ranks(0), cached=False, epochs_run=1)]
    assert swept_depths(freeze_table(one)) == \
        "- **code-search**: K = -1, 0, 3 uncached, 3 over 1 seed, 1 to 3 epochs run (mean over seeds)"
    optimizer = {"name": "AdamW", "eps": 1e-8, "weight_decay": 0.0, "max_grad_norm": 1.0, "learning_rate": 5e-5,
                 "head_learning_rate": 1e-3, "schedule": "linear warm-up over 10% of the steps, then linear decay to 0"}
    for record in records:
        record |= {"optimizer": optimizer, "profile_settings": {"epochs": 3, "patience": 1}}
    assert training_note(records) == (
        "Every run: AdamW (eps 1e-08, weight decay 0, gradient norm clipped at 1), learning rate 5e-05 (head 0.001), "
        "linear warm-up over 10% of the steps, then linear decay to 0; up to 3 epochs, stopping after 1 without a "
        "better validation score.")
    barred = [r | {"profile_settings": {"epochs": 3, "patience": 1, "min_improvement_share": 0.5,
                                        "margins": [["mrr", 0.02], ["bleu", 2.0]]},
                   "epochs_to_best": 1, "epochs_run": 2} for r in records]
    assert training_note(barred).endswith(
        "without a better validation score.\n\nAn epoch counted as better only where its validation score beat the "
        "best so far by more than 50% of the metric's non-inferiority margin (mrr 0.01). Every code-search run kept "
        "its first epoch's weights: no later epoch cleared that bar on the validation split.")
    barred[0] = barred[0] | {"epochs_to_best": 2}
    assert training_note(barred).endswith("margin (mrr 0.01).")
    records[0] = records[0] | {"optimizer": optimizer | {"weight_decay": 0.01}}
    assert training_note(records).startswith("- 1 run: AdamW (eps 1e-08, weight decay 0.01,")
    bench = {"origin": "reference", "device": "cpu: x86_64, 2 cores", "provenance": {"date": "2026-11-26T10:00:00"},
             "timing": "median of 3 interleaved repeat(s)",
             "training": [{"model": "minilm-l6", "method": "telly", "freeze": k, "cached": c, "ratio_to_full": 0.5}
                          for k in (0, 3) for c in (False, True)]}
    assert "the reference record shipped with Telly: cpu: x86_64, 2 cores, 2026-11-26; code search, K = 0, 3" in \
        bench_note(bench, "minilm-l6")
    assert "every epoch ratio quoted here comes from the sweep's separate runs" in bench_note(bench, "smollm2-135m")
    assert "every epoch ratio quoted here comes from the sweep's separate runs" in bench_note(None, "minilm-l6")


def test_the_cache_check_quotes_the_bench_for_its_epoch_ratio_when_it_can():
    from telly.report.freezing_prose import cache_check_prose

    ranks = _full_ranks(0)
    cached = _search_record(3, 0, ranks) | {"epoch_seconds": 2.0, "cache_seconds": 1.5}
    uncached = _search_record(3, 0, ranks * 0.9, cached=False) | {"epoch_seconds": 8.0}
    alone = cache_check_prose(cached, uncached, samples=100)
    assert "Epoch, over these two separate runs: 2.0 s cached vs 8.0 s uncached (0.25x)" in alone
    assert "cached minus uncached +0.0" in alone and "1.5 s once to build the cache" in alone
    bench = cache_check_prose(cached, uncached, samples=100, bench_ratios={(3, True): 0.3, (3, False): 0.75})
    assert "In one process (the bench: code search, interleaved) a cached epoch takes 0.40x an uncached one" in bench
    assert "these two separate runs took 2.0 s and 8.0 s (0.25x)" in bench


def test_the_laptop_profile_affords_a_verdict_on_every_task():
    from telly.analysis import MIN_SEEDS
    from telly.tasks import TASKS, get_task

    laptop = get_profile("laptop")
    # three seeds for a claim; more than one epoch, and patience after the best, so early stopping means something
    assert len(set(laptop.training.seeds)) >= MIN_SEEDS and laptop.training.epochs >= 3 and laptop.training.patience >= 1
    for spec in (laptop.training.sweep_freeze, laptop.generation.generation_freeze):  # full fine-tuning and at least one Telly-K
        depths = parse_freeze(spec, 6)
        assert -1 in depths and any(k >= 0 for k in depths)
    assert len(parse_freeze(laptop.training.sweep_freeze, 6)) >= 3  # the "every shallower K" verdict needs two depths
    for task in TASKS:
        assert laptop.margin(get_task(task).metric) > 0
    assert laptop.training.weight_decay == 0.0 and laptop.training.max_grad_norm == 1.0  # the replication package's optimiser


def test_an_encoder_never_pre_trained_to_generate_runs_no_generation_task_and_says_why(tmp_path):
    from telly.report.freezing_prose import sweep_note
    from telly.studies.freezing import freezing_study

    profile = UNIT.changed(seeds=(0,))
    result = freezing_study("tiny-random", profile, tmp_path, tasks=["code-search"], freeze="3",
                            generation_tasks=["code-summarization", "code-generation"], progress=False)
    assert {r["task"] for r in result["records"]} == {"code-search"}
    assert set(result["not_run"]) == {"code-summarization", "code-generation"}
    note = sweep_note(result)
    assert "Not run live: code-summarization, code-generation" in note and "not pre-trained to generate" in note


def test_an_inconclusive_row_says_what_would_decide_it_or_that_its_size_already_could():
    from telly.report.freezing_prose import _inconclusive

    row = {"run": "Telly-2", "difference": -0.01, "low": -0.05, "high": 0.03, "p_holm": 0.3, "margin": 0.02,
           "detectable_margin": 0.04, "seeds": [0, 1, 2], "units": 120,
           "sizes_to_show_margin": [{"seeds": 3, "rows": None}, {"seeds": 5, "rows": 400}]}
    assert "5 seeds and 400 test units would reach it" in _inconclusive(row)
    row["sizes_to_show_margin"] = [{"seeds": 3, "rows": 80}]
    assert "the observed difference keeps it open" in _inconclusive(row)
    row["sizes_to_show_margin"] = [{"seeds": 3, "rows": None}, {"seeds": 20, "rows": None}]
    assert "not even 20 seeds would reach it" in _inconclusive(row)


def test_the_quantisation_shift_tests_telly_minus_full_between_the_two_models():
    from telly.analysis import quantisation_shift
    from telly.report.freezing_prose import quantisation_text

    original = _sweep_records(worse=())
    same = quantisation_shift(original, _sweep_records(worse=()), UNIT, samples=200)["tasks"]["code-search"]
    assert [r["freeze"] for r in same["rows"]] == [0, 1, 2, 3] and same["margin"] == UNIT.margin("mrr")
    assert all(r["verdict"] == "within the margin" and r["difference"] == pytest.approx(0.0, abs=1e-12)
               for r in same["rows"])
    assert same["full"]["original"]["value"] == same["full"]["round trip"]["value"]
    # the round trip costs Telly-2 a third of its reciprocal ranks and nothing else: only K = 2 moves
    hurt = quantisation_shift(original, _sweep_records(worse=(2,)), UNIT, samples=200)
    verdicts = {r["freeze"]: r["verdict"] for r in hurt["tasks"]["code-search"]["rows"]}
    assert verdicts == {0: "within the margin", 1: "within the margin", 2: "moved", 3: "within the margin"}
    assert "does not move the freezing verdicts" in quantisation_text({"tasks": {"code-search": same}})
    text = quantisation_text(hurt)
    assert "Telly-2 - full moves by -0." in text and "beyond the margin of 0.02" in text
    assert "may not hold for its float original" in text
