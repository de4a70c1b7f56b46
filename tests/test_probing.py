import dataclasses
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.metrics import average_precision_score

from telly import backbones
from telly.corpus import _bucket
from telly.features import layer_features
from telly.metrics import ranking_average_precision
from telly.probing import run as probing_run
from telly.probing.data import INPUT_SETS, control_labels, word_features
from telly.probing.estimators import ClassifierProbe, RetrievalProbe
from telly.probing.properties import PROPERTIES, _semantic_items, _semantic_ranking
from telly.profiles import get_profile
from telly.report import probing as report
from telly.stats import bootstrap_ci
from telly.store import RunStore
from telly.studies import probing as study
from telly.studies.probing import run_probing

TINY_PROFILE = dataclasses.replace(get_profile("smoke"), name="smoke", probe_functions=48,
                                   max_code_tokens=32, probe_epochs=4, bootstrap_samples=50)
PROBES = [prop.name for prop in PROPERTIES]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TELLY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _signal_layer(rng, n, layer=2, layers=4, d=16, classes=3):
    """States where only `layer` carries the label (linearly); the others are noise."""
    y = rng.integers(0, classes, n)
    X = rng.normal(size=(layers, n, d)).astype(np.float32)
    X[layer, :, :classes] += 4.0 * np.eye(classes)[y]
    return X, y


def test_classifier_finds_the_layer_that_carries_the_label():
    rng = np.random.default_rng(0)
    X, y = _signal_layer(rng, 600)
    train, test = slice(0, 400), slice(400, None)
    layerwise = ClassifierProbe(epochs=20).fit(X[:, train], y[train])
    scores = layerwise.score(X[:, test], y[test])
    assert scores.shape == (4,)
    assert scores[2] > 0.9 and max(scores[[0, 1, 3]]) < 0.55
    assert layerwise.predict(X[:, test]).shape == (4, 200)
    weighted = ClassifierProbe(weighted=True, epochs=20).fit(X[:, train], y[train])
    assert weighted.score(X[:, test], y[test])[0] > 0.9
    assert weighted.weights_.sum() == pytest.approx(1.0, abs=1e-5)
    assert weighted.weights_.argmax() == 2


def test_control_task_scores_low_where_the_probe_scores_high():
    rng = np.random.default_rng(1)
    X, y = _signal_layer(rng, 600)
    # One control label per example ("per function"): nothing to learn that transfers to test.
    control = control_labels([f"fn{i}" for i in range(600)], y, seed=0)
    probe = ClassifierProbe(epochs=20).fit(X[:, :400], control[:400])
    assert probe.score(X[:, 400:], control[400:])[2] < 0.5


def test_control_labels_are_fixed_per_type_and_follow_the_label_distribution():
    keys = ["def", "x", "def", "(", "x", "def"] * 200
    labels = np.array([0, 1, 0, 2, 1, 0] * 200)
    control = control_labels(keys, labels, seed=3)
    for key in set(keys):
        assert len({c for k, c in zip(keys, control) if k == key}) == 1
    many = control_labels([str(i) for i in range(3000)], np.array([0] * 2700 + [1] * 300), seed=0)
    assert 0.85 < (many == 0).mean() < 0.95


def test_classifier_rejects_bad_inputs():
    with pytest.raises(ValueError, match="one label per example"):
        ClassifierProbe().fit(np.zeros((2, 5, 3)), np.zeros(4))
    with pytest.raises(ValueError, match="at least 2 classes"):
        ClassifierProbe().fit(np.zeros((2, 5, 3)), np.zeros(5))
    with pytest.raises(ValueError, match=r"shape \(layers, n, d\)"):
        ClassifierProbe().fit(np.zeros((5, 3)), np.zeros(5))


def test_probes_say_they_are_not_fitted():
    X = np.zeros((2, 5, 3))
    for call in (lambda: ClassifierProbe().predict(X), lambda: ClassifierProbe().score(X, np.zeros(5))):
        with pytest.raises(NotFittedError, match="ClassifierProbe is not fitted"):
            call()
    probe = RetrievalProbe()
    for call in (lambda: probe.embed(X), lambda: probe.average_precision(X, X, np.eye(5, dtype=bool)),
                 lambda: probe.score(X, X, np.eye(5, dtype=bool))):
        with pytest.raises(NotFittedError, match="RetrievalProbe is not fitted"):
            call()
    assert issubclass(NotFittedError, ValueError)


def test_retrieval_probe_learns_a_linear_correspondence_in_one_layer():
    rng = np.random.default_rng(2)
    n, d = 300, 16
    A = rng.normal(size=(3, n, d)).astype(np.float32)
    B = rng.normal(size=(3, n, d)).astype(np.float32)
    B[1] = A[1] @ rng.normal(size=(d, d)).astype(np.float32) + 0.1 * B[1]
    groups = np.arange(n)
    probe = RetrievalProbe(epochs=30, dim=16).fit(A[:, :200], B[:, :200], groups[:200])
    relevant = np.eye(100, dtype=bool)
    ap = probe.average_precision(A[:, 200:], B[:, 200:], relevant)
    assert ap.shape == (3, 100)
    assert ap[1].mean() > 0.8 and max(ap[0].mean(), ap[2].mean()) < 0.3
    np.testing.assert_allclose(probe.score(A[:, 200:], B[:, 200:], relevant), ap.mean(1))
    weighted = RetrievalProbe(weighted=True, epochs=30, dim=16).fit(A[:, :200], B[:, :200],
                                                                    groups[:200])
    assert weighted.weights_.sum() == pytest.approx(1.0, abs=1e-5)
    assert weighted.weights_.argmax() == 1


def test_ranking_average_precision_matches_scikit_learn():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(2, 20, 30))
    relevant = rng.random((20, 30)) < 0.2
    relevant[:, 0] = True
    ours = ranking_average_precision(scores, relevant)
    for h in range(2):
        for q in range(20):
            assert ours[h, q] == pytest.approx(average_precision_score(relevant[q], scores[h, q]))
    single = np.eye(5, dtype=bool)
    ranks = ranking_average_precision(-np.abs(np.arange(5)[:, None] - np.arange(5)[None, :]) +
                                      0.01 * np.arange(5)[None, :], single)
    assert ranks == pytest.approx(np.ones(5))  # the true item always ranks first: MRR 1


def test_ranking_average_precision_excludes_the_query_itself():
    groups = np.array([0, 0, 1, 1])
    scores = np.eye(4) * 10 + (groups[:, None] == groups[None, :]) * 1.0
    relevant = groups[:, None] == groups[None, :]
    assert ranking_average_precision(scores, relevant, exclude_self=True) == pytest.approx(np.ones(4))
    with pytest.raises(ValueError, match="no relevant candidate"):
        ranking_average_precision(np.zeros((2, 2)), np.eye(2, dtype=bool), exclude_self=True)


def test_bootstrap_ci_brackets_the_estimate_and_resamples_clusters():
    values = np.r_[np.ones(80), np.zeros(20)]
    ci = bootstrap_ci(values, samples=500)["value"]
    assert ci["low"] < 0.8 < ci["high"] and ci["high"] - ci["low"] < 0.25
    # Two clusters (words of two functions) with very different rates: the CI of the ratio is wide.
    ci = bootstrap_ci(np.r_[np.ones(10), np.zeros(10)], clusters=np.repeat([0, 1], 10),
                      samples=500)["value"]
    assert ci["low"] == 0.0 and ci["high"] == 1.0


def test_property_registry_is_the_order_and_the_metrics_every_page_uses():
    from telly.report import charts, paper

    assert PROBES == ["lexical", "syntactic", "structural", "semantic"]
    assert charts.PROBE_ORDER == PROBES
    assert list(paper.PAPER_PROBE_METRICS) == list(paper.PAPER_PROBE_REGIONS) == PROBES
    assert set(paper.PAPER_WEIGHTED_PROBES) == set(PROBES)
    for prop in PROPERTIES:
        assert paper.PAPER_PROBE_METRICS[prop.name] == prop.metric
        assert prop.paper_region in ("lower", "middle", "upper", "spread")
        assert prop.inputs and set(prop.inputs) <= set(INPUT_SETS)
    assert {name for prop in PROPERTIES for name in prop.inputs} == set(INPUT_SETS)


def test_word_features_average_the_sub_tokens_of_each_word():
    from telly.corpus import token_kinds

    tiny = backbones.load("tiny-random")
    code = "def tokenizer_helper(value):\n    return value + 42\n"
    features = layer_features(tiny, [code], max_length=64, keep_tokens=True, progress=False)
    words = token_kinds(code)
    X, where = word_features(features, [words])
    assert X.shape == (tiny.num_layers + 1, len(words), tiny.hidden_size)
    assert where[:, 1].tolist() == list(range(len(words)))
    offsets = features.token_offsets(0)
    name = next(j for j, w in enumerate(words) if w.text == "tokenizer_helper")
    inside = [t for t, (s, e) in enumerate(offsets)
              if e > s and s < words[name].end and e > words[name].start]
    assert len(inside) > 1  # split into sub-tokens
    expected = np.asarray(features.token_states(0), dtype=np.float32)[:, inside].mean(1)
    np.testing.assert_allclose(X[:, name], expected, atol=1e-5)


def _write_corpus(root, modules=12, per_module=5):
    """A small package of modules whose names put some in the test split and some in train."""
    share = TINY_PROFILE.probe_test_share
    names = [f"mod{i}" for i in range(200)]
    test = [m for m in names if _bucket(m) < share][:3]
    train = [m for m in names if _bucket(m) >= share][:modules - 3]
    for m in test + train:
        lines = []
        for j in range(per_module):
            branches = "".join(f"    if x > {k}:\n        x = x - {k}\n" for k in range(j))
            lines.append(f"def {m}_f{j}(x, y):\n    \"\"\"Compute a value from the inputs {j}.\"\"\"\n"
                         f"    total = x * {j} + y\n{branches}    return total + x\n\n")
            lines.append(f"def {m}_g{j}(items):\n    \"\"\"Sum the items that pass a test.\"\"\"\n"
                         f"    out = []\n    for item in items:\n        if item % {j + 2}:\n"
                         f"            out.append(item)\n    return sum(out)\n\n")
        (root / f"{m}.py").write_text("".join(lines))
    (root / "broken.py").write_text("def broken(:\n    pass\n")
    return root


@pytest.fixture
def tiny_corpus(tmp_path):
    root = tmp_path / "code"
    root.mkdir()
    return _write_corpus(root)


def test_run_probing_end_to_end_on_tiny_random(tiny_corpus, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    record = run_probing("tiny-random", TINY_PROFILE, corpus=tiny_corpus, out=out, progress=False)
    on_disk = json.loads((out / "probing.json").read_text())
    assert on_disk["inputs"] == record["inputs"]
    assert record["model"] == "tiny-random" and record["corpus_fingerprint"]
    assert record["versions"]["torch"] and record["device"]
    assert record["data"]["skipped_files"] == 1
    assert record["data"]["train_functions"] > 0 and record["data"]["test_functions"] > 0
    layers = record["num_layers"] + 1
    assert list(record["probes"]) == PROBES
    for probe in PROBES:
        result = record["probes"][probe]
        assert list(result["states"]) == ["random", "pretrained"]
        for state in result["states"].values():
            assert len(state["layerwise"]) == len(state["layerwise_ci"]) == layers
            assert len(state["weighted"]["weights"]) == layers
            assert sum(state["weighted"]["weights"]) == pytest.approx(1.0, abs=1e-5)
            low, high = state["weighted"]["ci"]
            assert low <= state["weighted"]["score"] <= high
            assert state["selectivity"]["weighted"] == pytest.approx(
                state["weighted"]["score"] - state["control"]["weighted"])
    assert {b["name"] for b in record["probes"]["structural"]["baselines"]} >= {"length only"}
    assert set(record["findings"]) == set(PROBES)
    text = report.describe_probing(record)
    assert "peaks at layer" in text and "tiny-random" in text
    assert len(report.layer_rows(record)) == 4 * 2 * layers
    contrast = report.paper_contrast(record)
    assert contrast.count("the paper finds it") == 4
    from telly.report.paper import PAPER_WEIGHTED_PROBES

    table = report.paper_comparison([record])
    assert len(table) == 4 * 3
    assert table[0]["paper (unixcoder-base)"] == PAPER_WEIGHTED_PROBES["lexical"]["random"]
    assert "tiny-random" in table[0] and "tiny-random" not in table[2]  # no fine-tuned state
    assert [row["probe"] for row in report.weighted_table(record)] == PROBES
    description = report.data_description(record)
    assert description.startswith(f"**tiny-random** ({record['num_layers']} layers)")
    assert f"{record['data']['train_functions']} training" in description and "`smoke`" in description
    note = report.backbones_note([record], {"smollm2-135m": "OSError: offline"})
    assert "**Skipped smollm2-135m**: OSError: offline" in note and note.endswith("`tiny-random`")
    from telly.report import charts

    layers_spec = charts.probing_layers_chart(report.layer_rows(record)).to_dict()
    assert len(layers_spec["datasets"][next(iter(layers_spec["datasets"]))]) == 4 * 2 * layers
    charts.probing_weights_chart(report.weight_rows(record)).to_dict()
    # The store finds the written record by its inputs, and only by them.
    store = RunStore(out)
    assert store.find_document("probing", record["inputs"]) == on_disk
    assert store.find_document("probing", {**record["inputs"], "seed": 1}) is None
    # Same inputs: the stored record is reused without computing anything.
    monkeypatch.setattr(probing_run, "state_features", lambda *a, **k: pytest.fail("recomputed"))
    again = run_probing("tiny-random", TINY_PROFILE, corpus=tiny_corpus, out=out, progress=False)
    assert again == on_disk


def test_checkpoint_counts_by_its_weights_not_its_path_or_date(tiny_corpus, tmp_path):
    import torch
    from safetensors.torch import save_file

    from telly.corpus import load_corpus

    corpus = load_corpus(tiny_corpus, progress=False)
    path = tmp_path / "tuned.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path))

    def inputs(checkpoint=path):
        return study.probing_inputs("tiny-random", TINY_PROFILE, corpus, checkpoint=checkpoint)

    before = inputs()
    assert before["checkpoint"] and inputs(None)["checkpoint"] is None
    os.utime(path, ns=(0, 0))
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(path.read_bytes())
    assert inputs() == before and inputs(copy) == before  # same bytes: same inputs
    save_file({"weight": torch.ones(3)}, str(path))
    after = inputs()
    assert after["checkpoint"] != before["checkpoint"]
    assert {k for k in before if before[k] != after[k]} == {"checkpoint"}


def test_empty_corpus_directory_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no Python files"):
        run_probing("tiny-random", TINY_PROFILE, corpus=empty, out=tmp_path / "runs", progress=False)


def test_corpus_in_one_module_is_a_clear_error(tmp_path):
    root = tmp_path / "one"
    root.mkdir()
    (root / "only.py").write_text("".join(
        f"def f{i}(x):\n    \"\"\"Return x plus a constant.\"\"\"\n    return x + {i}\n\n"
        for i in range(20)))
    with pytest.raises(ValueError, match="module"):
        run_probing("tiny-random", TINY_PROFILE, corpus=root, out=tmp_path / "runs", progress=False)


def test_checkpoint_of_another_architecture_is_a_clear_error(tiny_corpus, tmp_path):
    from safetensors.torch import save_file

    other = backbones.load("tiny-random").model.state_dict()
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.items()}, str(path))
    with pytest.raises(ValueError, match="does not match"):
        run_probing("minilm-l6", TINY_PROFILE, corpus=tiny_corpus, checkpoint=path,
                    out=tmp_path / "runs", progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_probing("tiny-random", TINY_PROFILE, corpus=tiny_corpus,
                    checkpoint=tmp_path / "missing.safetensors", out=tmp_path / "runs")


def test_fine_tuned_state_is_probed_from_a_checkpoint(tiny_corpus, tmp_path):
    from safetensors.torch import save_file

    tuned = backbones.load("tiny-random", seed=7).model.state_dict()
    path = tmp_path / "run"
    path.mkdir()
    save_file({f"backbone.{k}": v.contiguous() for k, v in tuned.items()},
              str(path / "backbone.safetensors"))
    record = run_probing("tiny-random", TINY_PROFILE, corpus=tiny_corpus, checkpoint=path,
                         out=tmp_path / "runs", progress=False)
    states = record["probes"]["structural"]["states"]
    assert list(states) == ["random", "pretrained", "finetuned"]
    assert str(path) in record["backbones"]["finetuned"]["model_source"]


@pytest.mark.integration
def test_cli_smoke_profile_on_minilm(tmp_path):
    from telly.cli import main

    out = tmp_path / "runs"
    assert main(["probe", "--profile", "smoke", "--out", str(out)]) == 0
    record = json.loads((out / "probing.json").read_text())
    assert record["model"] == "minilm-l6" and record["num_layers"] == 6
    lexical = record["probes"]["lexical"]["states"]["pretrained"]
    assert lexical["weighted"]["score"] > 0.9
    assert lexical["selectivity"]["weighted"] > 0
    for probe in PROBES:
        assert len(record["probes"][probe]["states"]["pretrained"]["layerwise"]) == 7


def test_chapter_helpers(tmp_path):
    assert study.record_dir("runs", "minilm-l6").as_posix() == "runs/probing/minilm-l6"
    assert study.record_dir("runs", "/models/my model/").name == "models_my_model"
    smoke = get_profile("smoke")
    small = study.extra_model_size("smoke")
    assert small["functions"] <= smoke.probe_functions // 2
    assert small["functions"] <= smoke.extra_probe_functions
    assert small["max_tokens"] <= min(smoke.max_code_tokens, smoke.extra_probe_tokens)
    assert study.unavailable_reason("minilm-l6") is None
    assert study.chapter_checkpoint("minilm-l6", "smoke", tmp_path, checkpoint="a/run") == \
        type(tmp_path)("a/run")
    assert study.chapter_checkpoint("minilm-l6", "smoke", tmp_path, finetune_task=None) is None
    assert report.weight_spread([0.25] * 4) == pytest.approx(1.0)
    assert report.weight_spread([1.0, 0.0, 0.0]) == pytest.approx(0.0, abs=1e-6)


def test_probing_study_keeps_records_per_backbone(tiny_corpus, tmp_path):
    result = study.probing_study("tiny-random", TINY_PROFILE, tmp_path / "store", corpus=tiny_corpus,
                                 finetune_task=None, extra_models=["tiny-random"], progress=False)
    assert result["skipped"] == {} and [r["model"] for r in result["records"]] == ["tiny-random"]
    stored = study.record_dir(tmp_path / "store", "tiny-random") / "probing.json"
    assert json.loads(stored.read_text())["inputs"] == result["records"][0]["inputs"]


def test_near_misses_are_candidates_never_queries():
    data = SimpleNamespace(semantic=np.array([0, 1, 2]), variants=[["a1"], ["b1"], ["c1"]],
                           mutants=[["a2"], [], ["c2"]], is_test=np.array([True, True, False]))
    groups, test, near_miss = _semantic_items(data)
    assert list(groups) == [0, 1, 2, 0, 1, 2, -1, -3] and list(near_miss) == [False] * 6 + [True] * 2
    queries, candidates, relevant = _semantic_ranking(groups, test, near_miss)
    assert list(queries) == [0, 1, 3, 4] and list(candidates) == [0, 1, 3, 4, 6]
    # A near miss scored above the true variant costs precision: AP of query 0 falls to 1/2.
    scores = np.zeros((4, 5))
    scores[0, 4], scores[0, 2] = 2.0, 1.0
    ap = ranking_average_precision(scores, relevant, exclude_self=True)
    assert ap[0] == pytest.approx(0.5)
