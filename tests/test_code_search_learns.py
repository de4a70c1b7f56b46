"""Code search fine-tuning learns: the standardised cosine never divides by a dimension that does not
vary, a run that ends at the in-batch chance loss is flagged, and a laptop-sized MiniLM fine-tune
improves on its first epoch without falling below the pre-trained model."""
import math

import numpy as np
import pytest
import torch

from telly.profiles import get_profile
from telly.tasks import get_task
from telly.tasks.code_search import Standardise
from telly.trainer import training_check


def test_standardise_floors_a_dimension_that_never_varies_at_the_median_std():
    pooled = torch.randn(200, 8)
    pooled[:, 3] = 0.25  # MiniLM-L6's pooled states have such a dimension
    head = Standardise(8)
    head.fit(pooled, floor_share=1.0)
    median = float(pooled.std(0).median())
    assert float(head.std[3]) == pytest.approx(median)
    drift = torch.zeros(8)
    drift[3] = 0.01  # a small drift there during fine-tuning stays small after standardising
    assert float((head(pooled + drift) - head(pooled)).abs().max()) < 0.05
    head.fit(pooled, floor_share=0.0)  # the old behaviour: the same drift becomes enormous
    assert float((head(pooled + drift) - head(pooled)).abs().max()) > 1e3


def test_training_at_the_chance_loss_is_flagged_and_learning_is_not():
    chance = math.log(32)
    at_chance = training_check([{"train_loss": 2.5}, {"train_loss": 3.46}], chance)
    assert at_chance["at_chance"] and at_chance["chance_loss"] == pytest.approx(chance)
    assert not training_check([{"train_loss": 2.5}, {"train_loss": 0.8}], chance)["at_chance"]
    assert not training_check([{"train_loss": 9.0}], None)["at_chance"]  # no chance level, no flag
    # a fresh clone classifier starts above chance and falls through it: learning, not stuck
    assert not training_check([{"train_loss": 0.845}, {"train_loss": 0.662}], math.log(2))["at_chance"]
    assert training_check([{"train_loss": 0.70}, {"train_loss": 0.69}], math.log(2))["at_chance"]


def test_the_chance_loss_of_each_classification_task():
    from telly.tasks import TaskData

    profile = get_profile("laptop")
    data = TaskData(train=list(range(100)), valid=[], test=[], fingerprint="f", source="s")
    assert get_task("code-search").chance_loss(data, profile) == pytest.approx(math.log(32))

    class Pair:
        def __init__(self, label):
            self.label = label

    pairs = TaskData(train=[Pair(i % 2) for i in range(10)], valid=[], test=[], fingerprint="f", source="s")
    assert get_task("clone-detection").chance_loss(pairs, profile) == pytest.approx(math.log(2))


@pytest.mark.integration
def test_a_laptop_sized_code_search_fine_tune_of_minilm_learns(tmp_path):
    """The laptop profile's splits and optimiser, two epochs (the book's runs collapsed within the first)."""
    from telly.store import Variant
    from telly.trainer import finetune

    profile = get_profile("laptop").changed(epochs=2, patience=2, bootstrap_samples=100)
    record = finetune(Variant.of("code-search", "minilm-l6", -1, seed=0, profile=profile), tmp_path, progress=False)
    losses = [epoch["train_loss"] for epoch in record["epochs"]]
    assert losses[-1] < losses[0], losses
    assert not record["training_check"]["at_chance"]
    before = record["valid_before_training"]["mrr"]
    assert record["valid"]["mrr"] >= before - profile.margin("mrr")  # at the epoch early stopping kept
    assert np.isfinite(record["test"]["mrr"])


class Untouchable(list):
    """A test split that fails the moment anything reads it."""

    def _refuse(self, *args):
        raise AssertionError("a design choice read the test split")

    __iter__ = __getitem__ = __len__ = _refuse


def test_design_choices_read_the_training_and_validation_splits_never_the_test_split(tiny):
    """Standardisation statistics come from the training split, the clone threshold from validation."""
    from telly.tasks import TaskData
    from telly.trainer import _evaluate

    profile = get_profile("smoke")
    search = get_task("code-search")
    data = search.load_data(profile)
    model = search.build_model(tiny)
    search.prepare(model, TaskData(data.train, data.valid, Untouchable(), "f", "s"), tiny.tokenizer, profile)
    assert float(model.head.std.min()) > 0

    clone = get_task("clone-detection")
    pairs = clone.load_data(profile)
    classifier = clone.build_model(tiny)
    valid = _evaluate(clone, classifier, pairs.valid, tiny.tokenizer, profile)
    chosen = clone.calibrate(classifier, valid).extras["calibration"]["threshold"]
    assert float(classifier.head.threshold) == chosen
