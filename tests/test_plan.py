"""The power planner sizes a study from pilot records: more seeds where the seeds disagree, hours from
the records' measured seconds, and a CLI that prints it."""
import json

import numpy as np
from test_freezing_study import UNIT, _sweep_records

from telly.studies.plan import plan, plan_lines


def _pilot(spread: float):
    records = _sweep_records(worse=())
    for record in records:
        record["wall_seconds"] = 60.0 if record["method"] == "full" else 30.0
        if record["freeze"] == 2:
            shift = {0: -spread, 1: 0.0, 2: spread}[record["seed"]]
            record["test_per_example"]["reciprocal_rank"] = (np.asarray(record["test_per_example"]["reciprocal_rank"])
                                                             + shift).tolist()
    return records


def test_the_plan_asks_for_more_seeds_where_the_pilot_seeds_disagree():
    calm, noisy = (plan(_pilot(spread), UNIT, samples=200)["tasks"]["code-search"] for spread in (0.001, 0.03))
    assert calm["pilot"]["seeds"] == 3 and calm["pilot"]["test_rows"] == 120
    assert calm["choice"]["seeds"] == 3  # three agreeing seeds already decide at margin 0.02
    assert noisy["pilot"]["seed_sd"] > calm["pilot"]["seed_sd"]
    assert noisy["choice"] is None or noisy["choice"]["seeds"] > 3
    # one seed of every variant: full 60 s + four depths x 30 s
    assert calm["pilot"]["seconds_per_seed"] == 180.0
    assert [o["hours"] for o in calm["options"]] == [round(o["seeds"] * 180 / 3600, 2) for o in calm["options"]]


def test_a_half_width_target_is_stricter_than_the_margin_at_power_and_the_lines_say_which():
    records = _pilot(0.005)
    at_power = plan(records, UNIT, samples=200)
    narrow = plan(records, UNIT, samples=200, half_width_share=0.2)
    rows = {o["seeds"]: o["rows"] for o in at_power["tasks"]["code-search"]["options"]}
    narrow_rows = {o["seeds"]: o["rows"] for o in narrow["tasks"]["code-search"]["options"]}
    assert all(narrow_rows[k] is None or (rows[k] is not None and narrow_rows[k] >= rows[k]) for k in rows)
    text = "\n".join(plan_lines(narrow))
    assert "half-width <= 0.2 x margin" in text and "code-search (mrr, margin 0.02)" in text


def test_telly_plan_reads_a_records_folder(tmp_path, capsys):
    from telly import cli

    for record in _pilot(0.001):
        record |= {"status": "finished", "profile": "smoke", "model": "m"}
        (tmp_path / f"{record['run']}.json").write_text(json.dumps(record))
    assert cli.main(["plan", "--records", str(tmp_path), "--profile", "smoke", "--out", str(tmp_path / "p.json")]) == 0
    assert "code-search (mrr, margin" in capsys.readouterr().out
    assert json.loads((tmp_path / "p.json").read_text())["tasks"]["code-search"]["options"]
