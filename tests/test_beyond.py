"""Chapter 5: every method on one clock against full fine-tuning. Telly-auto is one variant whatever
each seed chose; the Pareto front, the time-to-quality table, the selector table and the goal's
sentences follow the numbers (each flipped by contrary ones)."""
import json

import numpy as np
import pytest
from test_freezing_study import UNIT, _full_ranks, _search_record, _trivial

from telly.analysis import non_inferiority_summary
from telly.report import beyond
from telly.studies import beyond as study


def _clocked(record, train: float, pilot: float = 0.0):
    record["time_split"] = {"load": 9.0, "prepare": 50.0 * (record["seed"] == 0), "pilot": pilot, "cache": 1.0,
                            "train": train, "eval": 4.0, "test": 30.0, "other": 1.0}
    record["provenance"] = {"device": "cpu: x86_64, 2 cores, 2 threads", "cpu": "AMD EPYC, family 25 model 17"}
    return record


def _method_record(method, seed, ranks, *, train, pilot=0.0, chosen=None):
    record = _search_record(-1, seed, ranks)
    labels = {"telly-auto": "Telly-auto", "lora": "LoRA (r=8)", "bitfit": "BitFit"}
    record |= {"run": f"code-search__m__{method}__seed{seed}__unit", "method": method, "label": labels[method]}
    if method == "telly-auto":
        record |= {"freeze": chosen, "uses_cache": True, "method_config": {"freeze": chosen}, "selection": {
            "chosen_freeze": chosen, "threshold": 0.05, "pilot_share": 0.25, "pilot_steps": 2, "pilot_seconds": pilot,
            "alternatives": {"gradient": {"freeze": 1}, "half": {"freeze": 2}}}}
    return _clocked(record, train, pilot)


def _records(*, auto_worse=False, lora_train=40.0, auto_train=10.0):
    """Full (train 95 s), Telly-1 and Telly-3 (cheaper, as good), Telly-auto choosing K = 3 on two
    seeds and 1 on the third, LoRA and BitFit; scores equal to full's unless told."""
    records = []
    for seed in (0, 1, 2):
        full = _full_ranks(seed)
        records.append(_clocked(_search_record(-1, seed, full), 95.0))
        records += [_clocked(_search_record(k, seed, full), 95.0 * (4 - k) / 4) for k in (1, 3)]
        records.append(_method_record("telly-auto", seed, full * (2 / 3 if auto_worse else 1.0), train=auto_train,
                                      pilot=5.0, chosen=1 if seed == 2 else 3))
        records.append(_method_record("lora", seed, full, train=lora_train))
        records.append(_method_record("bitfit", seed, full * 2 / 3, train=30.0))
    return records


def _points(records):
    summary = non_inferiority_summary(records, UNIT, trivial=_trivial(0.2), samples=300)
    return beyond.method_points(records, summary), summary


def test_telly_auto_is_one_variant_whatever_each_seed_chose():
    points, summary = _points(_records())
    rows = {r["run"]: r for r in summary["tasks"]["code-search"]["rows"]}
    assert rows["Telly-auto"]["seeds"] == [0, 1, 2] and rows["Telly-auto"]["verdict"] == "non-inferior"
    assert len(points[points.family == "Telly-auto"]) == 1  # its resolved config carries each seed's K
    auto = points[points.family == "Telly-auto"].iloc[0]
    assert auto.chosen == "3, 3, 1" and auto.freeze == 3
    # the clock leaves out loading, preparation and the test pass: (5 + 1 + 10 + 4) / (0 + 1 + 95 + 4)
    assert auto.clock_ratio == pytest.approx(20 / 100)
    assert beyond.clock_seconds(_records()[0]) == 100.0
    assert set(points.family) == {"Full", "Telly-K", "Telly-auto", "LoRA", "BitFit"}
    assert points[points.family == "Full"].verdict.tolist() == ["reference"]
    # BitFit lost a third: inferior, and off the front; Telly-auto is the cheapest and as good: on it
    bitfit = points[points.family == "BitFit"].iloc[0]
    assert bitfit.verdict == "inferior" and not bitfit.pareto and auto.pareto
    chart = beyond.pareto_chart(points, "code-search").to_dict()
    params = {p["name"]: p for p in chart["params"]}
    assert params[beyond.METHOD_PARAM]["bind"]["options"] == ["Full", "Telly-K", "Telly-auto", "LoRA", "BitFit"]
    assert params[beyond.DEPTH_PARAM]["bind"]["options"] == [1, 3]
    assert "datum.family == pick_method" in json.dumps(chart)
    with pytest.raises(ValueError, match="no points for task 'clone-detection'"):
        beyond.pareto_chart(points, "clone-detection")


def test_time_to_quality_and_the_goal_follow_the_numbers():
    points, _ = _points(_records())
    table = beyond.time_to_quality(points).set_index("method")
    needed = table.needed
    assert table.variant["BitFit"] == "BitFit" and table.variant["Telly-auto"].startswith("Telly-auto (K ")
    assert needed["Telly-auto"] == "0.20x full fine-tuning's clock"
    assert needed["Telly-K"].startswith("0.") and needed["BitFit"] == "did not (inferior)"
    text = beyond.beyond_findings(points)
    assert "meets it on 1 of the 1 task(s)" in text and "**not met** here (1 of 5 tasks ran)" in text
    assert "faster at equal quality" in text
    # flipped: Telly-auto dearer than the goal and than LoRA
    slow_records = _records(lora_train=2.0, auto_train=50.0)
    slow = beyond.beyond_findings(_points(slow_records)[0])
    assert "slower at equal quality" in slow and "misses the goal: its clock is 0.60x full's." in slow
    for record in slow_records:  # the pilot's curve says which layer kept K shallow
        if record["method"] == "telly-auto":
            record["selection"]["curve"] = [{"layer": i, "movement": 0.01 if i <= record["freeze"] else 0.2 + i / 100}
                                            for i in range(6)]
    assert ("its clock is 0.60x full's, as K stayed shallow: in the pilot layer 4 moved 0.2400 (seed 0); "
            "layer 4 moved 0.2400 (seed 1); layer 2 moved 0.2200 (seed 2), at or above the threshold 0.05"
            in beyond.beyond_findings(_points(slow_records)[0]))
    assert "meets it on 0 of the 1" in slow
    # flipped: Telly-auto loses a third of the quality
    worse_points, _ = _points(_records(auto_worse=True))
    worse = beyond.beyond_findings(worse_points)
    assert "misses the goal: it is inferior" in worse and "only Telly-auto" not in worse
    assert "LoRA keeps the quality and Telly-auto does not" in worse
    assert beyond.time_to_quality(worse_points).set_index("method").needed["Telly-auto"] == "did not (inferior)"
    assert "Clock caveat" not in text  # every run names one machine
    # flipped: full fine-tuning ran on another machine (or its records name no CPU): the ratios say so
    for cpu, why in (("AMD EPYC, family 25 model 1", "ran on different machines"), (None, "do not name their CPU")):
        moved = _records()
        for record in moved:
            if record["method"] == "full":
                record["provenance"]["cpu"] = cpu
        caveat = beyond.beyond_findings(_points(moved)[0])
        assert "**Clock caveat.**" in caveat and why in caveat
        assert "code-search: " in caveat and "Telly-auto (K 3, 3, 1)" in caveat and "LoRA (r=8)" in caveat
    # one seed so far: no summary row, and the sentence says so instead of quoting a difference
    one_seed = [r for r in _records() if not (r["method"] == "telly-auto" and r["seed"] > 0)]
    summary_one = non_inferiority_summary([r for r in one_seed if r["method"] != "telly-auto"], UNIT,
                                          trivial=_trivial(0.2), samples=100)
    early = beyond.beyond_findings(beyond.method_points(one_seed, summary_one))
    assert "it is not tested yet (1 seed(s) ran)" in early and "nan" not in early
    assert "no comparison at equal quality, Telly-auto not tested yet" in early and "does not" not in early
    # three tasks meeting it meet the goal
    assert "**met**" in beyond.beyond_findings(_three_tasks(points))
    # no verdict says why: a model-free baseline as good as full fine-tuning, or too few seeds
    beaten = non_inferiority_summary(_records(), UNIT, trivial=_trivial(0.99), samples=300)
    text = beyond.beyond_findings(beyond.method_points(_records(), beaten))
    assert "it gets no verdict (full fine-tuning does not beat lexical ranker" in text
    two_seeds = [r for r in _records() if not (r["method"] == "telly-auto" and r["seed"] == 2)]
    points_two, _ = _points(two_seeds)
    assert "it gets no verdict (2 seed(s), fewer than the 3 a verdict needs), Telly-auto - full" in \
        beyond.beyond_findings(points_two)


def test_a_clock_anchor_puts_full_fine_tuning_on_the_methods_machine():
    """Full fine-tunes from another machine are timed by their epochs at the anchor's seconds per epoch
    (a full fine-tune trained again where the methods ran); an anchor of another machine or task is not used."""
    moved = _records()
    for record in moved:
        if record["method"] == "full":
            record["provenance"] = {"device": "cpu: x86_64, 2 cores, 2 threads", "cpu": "AMD EPYC, family 25 model 1"}
    anchor = _clocked(_search_record(-1, 0, _full_ranks(0), epochs_run=2), 48.0)  # (1 + 48 + 4) / 2 = 26.5 s an epoch
    points = beyond.method_points(moved, _points(moved)[1], [anchor])
    auto = points[points.family == "Telly-auto"].iloc[0]
    # Telly-auto's clock 20 s against full's 3 epochs at 26.5 s; unscaled it would be 20 / 100
    assert auto.clock_ratio == pytest.approx(20 / (3 * 26.5))
    assert beyond.full_clock(moved[3], moved[0], [anchor]) == (pytest.approx(79.5), "scaled", pytest.approx(
        "a full epoch of seed 0 took 26 s on AMD EPYC, family 25 model 17"))
    text = beyond.beyond_findings(points)
    assert "**Clock anchor.**" in text and "took 26 s on AMD EPYC, family 25 model 17" in text
    assert "Clock caveat" not in text
    # full fine-tuning on the methods' machine: its own clock, no anchor needed
    assert beyond.full_clock(moved[3], moved[3] | {"method": "full"}, [anchor])[1] == ""
    # an anchor of another machine, or of another task, leaves the caveat
    for other in (anchor | {"provenance": {"device": anchor["provenance"]["device"], "cpu": "Intel Xeon"}},
                  anchor | {"task": "clone-detection"}):
        unscaled = beyond.method_points(moved, _points(moved)[1], [other])
        assert unscaled[unscaled.family == "Telly-auto"].iloc[0].clock_ratio == pytest.approx(20 / 100)
        assert "**Clock caveat.**" in beyond.beyond_findings(unscaled)


def _three_tasks(points):
    import pandas as pd

    return pd.concat([points.assign(task=task) for task in ("a", "b", "c")], ignore_index=True)


def test_the_selector_table_puts_each_choice_beside_the_sweep():
    records = _records()
    points, summary = _points(records)
    table = beyond.selector_table(records, summary).set_index("selector")
    assert table.loc["movement (Telly-auto)", "K per seed"] == "3, 3, 1"
    assert table.loc["movement (Telly-auto)", "sweep verdict at K"] == "1: non-inferior; 3: non-inferior"
    assert table.loc["fixed L/2", "sweep verdict at K"] == "2: not swept"
    assert table.loc["gradient norm", "sweep's largest non-inferior K"] == 3
    assert "probing peak (semantic)" not in table.index  # no probing document given
    probing = {"findings": {"semantic": {"peak": {"layer": 4, "score": 0.7}}}}
    with_peak = beyond.selector_table(records, summary, probing).set_index("selector")
    assert with_peak.loc["probing peak (semantic)", "K per seed"] == "3"  # layers 0..3 (below the peak) frozen
    assert with_peak.loc["probing peak (semantic)", "sweep verdict at K"] == "3: non-inferior"
    unswept = [r for r in records if r["method"] != "telly" or r["freeze"] == -1]  # full fine-tuning and the methods
    table = beyond.selector_table(unswept, _points(unswept)[1]).set_index("selector")
    assert table.loc["gradient norm", "sweep's largest non-inferior K"] == "no sweep ran"
    assert beyond.probing_choice({"findings": {"semantic": {"peak": {"layer": 0}}}}, "code-search") == -1
    assert beyond.probing_choice({"findings": {}}, "code-search") is None


def test_a_record_without_a_time_split_is_refused_by_name():
    record = _search_record(-1, 0, _full_ranks(0))
    with pytest.raises(ValueError, match="has no time_split"):
        beyond.clock_seconds(record)


def test_the_study_runs_full_the_sweep_and_each_method_per_seed():
    runs = study.variants(["code-search"], {"code-search": [0, 1]}, [-1, 3], model="m", profile=UNIT)
    assert [(v.method.name, v.freeze, v.seed) for v in runs] == [
        ("full", -1, 0), ("telly", 3, 0), ("telly-auto", -1, 0), ("lora", -1, 0), ("bitfit", -1, 0),
        ("full", -1, 1), ("telly", 3, 1), ("telly-auto", -1, 1), ("lora", -1, 1), ("bitfit", -1, 1)]
    assert next(v for v in runs if v.method.name == "lora").method.scope == "attention+mlp"
    with pytest.raises(ValueError, match="unknown method"):
        study.variants(["code-search"], {"code-search": [0]}, [-1], model="m", profile=UNIT, methods=["adapters"])



def test_bitfit_is_left_out_with_why_on_a_backbone_without_bias_terms(monkeypatch):
    from telly.backbones import load
    from telly.methods import BitFit

    tiny = load("tiny-random")
    assert study.applicable(tiny, list(study.METHODS)) == (list(study.METHODS), {})
    monkeypatch.setattr(BitFit, "bias_names", staticmethod(lambda module: []))  # SmolLM2's kind
    methods, left_out = study.applicable(tiny, list(study.METHODS))
    assert methods == ["telly-auto", "lora"] and set(left_out) == {"bitfit"}
    assert beyond.not_run_note(left_out) == ("**BitFit not run:** tiny-random has no bias terms, the only backbone "
                                             "parameters BitFit trains.")
    assert beyond.not_run_note({}) == "" and "Not run yet" in beyond.study_status([], left_out)


def test_the_tasks_a_study_plan_left_out_are_named():
    plan = {"tasks": {"code-generation": {"choice": {"seeds": 5}}, "code-search": {"why_not": "no baseline beaten"},
                      "clone-detection": {"why_not": "no baseline beaten"}}}
    assert beyond.unplanned_note(None) == "" and beyond.unplanned_note({"tasks": {"code-generation": {}}}) == ""
    assert beyond.unplanned_note(plan) == ("**Not run on clone-detection, code-search:** the study's plan gave them no "
                                           "RQ3 runs, whose full fine-tunes these methods are judged against (chapter "
                                           "3's plan table says why).")
    assert beyond.study_status([], plan=plan).endswith(beyond.unplanned_note(plan))
    assert beyond.study_status(_records(), plan=plan).startswith("Runs so far: code-search")
    # A task the study's beyond parts run anyway, with their own full fine-tunes, is not said to be skipped.
    own = beyond.unplanned_note(plan, beyond_tasks=["code-generation", "code-search"])
    assert own == ("**Not run on clone-detection:** the study's plan gave it no RQ3 runs, whose full fine-tunes these "
                   "methods are judged against (chapter 3's plan table says why). **code-search** got no RQ3 runs from "
                   "the plan either, but no other backbone covers it here: the study fine-tunes it in full on the same "
                   "seeds for these methods to be judged against.")
    assert beyond.study_status([], plan=plan, beyond_tasks=["code-search"]).endswith(own)


def test_what_the_chapter_says_of_runs_that_are_not_there_yet():
    sweep_only = [r for r in _records() if r["method"] in ("full", "telly")]
    assert not beyond.has_methods(sweep_only) and "Not run yet" in beyond.study_status(sweep_only)
    assert beyond.selection_note(sweep_only) == "No Telly-auto run here."
    records = _records()
    assert beyond.study_status(records) == "Runs so far: code-search: Telly-auto 3 seed(s), LoRA 3 seed(s), BitFit 3 seed(s)."
    assert beyond.selection_note(records) == (
        "Telly-auto ran with movement threshold and pilot share 0.05 and 0.25 (uncalibrated defaults: `telly "
        "calibrate-auto` sets them on validation data against the sweep); its pilots took 2 training step(s), on "
        "average 25% of Telly-auto's clock.")
    for record in records:
        if record.get("selection"):
            record["selection"]["calibration"] = "telly calibrate-auto on minilm-l6 (laptop)"
    assert "(set by telly calibrate-auto on minilm-l6 (laptop))" in beyond.selection_note(records)


def _valid_record(task, freeze, seed, score, metric="mrr"):
    return {"task": task, "method": "full" if freeze == -1 else "telly", "freeze": freeze, "seed": seed,
            "uses_cache": freeze >= 0, "metric": metric, "valid": {metric: score}}


def test_the_safe_depth_is_read_off_validation_and_every_shallower_depth_counts():
    margin = UNIT.margin("mrr")
    records = [_valid_record("code-search", k, s, 0.5 - (margin * 2 if k == 3 else 0.0) + 0.001 * s)
               for k in (-1, 1, 3, 5) for s in (0, 1, 2)]
    # Telly-3 drops by twice the margin: Telly-5 is within it but stands above a depth that is not
    assert study.safe_depths(records, UNIT) == {"code-search": 1}
    assert study.safe_depths([r for r in records if r["freeze"] != 3], UNIT) == {"code-search": 5}
    with pytest.raises(ValueError, match="no full fine-tuning record"):
        study.safe_depths([r for r in records if r["freeze"] != -1], UNIT)


def _curve(movements):
    return [{"layer": i, "movement": m} for i, m in enumerate(movements)]


def test_the_calibration_picks_the_deepest_safe_setting_and_says_when_none_is():
    # layers 0..5 (embeddings, blocks 0..4 of a 5-block model); a longer pilot moves every layer more
    curves = [{"task": "code-search", "seed": s, "pilot_share": share,
               "curve": _curve([x * share * 4 for x in (0.001, 0.004, 0.008, 0.03, 0.06, 0.1)])}
              for s in (0, 1) for share in (0.25, 0.5)]
    result = study.choose_setting(curves, {"code-search": 2}, thresholds=(0.005, 0.01, 0.05))
    grid = {(g["pilot_share"], g["threshold"]): g for g in result["grid"]}
    # share 0.25 (movements as listed): threshold 0.01 keeps layers 0..2 -> K 2 (safe); 0.05 -> K 3 (unsafe)
    assert [c["freeze"] for c in grid[(0.25, 0.01)]["chosen"]] == [2, 2] and grid[(0.25, 0.01)]["safe"]
    assert not grid[(0.25, 0.05)]["safe"]
    # share 0.5 doubles them: 0.01 -> K 1 (safe, shallower); 0.05 keeps layers 0..2 (0.016 < 0.05 <= 0.06) -> K 2
    assert grid[(0.5, 0.05)]["chosen"][0]["freeze"] == 2 and grid[(0.5, 0.05)]["safe"]
    # both reach mean K 2: the shorter pilot wins
    assert result["chosen"] == {"pilot_share": 0.25, "threshold": 0.01}
    assert study.choose_setting(curves, {"code-search": -1}, thresholds=(0.005,))["chosen"] is None


def test_the_pilot_alone_gives_a_curve_per_seed_and_share(tmp_path):
    curves = study.pilot_curves("code-search", "tiny-random", UNIT.changed(train_examples=16, batch_size=4), tmp_path,
                                seeds=[0], shares=[0.25, 1.0])
    assert [(c["pilot_share"], c["pilot_steps"]) for c in curves] == [(0.25, 1), (1.0, 4)]
    assert all(len(c["curve"]) == len(curves[0]["curve"]) > 1 for c in curves)
    assert not list(tmp_path.glob("*.json"))  # no run record: only the pilot ran


def test_telly_autos_defaults_are_the_committed_calibrations_choice():
    from pathlib import Path

    from telly.jsonio import read_json
    from telly.methods import TellyAuto

    record = read_json(Path(__file__).resolve().parents[1] / TellyAuto.calibration)
    assert (record["model"], record["profile"], record["kind"]) == ("minilm-l6", "laptop", "telly-auto calibration")
    auto = TellyAuto()
    assert record["chosen"] == {"pilot_share": auto.pilot_share, "threshold": auto.threshold}
    chosen = next(g for g in record["grid"] if (g["pilot_share"], g["threshold"]) == (auto.pilot_share, auto.threshold))
    assert chosen["safe"] and all(row["freeze"] <= record["safe_depths"][row["task"]] for row in chosen["chosen"])


def test_a_pilot_needs_telly_auto(tmp_path):
    from telly.store import Variant
    from telly.trainer import pilot_selection

    with pytest.raises(ValueError, match="needs method telly-auto, got lora"):
        pilot_selection(Variant.of("code-search", "tiny-random", -1, method="lora", seed=0, profile=UNIT), tmp_path)


def test_telly_calibrate_auto_sweeps_pilots_and_writes_the_grid(tmp_path, capsys):
    from telly import cli
    from telly.jsonio import read_json

    code = cli.main(["calibrate-auto", "--model", "tiny-random", "--profile", "smoke", "--out", str(tmp_path / "runs"),
                     "--tasks", "code-search", "--seeds", "0", "--freeze=-1,1", "--shares", "0.5",
                     "--thresholds", "0.001,0.999", "--write", str(tmp_path / "calibration.json")])
    result = read_json(tmp_path / "calibration.json")
    assert [(g["pilot_share"], g["threshold"]) for g in result["grid"]] == [(0.5, 0.001), (0.5, 0.999)]
    assert set(result["safe_depths"]) == {"code-search"} and result["depths"] == [-1, 1]
    assert code == (0 if result["chosen"] else 1)
    assert "safe depths (validation)" in capsys.readouterr().out


def test_chapter_3s_tables_and_slider_take_a_store_that_chapter_5_also_wrote():
    from telly.report import freezing

    table = freezing.freeze_table(_records(), samples=50)
    assert table.freeze.isna().sum() == 1  # Telly-auto: no K of its own
    curve = freezing.curve_table(table)
    assert curve.freeze.dtype == int and sorted(curve.freeze) == [-1, 1, 3]
    assert freezing.freeze_slider(table) is not None


def test_the_chapters_summary_scores_each_tasks_trivial_baseline(tmp_path):
    result = study.beyond_study("tiny-random", UNIT, tmp_path, tasks=["code-search"], seeds=[0], freeze="1",
                                methods=("bitfit",), progress=False)
    entry = result["summary"]["tasks"]["code-search"]
    assert entry["trivial"]["name"] == "lexical ranker (TF-IDF)"
    assert not any("no trivial baseline" in reason for reason in entry["no_verdict"])
    assert {r["method"] for r in result["records"]} == {"full", "telly", "bitfit"}


def _loud_column_states(*, moved: bool, loud: bool, layers: int = 3, n: int = 40, d: int = 12):
    """(before, after): `layers` layers whose columns but the first move when `moved`; the first column,
    unchanged, is three hundred times the others' scale when `loud`."""
    rng = np.random.default_rng(0)
    before = rng.normal(size=(layers, n, d))
    after = before + (0.8 * rng.normal(size=before.shape) if moved else 0.0)
    if loud:
        before[:, :, 0] *= 300.0
    after[:, :, 0] = before[:, :, 0]
    return before, after


def test_a_loud_column_hides_the_movement_and_leaving_it_out_shows_it():
    from telly.selectors import dominant_dimensions, magnitude_share, movement_curve, movement_without

    before, after = _loud_column_states(moved=True, loud=True)
    dims = dominant_dimensions(before, 1)
    assert dims.tolist() == [[0]] * 3 and min(magnitude_share(before, dims)) > 0.99
    assert max(row["movement"] for row in movement_curve(before, after)) < 0.01  # the loud column decides CKA
    assert min(row["movement"] for row in movement_without(before, after, dims)) > 0.1
    still = _loud_column_states(moved=False, loud=True)
    assert max(row["movement"] for row in movement_without(*still, dominant_dimensions(still[0], 1))) < 1e-9
    with pytest.raises(ValueError, match=r"count must be in 1\.\.11"):
        dominant_dimensions(before, 12)


def _dimensions_document(*, woken: bool):
    """A pilot whose layers 0-1 stayed still and 2 moved, so K = 1, and layers 3-5 stayed quiet; with the
    loudest column left out, layer 2 is still and 3-5 move (`woken`), or nothing changes."""
    def curve(movements):
        return [{"layer": i, "movement": m} for i, m in enumerate(movements)]
    pilot = [0.0001, 0.0002, 0.05, 0.0005, 0.0004, 0.0003]
    later = [0.0001, 0.0002, 0.0001, 0.02, 0.03, 0.01] if woken else pilot
    shares = [0.1, 0.1, 0.2, 0.9, 0.95, 0.97]
    return {"pilots": [{"task": "code-generation", "seed": 0, "pilot_steps": 10, "threshold": 0.002, "freeze": 1,
                        "reproduces": "code-generation__m__telly-auto__seed0__study.json", "curve": curve(pilot),
                        "without": [{"count": count, "dims": [[0]] * 6, "magnitude_share": shares,
                                     "curve": curve(later), "freeze": 2 if woken else 1} for count in (1, 4)]}]}


def test_the_dimension_note_says_whether_a_few_columns_hid_the_quiet_layers():
    hidden = beyond.dimension_note(_dimensions_document(woken=True))
    assert "above K = 1, layers 3-5 stayed under the threshold 0.002 and layer 2 moved (0.0500)" in hidden
    assert "column 0 of the pre-trained states holds 90%-97% of the summed squares (in the moving ones 20%)" in hidden
    assert "layer 2, which stopped the rule at 0.0500, moves 0.0001/0.0001, 3/3 of the 3 quiet ones" in hidden
    assert "the rule would choose K = 2/2. So a few columns hid those layers' movement, and they set K" in hidden
    assert "whose training losses it reproduced" in hidden
    quiet = beyond.dimension_note(_dimensions_document(woken=False))
    assert "moves 0.0500/0.0500, 0/0 of the 3 quiet ones" in quiet
    assert "quiet without the largest columns too, and K does not depend on them" in quiet
    assert beyond.dimension_note(None) == ""


def test_telly_pilot_dimensions_reproduces_the_recorded_pilot_or_says_it_did_not(tmp_path):
    from telly import cli
    from telly.jsonio import read_json, write_json
    from telly.store import RunStore, Variant
    from telly.studies import get_profile
    from telly.trainer import pilot_selection

    store, args = RunStore(tmp_path / "runs"), ["pilot-dimensions", "--model", "tiny-random", "--profile", "smoke",
                                                "--out", str(tmp_path / "runs"), "--tasks", "code-search",
                                                "--seeds", "0", "--counts", "1,4"]
    variant = Variant.of("code-search", "tiny-random", -1, method="telly-auto", seed=0, profile=get_profile("smoke"))
    losses = pilot_selection(variant, store)["pilot_losses"]
    write_json(store.record_path(variant), {"selection": {"pilot_losses": losses}})
    assert cli.main(args + ["--write", str(tmp_path / "dimensions.json")]) == 0
    pilot = read_json(tmp_path / "dimensions.json")["pilots"][0]
    assert pilot["reproduces"] == store.record_path(variant).name
    assert [w["count"] for w in pilot["without"]] == [1, 4]
    assert all(len(w["curve"]) == len(pilot["curve"]) == len(w["magnitude_share"]) for w in pilot["without"])
    write_json(store.record_path(variant), {"selection": {"pilot_losses": [loss + 1 for loss in losses]}})
    with pytest.raises(RuntimeError, match="did not reproduce the recorded losses"):
        cli.main(args)


def test_chapter_2_is_warned_only_where_a_few_columns_hid_the_quiet_layers():
    hidden = _dimensions_document(woken=True) | {"model": "m"}
    assert beyond.similarity_caveat(hidden).startswith("**A caveat for m's curves.**")
    assert "column 0 holds 90%-97% of the summed squares of layers 3-5, and with the largest columns left out " \
           "up to 3 of those 3 layers moved" in beyond.similarity_caveat(hidden)
    assert beyond.similarity_caveat(_dimensions_document(woken=False) | {"model": "m"}) == ""
    assert beyond.similarity_caveat(None) == ""


def test_pilot_dimensions_refuses_a_count_of_no_columns_before_any_pilot(tmp_path):
    with pytest.raises(ValueError, match=r"each at least 1; got \[4, 0\]"):
        study.pilot_dimensions("tiny-random", UNIT, tmp_path, tasks=["code-search"], counts=[4, 0])
    assert not any(tmp_path.iterdir())
