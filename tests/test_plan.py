"""The power planner sizes a study from pilot records: more seeds where the seeds disagree, never more
test units than the data hold, hours from the records' parts rescaled to the planned sizes, depths
dropped before seeds and rows, and a CLI that prints it."""
import json

import numpy as np
import pytest
from test_freezing_study import UNIT, _sweep_records

from telly.studies.plan import RunCost, cost_at, depth_costs, machine_scale, plan, plan_lines, run_cost, task_sizes


def _timed(record):
    """Give a pilot record the parts a run's time splits into: full 3 epochs of 8 s, Telly-K (L=4)
    (4-K)/4 of that, a 1 s cache, 2 s of validation an epoch, 5 s of loading."""
    share = 1.0 if record["freeze"] == -1 else (4 - record["freeze"]) / 4
    record["epochs"] = [{"epoch": e, "train_seconds": 8.0 * share, "eval_seconds": 2.0} for e in (1, 2, 3)]
    record["cache_seconds"] = 0.0 if record["freeze"] == -1 else 1.0
    test = record["data"]["sizes"]["test"] * 2.0 / record["data"]["sizes"]["valid"] / 2
    record["wall_seconds"] = 5.0 + record["cache_seconds"] + 3 * (8.0 * share + 2.0) + test
    return record


def _pilot(spread: float):
    records = _sweep_records(worse=())
    for record in records:
        _timed(record)
        if record["freeze"] == 2:
            shift = {0: -spread, 1: 0.0, 2: spread}[record["seed"]]
            record["test_per_example"]["reciprocal_rank"] = (np.asarray(record["test_per_example"]["reciprocal_rank"])
                                                             + shift).tolist()
    return records


def test_a_record_splits_into_parts_that_rescale_with_the_sizes():
    record = _timed(_sweep_records(worse=())[1])  # Telly-0: the whole stack trains
    cost = run_cost(record)
    # validation: 2 s an epoch over 8 rows, two passes (metrics and loss) -> 1/8 s a row and pass
    assert cost.eval_per_row == pytest.approx(2.0 / 8 / 2)
    assert cost.fixed == pytest.approx(5.0) and cost.epochs == 3
    assert cost.train_per_example == pytest.approx(1.0) and cost.cache_per_train == pytest.approx(1 / 8)
    # twice the training data: twice the training and cache time; more test rows cost their scoring only
    base = cost.seconds(8, 8, 120)
    assert cost.seconds(16, 8, 120) - base == pytest.approx(3 * 8 * 1.0 + 8 * 1 / 8)
    assert cost.seconds(8, 8, 240) - base == pytest.approx(120 * cost.eval_per_row)
    # a generation record's row is its test decoding time per row
    decoded = dict(record, test={"mrr": 0.5, "decode_seconds": 60.0})
    assert run_cost(decoded).eval_per_row == pytest.approx(60.0 / 120)


def test_an_unmeasured_depth_is_interpolated_between_measured_ones():
    costs = depth_costs(_pilot(0.001), "code-search")
    assert sorted(costs) == [-1, 0, 1, 2, 3]
    two_costs = {-1: costs[-1], 3: costs[3]}  # full fine-tuning stands at K = 0
    middle = cost_at(two_costs, 1)
    assert isinstance(middle, RunCost)
    expected = costs[-1].train_per_example + (costs[3].train_per_example - costs[-1].train_per_example) / 3
    assert middle.train_per_example == pytest.approx(expected)
    assert cost_at(costs, 2) == costs[2]


def test_the_plan_asks_for_more_seeds_where_the_pilot_seeds_disagree():
    calm, noisy = (plan(_pilot(spread), UNIT, samples=200)["tasks"]["code-search"] for spread in (0.001, 0.03))
    assert calm["pilot"]["seeds"] == 3 and calm["pilot"]["test_units"] == 120
    assert calm["choice"]["seeds"] == 3  # three agreeing seeds already decide at margin 0.02
    assert noisy["pilot"]["seed_sd"] > calm["pilot"]["seed_sd"]
    assert noisy["choice"]["seeds"] > 3 or noisy.get("capped")


def test_at_least_min_seeds_and_never_more_units_than_the_data_hold():
    records = _pilot(0.005)
    entry = plan(records, UNIT, samples=200, half_width_share=0.3, min_seeds=5,
                 available_units={"code-search": 400})["tasks"]["code-search"]
    assert [o["seeds"] for o in entry["options"]] == [5, 8, 10, 15, 20]
    assert all(o["units"] is None or o["units"] <= 400 for o in entry["options"])
    # every option's expected half-width meets the target (0.3 x margin 0.02)
    assert all(o["expected_half_width"] <= 0.3 * 0.02 + 1e-9 for o in entry["options"] if o["units"])
    starved = plan(records, UNIT, samples=200, half_width_share=0.05, min_seeds=5,
                   available_units={"code-search": 130})["tasks"]["code-search"]
    assert starved["capped"].startswith("no number of seeds up to 20 reaches the target with the 130 test units")
    assert starved["choice"]["units"] == 130 and starved["choice"]["seeds"] == 20


def test_a_task_whose_full_fine_tuning_loses_to_its_baseline_gets_no_hours():
    baseline = {"name": "lexical ranker", "value": 0.6, "difference": -0.03, "low": -0.09, "high": 0.03}
    result = plan(_pilot(0.001), UNIT, samples=200, min_seeds=5, baselines={"code-search": baseline})
    entry = result["tasks"]["code-search"]
    assert "did not beat lexical ranker (0.600)" in entry["why_not"] and "640 training examples (4x)" not in entry["why_not"]
    assert "32 training examples (4x)" in entry["why_not"]
    assert result["hours"] == 0 and task_sizes(result) == ()
    beaten = plan(_pilot(0.001), UNIT, samples=200, min_seeds=5,
                  baselines={"code-search": baseline | {"low": 0.01}})["tasks"]["code-search"]
    assert "why_not" not in beaten


def test_a_slower_machine_rescales_each_part_from_its_own_short_runs():
    records = _pilot(0.001)
    here = [_timed(r) for r in _sweep_records(worse=()) if r["freeze"] in (-1, 2)]
    for record in here:  # twice as slow to train, three times to score, the same to load
        for epoch in record["epochs"]:
            epoch["train_seconds"] *= 2
            epoch["eval_seconds"] *= 3
        record["cache_seconds"] *= 2
        sizes = record["data"]["sizes"]
        record["wall_seconds"] = 5.0 + record["cache_seconds"] + sum(
            e["train_seconds"] + e["eval_seconds"] for e in record["epochs"]) + sizes["test"] * 6.0 / sizes["valid"] / 2
    scale = machine_scale(depth_costs(records, "code-search"), depth_costs(here, "code-search"))
    assert scale["train_per_example"] == pytest.approx(2) and scale["eval_per_row"] == pytest.approx(3)
    assert scale["cache_per_train"] == pytest.approx(2) and scale["fixed"] == pytest.approx(1, abs=0.01)
    pilot_machine = plan(records, UNIT, samples=200, min_seeds=5, half_width_share=0.6)["tasks"]["code-search"]
    slower = plan(records, UNIT, samples=200, min_seeds=5, half_width_share=0.6, machine_records=here)
    entry = slower["tasks"]["code-search"]
    assert entry["machine_scale"] == slower["machine_scale"]["code-search"] == scale
    assert 2 < entry["run_seconds"]["-1"] / pilot_machine["run_seconds"]["-1"] < 3
    with pytest.raises(ValueError, match="at least one depth in both"):
        machine_scale({-1: depth_costs(records, "code-search")[-1]}, {5: depth_costs(here, "code-search")[2]})


def test_over_budget_depths_go_first_then_the_task_is_capped_and_says_so():
    records = _pilot(0.01)
    free = plan(records, UNIT, samples=200, min_seeds=5, half_width_share=0.6)
    assert free["fits"] and free["tasks"]["code-search"]["depths"] == [-1, 0, 1, 2, 3]
    hours = free["hours"]
    # a budget that dropping one depth meets: depth 1 goes (first in the drop order), the seeds stay
    fewer = plan(records, UNIT, samples=200, min_seeds=5, half_width_share=0.6, budget_hours=0.97 * hours,
                 drop_order=(1, 2))
    entry = fewer["tasks"]["code-search"]
    assert fewer["fits"] and entry["depths"] == [-1, 0, 2, 3] and not entry.get("capped")
    assert entry["choice"]["seeds"] == free["tasks"]["code-search"]["choice"]["seeds"]
    assert "depths dropped to fit the budget: [1]" in "\n".join(plan_lines(fewer))
    # a budget no depth can meet: every droppable depth goes, then fewer seeds or test units, said with
    # the half-width the budget buys
    tight = plan(records, UNIT, samples=200, min_seeds=5, half_width_share=0.3, budget_hours=0.45 * hours,
                 drop_order=(1, 2), available_units={"code-search": 1000})
    entry = tight["tasks"]["code-search"]
    assert entry["depths"] == [-1, 0, 3] and tight["fits"]
    assert entry["choice"]["hours"] <= 0.45 * hours and entry["choice"]["units"] >= 120
    assert entry["choice"]["expected_half_width"] > entry["target_half_width"]
    assert "left of the budget pay for" in entry["capped"]
    # a budget below even the fewest seeds on the pilot's test units: no plan, and why
    none = plan(records, UNIT, samples=200, min_seeds=5, half_width_share=0.3, budget_hours=0.01,
                drop_order=(1, 2))["tasks"]["code-search"]
    assert none["choice"] is None and "pay for no option of at least 5 seeds on the pilot's 120" in none["why_not"]


def test_a_task_the_others_leave_no_budget_for_says_so():
    from telly.studies.plan import _cap

    dear = {"choice": {"hours": 6.0, "train": 8, "valid": 8}, "target_hours": 6.0, "seed_options": [5],
            "per_seed": {"seconds_without_test": 1e9, "seconds_per_test_row": 1.0, "rows_per_unit": 1.0},
            "pilot": {"test_units": 10}, "available_units": 10}
    tasks = {"dear": dear, "cheap": {"choice": {"hours": 4.0}}}
    _cap(tasks, budget_hours=4.0)  # the cheap task takes all of it
    assert tasks["dear"]["choice"] is None
    assert tasks["dear"]["why_not"] == "the other planned tasks already take the whole budget (its target alone needs 6.00 CPU h)"


def test_telly_plan_reads_a_records_folder(tmp_path, capsys, monkeypatch):
    from telly import cli
    from telly.studies import plan as planning

    monkeypatch.setattr(planning, "available_units", lambda task, profile: 500)
    for record in _pilot(0.001):
        record |= {"status": "finished", "profile": "smoke", "model": "m", "parameters": {"num_layers": 4}}
        (tmp_path / f"{record['run']}.json").write_text(json.dumps(record))
    assert cli.main(["plan", "--records", str(tmp_path), "--profile", "smoke", "--min-seeds", "5",
                     "--depths=-1,1,3", "--budget-hours", "10", "--out", str(tmp_path / "p.json")]) == 0
    assert "code-search (mrr, margin" in capsys.readouterr().out
    written = json.loads((tmp_path / "p.json").read_text())
    assert written["depths"] == [-1, 1, 3] and written["tasks"]["code-search"]["options"][0]["seeds"] == 5


def test_the_study_profile_runs_what_its_committed_plan_chose():
    from pathlib import Path

    from telly.jsonio import read_json
    from telly.profiles import get_profile
    from telly.studies.freezing import GENERATION_TASKS

    plan_path = Path(__file__).resolve().parents[1] / "book" / "records" / "smollm2-135m" / "plan.json"
    committed, study = read_json(plan_path), get_profile("study")
    assert set(study.training.task_sizes) == set(task_sizes(committed)) != set()
    planned = [task for task, entry in committed["tasks"].items() if entry.get("choice") and not entry.get("why_not")]
    assert set(planned) <= set(GENERATION_TASKS)  # the study sweeps them at generation_freeze
    assert {tuple(committed["tasks"][task]["depths"]) for task in planned} == \
        {tuple(int(k) for k in study.generation.generation_freeze.split(","))}
