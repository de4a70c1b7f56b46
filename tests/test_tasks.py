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
    PAIR_KINDS,
    ClonePairExample,
    PairClassifierHead,
    _anonymise,
    clone_baselines,
    code_token_set,
    second_side_baseline,
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
    assert data.sizes() == {"train": SMOKE.training.train_examples, "valid": SMOKE.training.valid_examples, "test": SMOKE.training.test_examples}
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


def test_a_collapsed_code_search_encoder_scores_chance_not_one(tiny, monkeypatch):
    task = get_task("code-search")
    examples = [SearchExample(query=f"query {i}", code=f"def f{i}(): pass", id=str(i)) for i in range(12)]
    model = task.build_model(tiny).eval()
    # Every text embeds to the same vector, so every candidate ties (old: each query ranked its own code first).
    monkeypatch.setattr(model, "embed", lambda inputs: torch.ones(len(inputs["input_ids"]), 4))
    result = task.evaluate(model, examples, tiny.tokenizer, SMOKE, batch_size=5)
    assert result.metrics["mrr"] == pytest.approx(sum(1 / k for k in range(1, 13)) / 12)
    assert result.metrics["recall@1"] == pytest.approx(1 / 12) and result.metrics["recall@10"] == pytest.approx(10 / 12)


def test_code_search_standardises_pooled_states_by_the_training_splits_statistics(tiny):
    train = [SearchExample(query=f"return the value plus {i}", code=f"def f{i}(v):\n    return v + {i}", id=str(i))
             for i in range(10)]
    data = TaskData(train, [], [], "x", "unit test")
    task = get_task("code-search")
    model = task.build_model(tiny).eval()
    batch = task.collate(train, tiny.tokenizer, SMOKE)["inputs"]
    with torch.no_grad():
        raw = torch.cat([model.pooled(batch[field]) for field in ("query", "code")])
        assert torch.equal(model.embed(batch["code"]), torch.nn.functional.normalize(raw[10:], dim=-1))  # before prepare
        task.prepare(model, data, tiny.tokenizer, SMOKE)
        std = raw.std(0).clamp_min(float(raw.std(0).median()))  # no dimension weighs more than the median one
        assert torch.allclose(model.head.mean, raw.mean(0), atol=1e-5) and torch.allclose(model.head.std, std, atol=1e-5)
        expected = torch.nn.functional.normalize((raw[10:] - raw.mean(0)) / std, dim=-1)
        assert torch.allclose(model.embed(batch["code"]), expected, atol=1e-5)
    assert not model.training  # prepare leaves the mode as it found it
    assert set(model.head.state_dict()) == {"mean", "std"}  # saved with the head
    plain = get_task("code-search", standardise=False)
    untouched = plain.build_model(tiny)
    plain.prepare(untouched, data, tiny.tokenizer, SMOKE)
    assert torch.equal(untouched.head.mean, torch.zeros(tiny.hidden_size))


def test_code_search_trivial_baseline_is_a_lexical_ranker_of_identifier_words():
    from telly.tasks import identifier_words

    assert identifier_words("def getHTTPResponse_2(file_name): x = self.maxSize") == [
        "def", "get", "http", "response", "2", "file", "name", "x", "self", "max", "size"]
    task = get_task("code-search")
    codes = ["def read_file(path):\n    return open(path).read()", "def parseJsonText(text):\n    return loads(text)",
             "def add_numbers(a, b):\n    return a + b", "def unrelated():\n    pass"]
    queries = ["Read a file", "parse JSON text", "add two numbers", "nothing shared here"]
    test = [SearchExample(query=q, code=c, id=str(i)) for i, (q, c) in enumerate(zip(queries, codes))]
    baseline = task.trivial_baseline(TaskData([], [], test, "x", "unit test"), SMOKE)
    # The first three queries name their code's identifiers; the last shares no word with any code:
    # all four codes tie for it, so it gets the chance reciprocal rank (1 + 1/2 + 1/3 + 1/4) / 4.
    assert baseline.per_example["reciprocal_rank"] == pytest.approx([1, 1, 1, (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4])
    assert baseline.metrics == task.score(baseline.per_example)
    assert baseline.extras["name"].startswith("lexical") and "identifier" in baseline.extras["description"]


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
        assert all(PAIR_KINDS[e.kind] == e.label for e in data.split(split))
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
    examples = [ClonePairExample("def func(a): return a", "def func(b): return b", i % 2, str(i), f"f{i // 2}",
                                 "variant" if i % 2 else "other-function") for i in range(6)]
    model = task.build_model(tiny).eval()
    with torch.no_grad():
        result = task.evaluate(model, examples, tiny.tokenizer, SMOKE, batch_size=4)
    assert len(result) == 6 and set(result.per_example["prediction"]) <= {0, 1}
    # each pair's function travels with it, so the statistics resample a function's pairs together
    assert list(result.per_example["group"]) == ["f0", "f0", "f1", "f1", "f2", "f2"]
    assert list(result.per_example["kind"][:2]) == ["other-function", "variant"]
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
    pair = [ClonePairExample("def f(x):\n    return x", "def g(y):\n    return y", 1, "0", "f", "variant")] * 2
    batch = get_task("clone-detection").collate(pair, tiny.tokenizer, SMOKE)
    for features, width in (("compare", 4), ("concat", 2)):
        model = get_task("clone-detection", pair_features=features).build_model(tiny)
        assert model.head.dense.in_features == width * tiny.hidden_size
        assert model.logits(batch["inputs"]).shape == (2, 2)
    with pytest.raises(ValueError, match=r"pair_features must be one of \['compare', 'concat'\], got 'sum'"):
        get_task("clone-detection", pair_features="sum")


def test_clone_head_normalises_each_pooled_vector_so_an_outlier_dimension_cannot_saturate_it():
    torch.manual_seed(0)
    head = PairClassifierHead(16, dropout=0.0).eval()
    first, second = torch.randn(4, 16), torch.randn(4, 16)
    with torch.no_grad():
        logits = head(first, second)
        # Scaling and shifting each vector leaves the logits as they were ...
        assert torch.allclose(head(3.0 * first + 1.0, 0.5 * second - 2.0), logits, atol=1e-5)
        # ... and a decoder's outlier dimension (SmolLM2's pooled states: ~37 where the rest are ~2)
        # leaves the tanh layer unsaturated.
        first[:, 0] = second[:, 0] = 40.0
        normalised = [torch.nn.functional.layer_norm(x, (16,)) for x in (first, second)]
        features = torch.cat(normalised + [(normalised[0] - normalised[1]).abs(), normalised[0] * normalised[1]], -1)
        assert torch.allclose(head(first, second), head.out(torch.tanh(head.dense(features))), atol=1e-5)
        assert torch.tanh(head.dense(features)).abs().max() < 1.0 - 1e-3


def test_clone_calibration_sets_the_threshold_with_the_best_valid_f1_and_evaluation_follows_it(tiny):
    from telly.tasks import Evaluation

    task = get_task("clone-detection")
    model = task.build_model(tiny).eval()
    assert float(model.head.threshold) == 0.5
    # A ranking that separates the classes perfectly while every probability is below 0.5: at 0.5
    # nothing is called a clone (F1 0); the valid split's best cut, 0.3, scores 1.
    valid = Evaluation({}, {"clone_probability": np.array([0.1, 0.3, 0.2, 0.4]), "label": np.array([0, 1, 0, 1])})
    calibrated = task.calibrate(model, valid)
    assert calibrated.extras["calibration"] == {"threshold": pytest.approx(0.3), "f1_at_half": 0.0}
    assert calibrated.metrics["f1"] == 1.0 and list(calibrated.per_example["prediction"]) == [0, 1, 0, 1]
    assert float(model.head.threshold) == pytest.approx(0.3)
    examples = [ClonePairExample("def func(a): return a", f"def func(b): return b + {i}", i % 2, str(i), f"f{i // 2}",
                                 "variant" if i % 2 else "other-function") for i in range(6)]
    with torch.no_grad():
        result = task.evaluate(model, examples, tiny.tokenizer, SMOKE, batch_size=4)
        probability = result.per_example["clone_probability"]
        assert np.array_equal(result.per_example["prediction"], (probability >= np.float32(0.3)).astype(int))
        model.head.threshold.fill_(float(probability.max()) + 1e-3)  # above every pair: none is a clone
        assert task.evaluate(model, examples, tiny.tokenizer, SMOKE, batch_size=4).metrics["f1"] == 0.0


def test_clone_detection_reads_bigclonebench_through_the_loaders(tmp_path):
    root = shutil.copytree(DATA / "bigclonebench", tmp_path / "bcb")
    shutil.copy(root / "train.txt", root / "valid.txt")
    data = get_task("clone-detection", data_path=str(root)).load_data(SMOKE)
    assert data.sizes() == {"train": 3, "valid": 3, "test": 2} and {e.label for e in data.train} == {0, 1}
    assert "BigCloneBench" in data.source
    assert all(e.group == e.id.split("/")[0] and e.kind == "bigclonebench" for e in data.train)


def _pairs(rows) -> list[ClonePairExample]:
    """Unit-test pairs, two rows per function (group)."""
    return [ClonePairExample(a, b, label, str(i), f"f{i // 2}", "variant" if label else "other-function")
            for i, (a, b, label) in enumerate(rows)]


SAME = "def func(a, b):\n    return a + b\n"
OTHER = "class K:\n    x = [1, 2]\n"


def test_token_overlap_baseline_is_perfect_where_overlap_separates_the_classes():
    # Clones share every token, non-clones none: any threshold in (0, 1] separates them.
    rows = [(SAME, SAME, 1), (SAME, OTHER, 0)] * 4
    data = TaskData(train=[], valid=_pairs(rows), test=_pairs(rows), fingerprint="x", source="unit test")
    result = token_overlap_baseline(data, samples=50)
    assert result["test"] == {"f1": 1.0, "precision": 1.0, "recall": 1.0, "accuracy": 1.0}
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


def test_clone_pairs_put_edits_on_both_labels_so_spotting_an_edit_wins_nothing():
    data = get_task("clone-detection").load_data(SMOKE)
    pairs = data.train + data.valid + data.test
    by_group: dict[str, list] = {}
    for pair in pairs:
        by_group.setdefault(pair.group, []).append(pair)
    complete = [group for group in by_group.values() if len(group) == 2]
    assert len(complete) >= len(by_group) - 3  # truncating a split may cut one function's second pair
    for clone, other in (sorted(group, key=lambda p: -p.label) for group in complete):
        assert (clone.label, other.label) == (1, 0)
        # A function with two near misses gives both edited kinds, and side A is the same near miss in
        # both: whether a side carries an edit says nothing about the label.
        assert (clone.kind == "same-edit") == (other.kind == "different-edits")
        if clone.kind == "same-edit":
            assert clone.code_a == other.code_a and clone.code_b != other.code_b
    kinds = {kind: sum(p.kind == kind for p in pairs) for kind in PAIR_KINDS}
    assert kinds["same-edit"] == kinds["different-edits"] >= len(pairs) // 10  # (old data: no same-edit clones)

    def overlap(pair):
        return token_jaccard(pair.code_a, pair.code_b)

    # Near misses keep token overlap from separating the edited pairs: both overlap alike.
    same = np.median([overlap(p) for p in pairs if p.kind == "same-edit"])
    different = np.median([overlap(p) for p in pairs if p.kind == "different-edits"])
    assert abs(same - different) < 0.1


def test_clone_trivial_baseline_is_token_overlap_with_a_threshold_from_the_valid_split():
    from telly.tasks.clone_detection import always_clone, token_jaccard, token_overlap_baseline

    data = get_task("clone-detection").load_data(SMOKE)
    baseline = get_task("clone-detection").trivial_baseline(data, SMOKE)
    overlap = token_overlap_baseline(data, samples=0)
    assert baseline.extras["name"] == "token overlap (Jaccard)" and baseline.extras["threshold"] == overlap["threshold"]
    called = [int(token_jaccard(e.code_a, e.code_b) >= overlap["threshold"]) for e in data.test]
    assert list(baseline.per_example["prediction"]) == called
    assert list(baseline.per_example["group"]) == [e.group for e in data.test]
    # the weaker reference stays beside it: always "clone"
    clone = always_clone(data, SMOKE)
    share = np.mean([e.label for e in data.test])
    assert clone["test"]["recall"] == 1.0 and clone["test"]["precision"] == pytest.approx(share)


def _leaky(n_functions: int, leak: bool) -> list[ClonePairExample]:
    """Pairs whose second side names its label (leak) or is the same for both labels."""
    pairs = []
    for i in range(n_functions):
        for label in (1, 0):
            marker = ("same_thing" if label else "other_thing") if leak else "thing"
            pairs.append(ClonePairExample(f"def func(a{i}):\n    return a{i}", f"def func(b):\n    return {marker}({i})",
                                          label, f"{i}/{label}", f"f{i}", "variant" if label else "other-function"))
    return pairs


def test_the_second_side_baseline_finds_a_label_that_leaks_into_one_side():
    leaky = TaskData(_leaky(20, True), _leaky(6, True), _leaky(10, True), "x", "unit test")
    found = second_side_baseline(leaky, samples=50)
    assert found["test"]["f1"] == found["test"]["accuracy"] == 1.0 and found["C"] in (0.01, 0.1, 1.0, 10.0)
    sealed = TaskData(_leaky(20, False), _leaky(6, False), _leaky(10, False), "x", "unit test")
    assert second_side_baseline(sealed, samples=50)["test"]["f1"] <= 2 / 3  # no better than always "clone"
    with pytest.raises(ValueError, match="train split is empty"):
        second_side_baseline(TaskData([], leaky.valid, leaky.test, "x", "unit test"))


def test_clone_baselines_resample_a_functions_pairs_together():
    data = TaskData(_leaky(20, False), _leaky(6, False), _leaky(10, False), "x", "unit test")
    result = clone_baselines(data, SMOKE)
    assert set(result["baselines"]) == {"always-clone", "second-side", "token-overlap"}
    assert result["test_kinds"] == {"other-function": {"pairs": 10, "clones": 0}, "variant": {"pairs": 10, "clones": 10}}
    always = result["baselines"]["always-clone"]
    # Each function has one clone and one non-clone: resampling functions keeps precision at 1/2, so
    # the interval of always "clone" has no width (resampling rows would give it one).
    assert always["test_ci"]["f1"]["low"] == always["test_ci"]["f1"]["high"] == pytest.approx(2 / 3)
    assert always["clone_share_by_kind"] == {"other-function": 1.0, "variant": 1.0}


def _clone_table(lows):
    import pandas as pd

    rows = [{"task": "clone-detection", "method": "full" if k == -1 else "telly", "freeze": k, "uses_cache": k >= 0,
             "run": "Base (full)" if k == -1 else f"Telly-{k}", "value": low + 0.02, "low": low, "high": low + 0.04}
            for k, low in lows.items()]
    return pd.DataFrame(rows)


def _baselines(second_accuracy=(0.51, 0.46, 0.56), kinds=None):
    def result(name, value, low, high, accuracy=(0.5, 0.5, 0.5), **extra):
        return {"name": name, "test": {"precision": 0.5},
                "test_ci": {"f1": {"value": value, "low": low, "high": high},
                            "accuracy": dict(zip(("value", "low", "high"), accuracy))},
                "clone_share_by_kind": {"different-edits": 0.9}, **extra}

    return {"baselines": {"always-clone": result("always clone", 0.667, 0.667, 0.667),
                          "second-side": result("second function only (bag of tokens)", 0.55, 0.50, 0.60,
                                                accuracy=second_accuracy),
                          "token-overlap": result("token overlap (Jaccard)", 0.74, 0.72, 0.76, threshold=0.4)},
            "test_kinds": kinds if kinds is not None else {"variant": {"pairs": 120, "clones": 120},
                                                           "same-edit": {"pairs": 73, "clones": 73},
                                                           "different-edits": {"pairs": 73, "clones": 0},
                                                           "other-function": {"pairs": 120, "clones": 0}},
            "functions": 193}


def test_clone_baseline_table_puts_every_baseline_above_the_runs():
    from telly.report.freezing import clone_baseline_table

    table = clone_baseline_table(_baselines(), _clone_table({-1: 0.8, 2: 0.7}))
    assert list(table.run) == ["always clone", "second function only (bag of tokens)", "token overlap (Jaccard)",
                               "Base (full)", "Telly-2"]
    assert list(table.kind) == ["baseline"] * 3 + ["fine-tuned"] * 2


def test_clone_baseline_prose_names_near_misses_and_follows_the_numbers():
    from telly.report.freezing_prose import clone_baseline_prose

    text = clone_baseline_prose(_baselines(), _clone_table({-1: 0.8, 2: 0.7}))
    assert "73 put the same one-edit change on both sides (clones)" in text
    assert "near-miss (Type-3) clones" in text and "146 pairs built from near misses" in text
    assert "no better, so one side alone does not give the label away" in text
    assert "always answering the larger class gets 0.500" in text
    assert "calls 90% of the different-edit near misses clones" in text
    assert "1 of the 2 fine-tuned variants score above every baseline's CI: Base (full)." in text
    # Contrary numbers: a second side that predicts the label (at an F1 below always "clone"), no
    # variant above the baselines, real data.
    leaky = clone_baseline_prose(_baselines(second_accuracy=(0.6, 0.56, 0.64)), _clone_table({-1: 0.7, 2: 0.7}))
    assert "one side alone carries part of the label" in leaky and "does not give" not in leaky
    assert "0 of the 2 fine-tuned variants score above every baseline's CI." in leaky
    real = clone_baseline_prose(_baselines(kinds={"bigclonebench": {"pairs": 10, "clones": 5}}), _clone_table({-1: 0.8}))
    assert "near miss" not in real.split("Always")[0] and "test pairs come from" not in real
    plain = clone_baseline_prose(_baselines(kinds={"variant": {"pairs": 5, "clones": 5},
                                                    "other-function": {"pairs": 5, "clones": 0}}), _clone_table({-1: 0.8}))
    assert "test pairs come from 193 functions" in plain and "Type-3" not in plain


def test_trivial_baseline_table_says_whether_full_fine_tuning_beats_it():
    from telly.report.freezing import trivial_baseline_table

    def summary(low):
        trivial = {"name": "previous line", "value": 40.0, "difference": 5.0, "low": low, "high": 9.0}
        return {"tasks": {"code-completion": {"metric": "edit_similarity", "full": {"value": 45.0}, "trivial": trivial},
                          "code-search": {"metric": "mrr", "full": {"value": 0.7}, "trivial": None}}}

    table = trivial_baseline_table(summary(1.0))
    assert list(table.task) == ["code-completion"] and table["full beats it"].tolist() == [True]
    assert table.iloc[0]["baseline"] == "previous line" and table.iloc[0]["baseline score"] == 40.0
    assert trivial_baseline_table(summary(-1.0))["full beats it"].tolist() == [False]
