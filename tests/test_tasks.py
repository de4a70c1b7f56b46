import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from telly.features import masked_mean
from telly.profiles import get_profile
from telly.tasks import TASKS, Evaluation, Task, TaskData, TaskModel, get_task
from telly.tasks.clone_detection import (
    ClonePairExample,
    _anonymise,
    code_token_set,
    token_jaccard,
    token_overlap_baseline,
)
from telly.tasks.code_search import SearchExample

DATA = Path(__file__).parent / "data"
SMOKE = get_profile("smoke")


def test_registry_names_the_five_tasks_and_rejects_others():
    assert set(TASKS) == {"code-search", "clone-detection", "code-summarization", "code-generation",
                          "code-completion"}
    with pytest.raises(ValueError, match="unknown task 'code-serch'.*clone-detection"):
        get_task("code-serch")
    with pytest.raises(ValueError, match="unknown setting"):
        get_task("code-search", temperature=3)
    assert get_task("code-search", scale=5.0).config.scale == 5.0


def test_the_one_pooling_helper_ignores_padding_and_passes_gradients():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]]], requires_grad=True)
    pooled = masked_mean(hidden, torch.tensor([[1, 1, 0]]))
    assert pooled.item() == 2.0
    pooled.sum().backward()
    assert hidden.grad[0, :, 0].tolist() == [0.5, 0.5, 0.0]


def test_a_task_must_define_every_part_of_the_interface():
    class Half(Task):
        name, metric, metrics = "half", "m", ("m",)

        def load_data(self, profile, seed=0):
            return None

    with pytest.raises(TypeError, match="abstract"):
        Half()


def test_evaluation_rejects_ragged_columns():
    with pytest.raises(ValueError, match="differ in length"):
        Evaluation({}, {"a": np.ones(2), "b": np.ones(3)})


def test_code_search_offline_data_is_sized_by_profile_and_split_by_module():
    data = get_task("code-search").load_data(SMOKE)
    assert data.sizes() == {"train": SMOKE.train_examples, "valid": SMOKE.valid_examples, "test": SMOKE.test_examples}
    modules = {name: {e.id.split(":")[0] for e in data.split(name)} for name in ("train", "test")}
    assert not modules["train"] & modules["test"]
    assert all(e.query and "def " in e.code and '"""' not in e.code[:200] for e in data.test[:10])
    assert get_task("code-search").load_data(SMOKE).fingerprint == data.fingerprint


def test_code_search_evaluation_ranks_the_identical_text_first(tiny):
    task = get_task("code-search")
    texts = [f"def f{i}(value):\n    return value + {i} * other_{i}" for i in range(12)]
    examples = [SearchExample(query=t, code=t, id=str(i)) for i, t in enumerate(texts)]
    model = task.build_model(tiny).eval()
    with torch.no_grad():
        result = task.evaluate(model, examples, tiny.tokenizer, SMOKE, batch_size=5)
    # a query identical to its code has cosine 1 with it: nothing can rank higher
    assert result.metrics == {"mrr": 1.0, "recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0}
    shuffled = [SearchExample(query=texts[i], code=texts[(i + 1) % 12], id=str(i)) for i in range(12)]
    with torch.no_grad():
        worse = task.evaluate(model, shuffled, tiny.tokenizer, SMOKE, batch_size=5)
    assert worse.metrics["mrr"] < 0.5
    assert len(worse) == 12 and task.score(worse.per_example) == worse.metrics


def test_code_search_loss_trains_only_unfrozen_parameters(tiny):
    from telly.backbones import load
    from telly.freezing import freeze_bottom

    task = get_task("code-search")
    model = task.build_model(load("tiny-random"))
    freeze_bottom(model, 3)
    examples = [SearchExample(query=f"q {i}", code=f"def f{i}(): pass", id=str(i)) for i in range(4)]
    loss = model(task.collate(examples, tiny.tokenizer, SMOKE))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    grads = {n: p.grad is not None for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(grads.values())
    assert all(p.grad is None for n, p in model.named_parameters() if "layer.0." in n or "embeddings" in n)


def test_clone_pairs_are_balanced_with_rewritten_variants_and_no_name_shortcut():
    data = get_task("clone-detection").load_data(SMOKE)
    for split in ("train", "valid", "test"):
        labels = [e.label for e in data.split(split)]
        assert abs(sum(labels) - len(labels) / 2) <= 1
    for pair in data.train[:20]:
        for code in (pair.code_a, pair.code_b):
            ast.parse(code)  # both sides are valid Python
            assert code.startswith(("def func(", "async def func("))
        if pair.label == 1:
            assert pair.code_a != pair.code_b


def test_anonymise_renames_the_function_and_its_recursive_calls():
    code = "def fact(n):\n    # comment\n    return 1 if n < 2 else n * fact(n - 1)\n"
    assert _anonymise(code) == "def func(n):\n    return 1 if n < 2 else n * func(n - 1)"


def test_clone_detection_scores_f1_with_scikit_learn(tiny):
    from sklearn.metrics import f1_score

    task = get_task("clone-detection")
    per_example = {"prediction": np.array([1, 1, 0, 0, 1]), "label": np.array([1, 0, 0, 1, 1])}
    scores = task.score(per_example)
    assert scores["f1"] == pytest.approx(f1_score(per_example["label"], per_example["prediction"]))
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    examples = [ClonePairExample("def func(a): return a", "def func(b): return b", i % 2, str(i)) for i in range(6)]
    model = task.build_model(tiny).eval()
    with torch.no_grad():
        result = task.evaluate(model, examples, tiny.tokenizer, SMOKE, batch_size=4)
    assert len(result) == 6 and set(result.per_example["prediction"]) <= {0, 1}
    assert isinstance(model, TaskModel) and model.backbone is tiny.model


def _csn_dir(tmp_path, broken_valid_line: bool) -> Path:
    root = tmp_path / "csn" / "python"
    root.mkdir(parents=True)
    rows = [json.loads(line) for line in (DATA / "codesearchnet/python/train.jsonl").read_text().splitlines()]
    for split in ("train", "valid", "test"):
        lines = [json.dumps(row) for row in rows]
        if split == "valid" and broken_valid_line:
            lines.insert(1, '{"code": "def f(): pass", "docstring": ')
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "csn"


def test_code_search_reads_codesearchnet_through_the_loaders(tmp_path):
    data = get_task("code-search", data_path=str(_csn_dir(tmp_path, False))).load_data(SMOKE)
    assert data.sizes() == {"train": 3, "valid": 3, "test": 3}
    assert "CodeSearchNet" in data.source and all(e.query and e.code for e in data.train)


def test_a_broken_dataset_line_names_the_file_and_line(tmp_path):
    task = get_task("code-search", data_path=str(_csn_dir(tmp_path, True)))
    with pytest.raises(ValueError, match=r"valid\.jsonl.*(line )?2"):
        task.load_data(SMOKE)


def test_clone_head_compares_the_pair_by_default_and_takes_the_papers_concat_on_request(tiny):
    pair = [ClonePairExample("def f(x):\n    return x", "def g(y):\n    return y", 1, "0")] * 2
    batch = get_task("clone-detection").collate(pair, tiny.tokenizer, SMOKE)
    for features, width in (("compare", 4), ("concat", 2)):
        model = get_task("clone-detection", pair_features=features).build_model(tiny)
        assert model.head.dense.in_features == width * tiny.hidden_size
        assert model.logits(batch["inputs"]).shape == (2, 2)
    with pytest.raises(ValueError, match=r"pair_features must be one of \['compare', 'concat'\], got 'sum'"):
        get_task("clone-detection", pair_features="sum")


def test_clone_detection_reads_bigclonebench_through_the_loaders(tmp_path):
    root = shutil.copytree(DATA / "bigclonebench", tmp_path / "bcb")
    shutil.copy(root / "train.txt", root / "valid.txt")
    data = get_task("clone-detection", data_path=str(root)).load_data(SMOKE)
    assert data.sizes() == {"train": 3, "valid": 3, "test": 2} and {e.label for e in data.train} == {0, 1}
    assert "BigCloneBench" in data.source


def _pairs(rows) -> list[ClonePairExample]:
    return [ClonePairExample(a, b, label, str(i)) for i, (a, b, label) in enumerate(rows)]


SAME = "def func(a, b):\n    return a + b\n"
OTHER = "class K:\n    x = [1, 2]\n"


def test_token_overlap_baseline_is_perfect_where_overlap_separates_the_classes():
    # Clones share every token, non-clones none: any threshold in (0, 1] separates them.
    rows = [(SAME, SAME, 1), (SAME, OTHER, 0)] * 4
    data = TaskData(train=[], valid=_pairs(rows), test=_pairs(rows), fingerprint="x", source="unit test")
    result = token_overlap_baseline(data, samples=50)
    assert result["test"] == {"f1": 1.0, "precision": 1.0, "recall": 1.0}
    assert 0 < result["threshold"] <= 1 and result["valid_f1"] == 1.0
    assert result["test_ci"]["f1"]["low"] == 1.0 and len(result["test_per_example"]["overlap"]) == 8


def test_token_overlap_baseline_cannot_separate_clones_that_share_no_tokens():
    # Clones written with disjoint tokens, non-clones identical strings: overlap points the wrong way.
    rows = [(SAME, OTHER, 1), (SAME, SAME, 0)] * 4
    data = TaskData(train=[], valid=_pairs(rows), test=_pairs(rows), fingerprint="x", source="unit test")
    result = token_overlap_baseline(data, samples=50)
    assert result["test"]["f1"] < 1.0 and result["test"]["precision"] < 1.0
    assert result["test_ci"]["f1"]["low"] <= result["test"]["f1"] <= result["test_ci"]["f1"]["high"]


def test_token_overlap_threshold_comes_from_valid_not_test():
    half = "def func(a, b):\n    pass\n"  # overlap with SAME: 7 shared of 10 tokens
    assert 0 < token_jaccard(SAME, half) < 1
    # Valid: half-overlap pairs are clones, so the best cut admits them (threshold <= that overlap).
    valid = _pairs([(SAME, SAME, 1), (SAME, half, 1), (SAME, OTHER, 0), (SAME, OTHER, 0)])
    # Test: half-overlap pairs are non-clones; a cut chosen on test would exclude them.
    test = _pairs([(SAME, SAME, 1), (SAME, half, 0), (SAME, half, 0), (SAME, OTHER, 0)])
    result = token_overlap_baseline(TaskData([], valid, test, "x", "unit test"), samples=50)
    assert result["threshold"] == pytest.approx(token_jaccard(SAME, half))
    assert result["valid_f1"] == 1.0
    assert result["test"]["precision"] == pytest.approx(1 / 3) and result["test"]["recall"] == 1.0


def test_token_sets_fall_back_to_words_for_code_python_cannot_tokenize():
    java = "/* don't */ int x = 1;"
    assert {"int", "x", "=", "1", ";"} <= code_token_set(java)
    assert code_token_set("def f(a):\n    return a\n") == {"def", "f", "(", "a", ")", ":", "return"}
    with pytest.raises(ValueError, match="valid split is empty"):
        token_overlap_baseline(TaskData([], [], _pairs([(SAME, SAME, 1)]), "x", "unit test"))


def test_clone_negatives_include_near_misses_that_token_overlap_cannot_separate():
    from telly.corpus import token_kinds

    data = get_task("clone-detection").load_data(SMOKE)
    pairs = data.train + data.valid + data.test
    near = [p for p in pairs if p.label == 0 and p.id.endswith("~")]
    assert len(near) >= len(pairs) // 8

    def overlap(pair):
        a, b = ({t.text for t in token_kinds(code)} for code in (pair.code_a, pair.code_b))
        return len(a & b) / len(a | b)

    clones = {p.id[:-1]: p for p in pairs if p.label == 1}
    gaps = [overlap(clones[p.id[:-1]]) - overlap(p) for p in near if p.id[:-1] in clones]
    assert gaps and np.median(np.abs(gaps)) < 0.1  # a near miss overlaps its clone's original as much as the clone
