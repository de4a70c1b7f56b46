import pytest

from telly.backbones import load
from telly.freezing import freeze_bottom

# The paper's trainable-parameter table for UniXcoder-base (millions).
PAPER_MILLIONS = {-1: 125.93, 0: 85.05, 5: 49.62, 8: 28.35, 10: 14.18, 11: 7.09}


@pytest.fixture(scope="module")
def unixcoder_shape():
    return load("unixcoder-shape")


def test_reproduces_the_paper_table(unixcoder_shape):
    for k, millions in PAPER_MILLIONS.items():
        report = freeze_bottom(unixcoder_shape, k)
        assert round(report.trainable_parameters / 1e6, 2) == millions
        assert round(report.total_parameters / 1e6, 2) == 125.93
    per_layer = {freeze_bottom(unixcoder_shape, k).trainable_parameters for k in range(12)}
    assert len(per_layer) == 12


def test_freeze_marks_the_right_modules(tiny):
    freeze_bottom(tiny, 2)
    frozen = {n for n, p in tiny.model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("embeddings.") for n in frozen)
    assert any(n.startswith("pooler.") for n in frozen)
    assert any(n.startswith("encoder.layer.1.") for n in frozen)
    assert not any(n.startswith("encoder.layer.2.") for n in frozen)
    report = freeze_bottom(tiny, -1)  # unfreezing restores everything
    assert report.trainable_parameters == report.total_parameters


def test_task_heads_stay_trainable():
    from torch import nn

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = load("tiny-random").model  # not the shared fixture: this leaves it frozen
            self.head = nn.Linear(32, 2)

    model = Classifier()
    report = freeze_bottom(model, 3)
    assert all(p.requires_grad for p in model.head.parameters())
    assert report.total_parameters == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("k", [-2, 4, 100, 1.5, True])
def test_out_of_range_names_valid_range(tiny, k):
    with pytest.raises(ValueError, match=r"-1\.\.3"):
        freeze_bottom(tiny, k)
