"""telly.selectors and Telly-auto: K from how far each layer moved in a pilot, and a run that trains
cached Telly-K from the pre-trained weights after it."""
import numpy as np
import pytest
import torch

from telly import backbones
from telly.methods import Full, Telly, TellyAuto, make_method
from telly.profiles import get_profile
from telly.selectors import deepest_still, movement_curve
from telly.store import Variant
from telly.trainer import finetune

UNIT = get_profile("smoke").changed(name="unit", train_examples=16, valid_examples=8, test_examples=8,
                                    batch_size=8, epochs=1, bootstrap_samples=50, learning_rate=1e-3)


def _curve(movements):
    return [{"layer": i, "movement": m} for i, m in enumerate(movements)]


def test_k_is_the_deepest_depth_whose_frozen_layers_all_stayed_still():
    assert deepest_still(_curve([0.01, 0.02, 0.03, 0.2, 0.4]), 0.05) == 2  # layers 0..2: blocks 0..1 frozen
    assert deepest_still(_curve([0.01, 0.02, 0.2, 0.01, 0.01]), 0.05) == 1  # a moved layer stops the climb
    assert deepest_still(_curve([0.2, 0.0, 0.0, 0.0, 0.0]), 0.05) == -1  # the embeddings moved: freeze nothing
    assert deepest_still(_curve([0.0] * 5), 0.05) == 3  # nothing moved: the top block still trains (L - 1)


def test_the_movement_of_a_layer_is_one_minus_the_lower_of_debiased_cka_and_rsa():
    rng = np.random.default_rng(0)
    before = rng.normal(size=(3, 40, 16))
    after = before.copy()
    after[2] = rng.normal(size=(40, 16))  # the top layer is replaced by noise
    curve = movement_curve(before, after)
    assert [round(row["movement"], 6) for row in curve[:2]] == [0.0, 0.0]
    assert curve[2]["movement"] > 0.5
    assert curve[2]["movement"] == pytest.approx(1 - min(curve[2]["cka_debiased"], curve[2]["rsa"]))


def test_telly_auto_settings_are_checked_and_resolve_to_a_method():
    auto = make_method("telly-auto", pilot_share=0.5, threshold=0.1)
    assert isinstance(auto, TellyAuto) and auto.tag == "telly-auto" and auto.label == "Telly-auto"
    assert auto.resolved(3) == Telly(3) and auto.resolved(-1) == Full()
    with pytest.raises(ValueError, match="pilot share"):
        TellyAuto(pilot_share=0.0)
    with pytest.raises(ValueError, match="threshold"):
        TellyAuto(threshold=1.5)
    with pytest.raises(RuntimeError, match="chooses K first"):
        auto.apply(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("threshold, expected", [(1e-9, -1), (0.999, 3)])
def test_a_telly_auto_run_pilots_chooses_and_trains_what_it_chose(tmp_path, threshold, expected):
    variant = Variant.of("code-search", "tiny-random", profile=UNIT, method="telly-auto", pilot_share=0.5,
                         threshold=threshold)
    record = finetune(variant, tmp_path, progress=False)
    selection = record["selection"]
    assert record["method"] == "telly-auto" and record["run"].endswith("__telly-auto__seed0__unit")
    assert selection["chosen_freeze"] == record["freeze"] == expected and selection["pilot_steps"] == 1
    assert [row["layer"] for row in selection["curve"]] == list(range(5)) and selection["threshold"] == threshold
    assert record["time_split"]["pilot"] == selection["pilot_seconds"] > 0
    assert record["uses_cache"] == (expected >= 0)
    alternatives = selection["alternatives"]
    assert alternatives["half"]["freeze"] == 2 and len(alternatives["gradient"]["shares"]) == 4
    assert max(alternatives["gradient"]["shares"]) == pytest.approx(1.0) and 0 <= alternatives["gradient"]["freeze"] <= 3
    # the run trained from the pre-trained weights: the frozen blocks are exactly the pre-trained ones
    trained = backbones.load("tiny-random", checkpoint=tmp_path / record["run"])
    fresh = backbones.load("tiny-random")
    if expected >= 0:
        torch.testing.assert_close(trained.layers[expected - 1].state_dict(), fresh.layers[expected - 1].state_dict())
    assert not torch.equal(trained.layers[3].output.dense.weight, fresh.layers[3].output.dense.weight)


def test_the_cli_takes_freeze_auto(tmp_path, capsys):
    from telly import cli

    assert cli.main(["finetune", "--task", "clone-detection", "--model", "tiny-random", "--profile", "smoke",
                     "--freeze", "auto", "--pilot-share", "0.5", "--threshold", "0.999", "--out", str(tmp_path)]) == 0
    record = next(tmp_path.glob("*telly-auto*.json"))
    assert "telly-auto" in record.name
    with pytest.raises(SystemExit):
        cli.main(["finetune", "--task", "clone-detection", "--freeze", "deep"])
    assert "expected an integer K or 'auto', got 'deep'" in capsys.readouterr().err


def test_the_gradient_signal_reads_each_blocks_relative_gradient_norm():
    from telly.selectors import GradientNorms, deepest_quiet

    torch.manual_seed(0)
    blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(3)])
    norms = GradientNorms(blocks)
    x = torch.randn(8, 4)
    for _ in range(2):
        out = x
        for index, block in enumerate(blocks):
            out = block(out) * (0.01 if index == 0 else 1.0)  # block 0 hardly matters to the loss
        out.pow(2).sum().backward()
        blocks.zero_grad()
    norms.remove()
    assert [len(v) for v in norms.steps.values()] == [2, 2, 2]
    shares = norms.curve()
    assert max(shares) == 1.0 and shares[0] < 0.1
    assert deepest_quiet(shares, 0.5) >= 1  # block 0 is quiet
    assert deepest_quiet([0.1, 0.2, 1.0], 0.5) == 2 and deepest_quiet([0.9, 1.0], 0.5) == 0
    assert deepest_quiet([0.0, 0.0, 0.0], 0.5) == 2  # at most L - 1
