"""The three generation tasks: data (offline corpus and real formats) and one smoke fine-tune each
through the trainer on tiny-random (telly.tasks.code_summarization / code_generation / code_completion)."""
import json

import pytest

from telly.profiles import get_profile
from telly.store import Variant
from telly.tasks import get_task
from telly.tasks.code_completion import completion_example
from telly.tasks.code_generation import split_signature

GENERATION_TASKS = ("code-summarization", "code-generation", "code-completion")

# Tiny sizes: the point is the plumbing (data -> trainer -> decoding -> metrics -> record), in seconds.
UNIT = get_profile("smoke").changed(name="unit", generation_examples=(8, 4, 6), batch_size=4,
                           max_code_tokens=32, max_target_tokens=5, bootstrap_samples=20)


# ---------------------------------------------------------------- data


def test_split_signature_separates_header_and_body():
    code = "@cache\ndef f(a,\n      b='é'):\n    x = a\n    return x + b\n"
    assert split_signature(code) == ("@cache\ndef f(a,\n      b='é'):", "x = a\nreturn x + b")
    assert split_signature("def g(s='é'): return s\n") == ("def g(s='é'):", "return s")
    with pytest.raises(ValueError, match="no function"):
        split_signature("x = 1\n")


def test_completion_example_is_a_deterministic_line_with_the_lines_above():
    code = "def f(x):\n    y = x + 1\n\n    return y\n"
    example = completion_example(code, "m:f", max_target_tokens=8)
    assert example == completion_example(code, "m:f", max_target_tokens=8)
    line = int(example.id.rsplit(":", 1)[1]) - 1
    assert example.target == code.splitlines()[line].strip() and example.target
    assert example.source == "\n".join(code.splitlines()[:line])
    assert completion_example("def f(x):\n    return x\n", "m:f", max_target_tokens=1) is None  # too long


@pytest.mark.parametrize("name", GENERATION_TASKS)
def test_offline_data_respects_sizes_and_target_lengths(name):
    from telly.metrics import code_tokens

    data = get_task(name).load_data(UNIT)
    assert data.sizes() == {"train": 8, "valid": 4, "test": 6}
    assert get_task(name).load_data(UNIT).fingerprint == data.fingerprint  # deterministic
    assert not {e.id for e in data.train} & {e.id for e in data.test}
    if name != "code-summarization":  # targets chosen to fit the decoding limit
        assert all(len(code_tokens(e.target)) <= UNIT.generation.max_target_tokens for e in data.train)


def test_concode_dev_becomes_the_test_split(tmp_path):
    rows = [{"nl": f"return the value {i} . concode_field_sep int v", "code": f"int function ( ) {{ return {i} ; }}"}
            for i in range(12)]
    (tmp_path / "train.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "dev.json").write_text("\n".join(json.dumps(r) for r in rows[:3]) + "\n")
    data = get_task("code-generation", data_path=str(tmp_path)).load_data(UNIT)
    assert data.sizes() == {"train": 8, "valid": 4, "test": 3}
    assert data.test[0].target == rows[0]["code"] and "dev as test" in data.source
    assert {e.target for e in data.valid}.isdisjoint(e.target for e in data.train)


def test_line_completion_test_file_is_split_when_alone(tmp_path):
    folder = tmp_path / "javaCorpus" / "line_completion"
    folder.mkdir(parents=True)
    rows = [{"input": f"<s> class A{i} {{ <EOL> int f ( ) {{", "gt": f"return {i} ;"} for i in range(30)]
    (folder / "test.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = get_task("code-completion", data_path=str(tmp_path)).load_data(UNIT)
    assert data.sizes() == {"train": 8, "valid": 3, "test": 3}
    example = data.test[0]
    assert "<EOL>" not in example.source and "\n" in example.source and example.target.startswith("return")


# ---------------------------------------------------------------- through the trainer


@pytest.mark.parametrize("name, freeze, method", [("code-summarization", -1, "telly"), ("code-generation", 2, "telly"),
                                                  ("code-completion", 0, "telly"), ("code-summarization", -1, "lora")])
def test_smoke_finetune_records_generation_metrics(tmp_path, name, freeze, method):
    from telly.trainer import finetune

    task = get_task(name)
    variant = Variant.of(name, "tiny-random", freeze, method=method, profile=UNIT)
    record = finetune(variant, tmp_path, progress=False)
    assert record["uses_cache"] == (freeze >= 0)  # Telly-K runs train from the frozen-prefix cache
    assert set(task.metrics) <= set(record["test"]) and set(task.metrics) <= set(record["test_ci"])
    for metric in task.metrics:
        assert record["test_ci"][metric]["low"] <= record["test"][metric] <= record["test_ci"][metric]["high"] + 1e-9
    assert 0.0 <= record["test"][task.metric] <= 100.0
    assert record["test"]["decode_seconds"] > 0  # decoding timed apart from the epochs' train_seconds
    assert record["test"]["degenerate"] in (0.0, 1.0)
    predictions = record["test_per_example"]["prediction"]
    assert len(predictions) == len(record["test_per_example"]["reference"]) == UNIT.generation.generation_examples[2]
    assert (tmp_path / f"{record['run']}.json").exists()


def test_evaluation_keeps_examples_and_the_degenerate_report(tiny):
    import copy

    import torch

    task = get_task("code-summarization")
    data = task.load_data(UNIT)
    model = task.build_model(copy.deepcopy(tiny)).eval()
    with torch.no_grad():  # EOS always wins: every prediction is empty, which must be flagged
        model.head.bias[model.specials["eos"]] = 1e9
        evaluation = task.evaluate(model, data.test, tiny.tokenizer, UNIT, batch_size=4)
    extras = evaluation.extras
    assert extras["degenerate"]["is_degenerate"] and extras["degenerate"]["empty"] == len(data.test)
    assert evaluation.metrics["degenerate"] == 1.0 and evaluation.metrics["empty_share"] == 1.0
    assert [e["reference"] for e in extras["examples"]] == [e.target for e in data.test[:5]]
    assert extras["decode_seconds"] > 0 and extras["decoding"]["max_new_tokens"] == UNIT.generation.max_target_tokens


def test_references_are_scored_as_written_not_as_the_tokenizer_spells_them(tiny):
    import copy

    import torch

    from telly.tasks.generation import GenerationExample

    task = get_task("code-completion")
    examples = [GenerationExample("def f(x):\n    y = x", "return Path(y)", "m:f:3")] * 2
    model = task.build_model(copy.deepcopy(tiny)).eval()  # an uncased tokenizer: it cannot write "P"
    with torch.no_grad():
        evaluation = task.evaluate(model, examples, tiny.tokenizer, UNIT, batch_size=2)
    # (old: references were decoded through the tokenizer, "return path ( y )")
    assert list(evaluation.per_example["reference"]) == ["return Path(y)"] * 2
    perfect = task.scored_columns(examples, ["return path(y)", "return Path(y)"])
    assert list(perfect["exact_match"]) == [0.0, 100.0]  # lower-casing is the model's loss, not forgiven


@pytest.mark.parametrize("name, prediction", [("code-summarization", "add all numbers"), ("code-generation", "pass"),
                                              ("code-completion", "total = 0")])
def test_trivial_baselines_are_scored_by_the_tasks_own_metrics(name, prediction):
    from telly.tasks import TaskData
    from telly.tasks.generation import GenerationExample

    task = get_task(name)
    example = GenerationExample("def addAllNumbers(values):\n    total = 0\n\n", "Add the values.",
                                "lib/m.py:Calc.addAllNumbers")
    data = TaskData([], [], [example, example], "x", "unit test")
    baseline = task.trivial_baseline(data, UNIT)
    assert list(baseline.per_example["prediction"]) == [prediction] * 2
    assert baseline.metrics == task.score(baseline.per_example) and set(task.metrics) <= set(baseline.metrics)
    assert baseline.extras["name"] and baseline.extras["description"]


def test_trivial_baselines_on_the_offline_data():
    summaries = get_task("code-summarization").load_data(UNIT)
    names = get_task("code-summarization").trivial_baseline(summaries, UNIT)
    assert all(p and p == p.lower() for p in names.per_example["prediction"])
    completion = get_task("code-completion").load_data(UNIT)
    previous = get_task("code-completion").trivial_baseline(completion, UNIT)
    assert list(previous.per_example["prediction"]) == [
        [line.strip() for line in e.source.splitlines() if line.strip()][-1] for e in completion.test]
    assert 0 <= previous.metrics["edit_similarity"] <= 100


def test_the_name_baseline_refuses_examples_without_a_function_name():
    from telly.tasks import TaskData
    from telly.tasks.generation import GenerationExample

    data = TaskData([], [], [GenerationExample("code", "summary", "data/test.jsonl:")], "x", "unit test")
    with pytest.raises(ValueError, match=r"'data/test.jsonl:' carries no function name"):
        get_task("code-summarization").trivial_baseline(data, UNIT)


@pytest.mark.integration
@pytest.mark.parametrize("name", GENERATION_TASKS)
def test_smoke_profile_on_minilm(tmp_path, name):
    from telly.trainer import finetune

    record = finetune(Variant.of(name, "minilm-l6", 4, profile=get_profile("smoke")), tmp_path, progress=False)
    task = get_task(name)
    assert set(task.metrics) <= set(record["test"])
    assert record["parameters"]["backbone_trainable"] < record["parameters"]["backbone_total"]
