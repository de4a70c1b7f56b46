import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.metrics import average_precision_score

from telly import analysis, backbones
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

TINY_PROFILE = get_profile("smoke").changed(name="smoke", probe_functions=48,
                                   max_code_tokens=96, sbt_max_tokens=256, probe_epochs=4,
                                   bootstrap_samples=50, probe_weight_refits=3)
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
    """A small package of modules whose names put some in the tasks' test split, one in their
    valid split, and the rest in their train split, two of those in the module-hash range
    [0.2, 0.25) that a 25% probing split of its own would have held out."""
    names = [f"mod{i}" for i in range(200)]
    test = [m for m in names if _bucket(m) < 0.1][:3]
    valid = [m for m in names if 0.1 <= _bucket(m) < 0.2][:1]
    edge = [m for m in names if 0.2 <= _bucket(m) < 0.25][:2]
    train = [m for m in names if _bucket(m) >= 0.25][:modules - 6]
    for m in test + valid + edge + train:
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
    assert 0 <= record["data"]["sbt_cut_share"] <= 1 and record["data"]["sbt_max_tokens"] == 256
    assert set(record["seconds"]) == {"random", "pretrained"}
    for probe in PROBES:
        result = record["probes"][probe]
        assert list(result["states"]) == ["random", "pretrained"]
        assert result["control"] == (probe == "lexical")
        names = [b["name"] for b in result["baselines"]]
        for state_name, state in result["states"].items():
            assert len(state["layerwise"]) == len(state["layerwise_ci"]) == layers
            assert len(state["weighted"]["weights"]) == layers
            assert sum(state["weighted"]["weights"]) == pytest.approx(1.0, abs=1e-5)
            low, high = state["weighted"]["ci"]
            assert low <= state["weighted"]["score"] <= high
            # Controls only where their keys recur (word types); everything else is read
            # against the random-init backbone and the surface baselines.
            assert ("selectivity" in state) == ("control" in state) == (probe == "lexical")
            assert ("vs_random" in state) == (state_name != "random")
            assert list(state["vs_baselines"]) == names
            for difference in [state.get("vs_random"), *state["vs_baselines"].values()]:
                if difference is not None:
                    assert difference["low"] <= difference["difference"] <= difference["high"]
                    assert 0 <= difference["p_value"] <= 1
            location = state["location"]
            assert location["centre"] == pytest.approx(
                sum(k * w for k, w in enumerate(state["weighted"]["weights"])))
            assert location["relative_depth"] == pytest.approx(location["centre"] / record["num_layers"])
            if state_name == "random":  # nothing is located in a random network: no refits
                assert "p_value" not in location and "centre_ci" not in location
            else:
                assert location["refits"] == 3 and len(location["shuffled_distances"]) == 3
            assert state["peak"]["layer"] == int(np.argmax(state["layerwise"]))
        if "pretrained" in result["states"]:
            pretrained = result["states"]["pretrained"]
            random_state = result["states"]["random"]
            assert pretrained["vs_random"]["difference"] == pytest.approx(
                pretrained["weighted"]["score"] - random_state["weighted"]["score"])
            for b in result["baselines"]:
                assert pretrained["vs_baselines"][b["name"]]["difference"] == pytest.approx(
                    pretrained["weighted"]["score"] - b["score"])
    lexical = record["probes"]["lexical"]["states"]["pretrained"]
    assert lexical["selectivity"]["weighted"] == pytest.approx(
        lexical["weighted"]["score"] - lexical["control"]["weighted"])
    assert [b["name"] for b in record["probes"]["structural"]["baselines"]] == \
        ["length only", "bag of tokens", "majority class"]
    assert [b["name"] for b in record["probes"]["syntactic"]["baselines"]] == ["length matching"]
    assert set(record["findings"]) == set(PROBES)
    text = report.describe_probing(record)
    assert ("layer weights locate it" in text or "layer weights do not locate it" in text) and "tiny-random" in text
    assert len(report.layer_rows(record)) == 4 * 2 * layers
    contrast = report.paper_contrast(record)
    assert contrast.count("the paper finds it") == 4
    from telly.report.paper import PAPER_WEIGHTED_PROBES

    table = report.paper_comparison([record])
    assert len(table) == 4 * 3
    assert table[0]["paper (unixcoder-base)"] == PAPER_WEIGHTED_PROBES["lexical"]["random"]
    assert "tiny-random" in table[0] and "tiny-random" not in table[2]  # no fine-tuned state
    verdicts = report.verdict_table(record)
    assert [(row["probe"], row["state"]) for row in verdicts] == [(p, "pretrained") for p in PROBES]
    assert len(report.baseline_rows(record)) == 1 + 1 + 3 + 1
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


def test_a_killed_probing_run_resumes_from_its_finished_properties(tiny_corpus, tmp_path, monkeypatch):
    whole = run_probing("tiny-random", TINY_PROFILE, corpus=tiny_corpus, out=tmp_path / "whole", progress=False)
    assert not list((tmp_path / "cache" / "probing").glob("*/*"))  # kept only until the record is written
    evaluated: list[str] = []
    real = {prop.name: type(prop).evaluate for prop in PROPERTIES}

    def counting(name, die_at=None):
        def evaluate(self, *args, **kwargs):
            evaluated.append(name)
            if len(evaluated) == die_at:
                raise KeyboardInterrupt  # a kill in the pre-trained state's second property (random runs first)
            return real[name](self, *args, **kwargs)
        return evaluate

    for prop in PROPERTIES:
        monkeypatch.setattr(type(prop), "evaluate", counting(prop.name, die_at=len(PROPERTIES) + 2))
    with pytest.raises(KeyboardInterrupt):
        run_probing("tiny-random", TINY_PROFILE, corpus=tiny_corpus, out=tmp_path / "killed", progress=False)
    evaluated.clear()
    for prop in PROPERTIES:
        monkeypatch.setattr(type(prop), "evaluate", counting(prop.name))
    resumed = run_probing("tiny-random", TINY_PROFILE, corpus=tiny_corpus, out=tmp_path / "killed", progress=False)
    # The random state and the pre-trained state's first property are read back, not probed again.
    assert evaluated == PROBES[1:]
    assert resumed["probes"] == whole["probes"] and resumed["findings"] == whole["findings"]


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
    small = study.extra_model_size(get_profile("smoke"))
    assert small["functions"] <= smoke.probing.probe_functions // 2
    assert small["functions"] <= smoke.probing.extra_probe_functions
    assert small["max_tokens"] <= min(smoke.inputs.max_code_tokens, smoke.probing.extra_probe_tokens)
    assert study.unavailable_reason("minilm-l6") is None
    assert study.chapter_checkpoint("minilm-l6", get_profile("smoke"), tmp_path, checkpoint="a/run") == \
        type(tmp_path)("a/run")
    assert study.chapter_checkpoint("minilm-l6", get_profile("smoke"), tmp_path, finetune_task=None) is None


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


# ================================================================ issue 13: probing validity


def test_probed_functions_sit_in_the_fine_tuning_tasks_splits(tiny_corpus, tiny):
    """No held-out probed function is in a fine-tuning task's train (or valid) split, and every
    probing training function is in their train split, as `telly.corpus.split` makes them."""
    from telly.corpus import load_corpus, split
    from telly.probing.data import prepare

    corpus = load_corpus(tiny_corpus, progress=False)
    tasks = {name: {(f.path, f.qualname) for f in part} for name, part in split(corpus).items()}
    data = prepare(corpus, 48, TINY_PROFILE, tokenizer=tiny.tokenizer, max_length=96,
                   num_states=3, hidden_size=32)
    held_out = {(f.path, f.qualname) for f, t in zip(data.functions, data.is_test) if t}
    training = {(f.path, f.qualname) for f, t in zip(data.functions, data.is_test) if not t}
    assert held_out and held_out <= tasks["test"]
    assert training and training <= tasks["train"]


def test_syntactic_functions_fit_their_code_budget_and_the_sbt_cut_is_measured(tiny_corpus):
    """The syntactic probe draws functions whose code the backbone sees whole; the share of their
    SBT sequences longer than the SBT budget is measured (here with one token per word)."""
    from telly.corpus import load_corpus
    from telly.probing.data import prepare

    def words(texts, **kwargs):
        return {"input_ids": [text.split() for text in texts]}

    corpus = load_corpus(tiny_corpus, progress=False)
    budget = 24
    data = prepare(corpus, 48, TINY_PROFILE.changed(sbt_max_tokens=100),
                   tokenizer=words, max_length=budget, num_states=3, hidden_size=32)
    fits = [len(f.code_without_doc.split()) <= budget for f in data.functions]
    assert all(fits[i] for i in data.syntactic) and not all(fits)
    assert data.code_cut_share == pytest.approx(1 - np.mean(fits))
    sbt_lengths = np.array([len(data.functions[i].sbt) for i in data.syntactic])
    assert data.sbt_cut_share == pytest.approx((sbt_lengths > 100).mean())
    assert 0 < data.sbt_cut_share < 1


@pytest.mark.integration
@pytest.mark.parametrize("profile_name", ["smoke", "laptop"])
def test_sbt_budget_cuts_at_most_five_percent_on_the_stdlib(profile_name, tmp_path, monkeypatch):
    """The profiles' SBT budgets, chosen from the data: at most 5% of the SBTs the syntactic probe
    encodes are cut, with MiniLM's tokenizer at each profile's sizes."""
    from telly.corpus import load_corpus
    from telly.probing.data import prepare

    monkeypatch.setenv("TELLY_CACHE", str(tmp_path / "cache"))
    profile = get_profile(profile_name)
    minilm = backbones.load("minilm-l6")
    data = prepare(load_corpus("stdlib", progress=False), profile.probing.probe_functions, profile,
                   tokenizer=minilm.tokenizer, max_length=profile.inputs.max_code_tokens, num_states=7,
                   hidden_size=384)
    assert data.sbt_cut_share <= 0.05
    assert profile.probing.sbt_max_tokens <= minilm.model.config.max_position_embeddings


def test_structural_baselines_see_what_a_surface_model_sees():
    """A bag of tokens learns complexity from counted `if`s, better than lengths (equal line
    counts) and the training majority; the length-matching retrieval baseline ranks by predicted
    SBT length."""
    from telly.probing.properties import Structural, Syntactic

    def function(branches, filler):
        body = "".join(f"    if x == {k}:\n        x = 0\n" for k in range(branches))
        body += "".join(f"    y = x + {k}\n    z = y * {k}\n" for k in range(filler))
        return SimpleNamespace(code_without_doc=f"def f(x):\n{body}    return x\n",
                               complexity_class=min(branches + 1, 6) - 1)

    rng = np.random.default_rng(0)
    functions = []
    for _ in range(120):
        branches = int(rng.integers(0, 6))
        functions.append(function(branches, 6 - branches))  # same number of lines for every class
    data = SimpleNamespace(functions=functions, texts=[f.code_without_doc for f in functions],
                           is_test=np.arange(120) >= 80)
    found = {b.name: b.scores.per_example.mean() for b in Structural().baselines(data, TINY_PROFILE)}
    assert list(found) == ["length only", "bag of tokens", "majority class"]
    assert found["bag of tokens"] > 0.95 and found["bag of tokens"] > found["length only"]
    labels = np.array([f.complexity_class for f in functions])
    majority = np.bincount(labels[:80]).argmax()
    assert found["majority class"] == pytest.approx((labels[80:] == majority).mean())

    # Length matching: SBT length grows with code length, so the right tree is found by length.
    from telly.corpus import structure_sequence, token_kinds

    codes = ["def f(x):\n" + "".join(f"    x = x + {k}\n" for k in range(n)) + "    return x\n"
             for n in range(1, 41)]
    fns = [SimpleNamespace(token_kinds=token_kinds(c), sbt=structure_sequence(c)) for c in codes]
    data = SimpleNamespace(functions=fns, syntactic=np.arange(40), is_test=np.arange(40) % 2 == 1,
                           sbt_texts=[" ".join(f.sbt) for f in fns])
    (baseline,) = Syntactic().baselines(data, TINY_PROFILE)
    assert baseline.name == "length matching" and baseline.scores.per_example.mean() > 0.9
    assert list(baseline.scores.rows) == list(range(1, 40, 2))


def test_semantic_rows_resample_a_function_with_its_variants(monkeypatch, capsys):
    """The semantic probe's held-out rows (originals and variants) are clustered by function, and
    its CIs resample whole functions; the weighted probe's refits show their progress when asked."""
    from telly.probing.data import StateFeatures
    from telly.probing.properties import Semantic

    rng = np.random.default_rng(0)
    n, d = 24, 8
    data = SimpleNamespace(semantic=np.arange(n), variants=[["v"] * 2 for _ in range(n)],
                           mutants=[["m"] for _ in range(n)], is_test=np.arange(n) >= 16,
                           functions=[SimpleNamespace(code_without_doc="def f():\n    pass\n")] * n)
    centres = rng.normal(size=(n, d)).astype(np.float32)
    code = (centres + 0.1 * rng.normal(size=(n, d)))[None].repeat(3, 0).astype(np.float32)
    variants = np.concatenate([np.repeat(centres, 2, 0), centres + 2.0])
    variants = (variants + 0.1 * rng.normal(size=variants.shape))[None].repeat(3, 0).astype(np.float32)
    features = StateFeatures(code=code, variants=variants)
    monkeypatch.setenv("TELLY_PROGRESS", "text")
    state = Semantic().evaluate(features, data, TINY_PROFILE, progress=True)
    refits = TINY_PROFILE.probing.probe_weight_refits
    assert f"weighted probe refits:   0%|          | 0/{2 * refits}" in capsys.readouterr().err  # text mode: 5 s apart
    groups, test, near_miss = _semantic_items(data)
    queries, _, _ = _semantic_ranking(groups, test, near_miss)
    assert list(state.weighted.clusters) == list(groups[queries])
    assert len(set(state.weighted.clusters)) == 8 and len(queries) == 24
    expected = bootstrap_ci(state.weighted.per_example, clusters=groups[queries],
                            samples=TINY_PROFILE.statistics.bootstrap_samples)["value"]
    assert state.result["weighted"]["ci"] == [expected["low"], expected["high"]]


def test_peak_is_claimed_only_above_both_neighbours():
    from telly.probing.properties import _peak

    rng = np.random.default_rng(0)
    flat = (rng.random((5, 200)) < 0.6).astype(float)
    peaked = flat.copy()
    peaked[2] = (rng.random(200) < 0.95).astype(float)
    found = _peak(peaked, None, TINY_PROFILE, 0)
    assert found["layer"] == 2 and found["distinct"]
    assert [n["layer"] for n in found["neighbours"]] == [1, 3]
    assert all(n["low"] > 0 for n in found["neighbours"])
    found = _peak(flat, None, TINY_PROFILE, 0)
    assert not found["distinct"]
    edge = _peak(np.stack([peaked[2], flat[0], flat[1]]), None, TINY_PROFILE, 0)
    assert edge["layer"] == 0 and [n["layer"] for n in edge["neighbours"]] == [1] and edge["distinct"]


def test_weight_location_finds_the_layer_and_tells_moved_weights_from_shuffled_ones():
    """Signal in layer 3 of 0..4: the weights centre near 3 and move from uniform further than on
    shuffled labels; with no signal anywhere they do not."""
    from telly.probing.properties import _location, centre_of_mass, distance_from_uniform

    profile = TINY_PROFILE.changed(probe_weight_refits=19)
    rng = np.random.default_rng(0)

    def located(X, y):
        def refit(index, shuffle, seed):
            labels = y if shuffle is None else shuffle.permutation(y)
            return ClassifierProbe(weighted=True, epochs=30, seed=seed).fit(X[:, index], labels[index]).weights_

        weights = ClassifierProbe(weighted=True, epochs=30).fit(X, y).weights_
        return _location(weights, refit, np.arange(len(y)), profile, 0)

    X, y = _signal_layer(rng, 300, layer=3, layers=5)
    found = located(X, y)
    assert 2.5 < found["centre"] <= 4 and found["centre_ci"][0] > 2
    assert found["relative_depth"] == pytest.approx(found["centre"] / 4)
    assert found["p_value"] <= 0.05 and found["distance_from_uniform"] > max(found["shuffled_distances"])
    noise = located(rng.normal(size=(5, 300, 16)).astype(np.float32), rng.integers(0, 3, 300))
    assert noise["p_value"] > 0.05
    assert centre_of_mass([0.2] * 5) == pytest.approx(2.0)
    assert distance_from_uniform([0.2] * 5) == pytest.approx(0.0)
    assert distance_from_uniform([1, 0, 0, 0, 0]) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="at least 2"):
        _location(np.full(5, 0.2), lambda *args: np.full(5, 0.2), np.arange(3),
                  profile.changed(probe_weight_refits=1), 0)
    assert set(_location(np.full(5, 0.2), None, np.arange(3), profile, 0)) == \
        {"centre", "relative_depth", "distance_from_uniform"}


def test_refits_in_worker_processes_equal_refits_in_one():
    """The weighted probe's refits give the same weights on two workers as in this process, in order, with
    features over joblib's 1 MB threshold (the path on which they reach the workers as memory-mapped files)."""
    from telly.probing.properties import refit_in_parallel

    rng = np.random.default_rng(0)
    X, y = _signal_layer(rng, 2000, layer=2, layers=5, d=32)
    assert X.nbytes > 1_000_000

    def refit(index, shuffle, seed):
        labels = y if shuffle is None else shuffle.permutation(y)
        return ClassifierProbe(weighted=True, epochs=3, seed=seed).fit(X[:, index], labels[index]).weights_

    drawn = rng.integers(0, len(y), len(y))

    def fits():  # a shuffling generator is used up by its fit: fresh ones for each pass
        return [(drawn, None, 1), (np.arange(len(y)), np.random.default_rng(5), 2), (np.arange(len(y)), None, 3)]

    alone = list(refit_in_parallel(refit, fits(), workers=1))
    shared = list(refit_in_parallel(refit, fits(), workers=2))
    assert len(shared) == 3 and all(np.array_equal(a, b) for a, b in zip(alone, shared))
    assert not np.array_equal(alone[0], alone[1])  # each fit is its own


def test_paired_comparisons_need_the_same_rows():
    from telly.probing.properties import Scored, paired
    from telly.probing.run import _on_rows

    a = Scored(np.ones(4), np.arange(4))
    with pytest.raises(ValueError, match="same held-out rows"):
        paired(a, Scored(np.ones(4), np.arange(1, 5)), TINY_PROFILE, 0)
    baseline = Scored(np.array([0.0, 1.0, 0.0, 1.0, 1.0]), np.array([10, 11, 12, 13, 14]))
    probe = Scored(np.ones(3), np.array([11, 13, 14]), np.array([0, 0, 1]))
    on_rows = _on_rows(baseline, probe)
    assert on_rows.per_example.tolist() == [1.0, 1.0, 1.0] and on_rows.clusters.tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="scored no row 99"):
        _on_rows(baseline, Scored(np.ones(1), np.array([99])))


def test_paper_syntactic_figure_is_footnoted_as_not_comparable():
    from telly.report.paper import PAPER_PROBE_NOTES, paper_probe_rows

    assert "not an MRR" in PAPER_PROBE_NOTES["syntactic"]
    notes = {row["probe"]: row["note"] for row in paper_probe_rows()}
    assert "not comparable" in notes["syntactic"] and notes["lexical"] == ""
    rows = report.paper_comparison([_record()])
    assert all(("not an MRR" in row["paper note"]) == (row["probe"] == "syntactic") for row in rows)


def test_a_model_probed_twice_gets_a_column_per_record():
    pilot, resized = _record(), _record(probe_ci=(0.75, 0.85))
    pilot["data"]["functions"], resized["data"]["functions"] = 600, 1800
    row = report.paper_comparison([pilot, resized, {**_record(), "model": "other"}])[0]
    assert row["m (600 functions)"] == "0.800 [0.700, 0.900]" and row["m (1800 functions)"] == "0.800 [0.750, 0.850]"
    assert "other" in row and "m (1800 functions) vs random" in row and "m" not in row


# ---------------------------------------------------------------- generated prose (item 15)


def _difference(low, high):
    return {"difference": (low + high) / 2, "low": low, "high": high, "p_value": 0.5}


def _record(*, vs_random=(0.05, 0.15), vs_baseline=(0.02, 0.10), moved_p=0.001, depth_ci=(0.05, 0.2),
            centre=0.6, peak_distinct=True, sbt_cut=0.02, baseline_score=0.70, probe_ci=(0.70, 0.90), refits=99,
            curve_ci=None):
    """A probing record with the numbers a test chooses, every probe alike (6 layers); `curve_ci`: the
    layer-wise intervals (default: every layer [0.4, 0.6], none told apart from the best)."""
    layers = 6
    curve_ci = [list(ci) for ci in curve_ci] if curve_ci else [[0.4, 0.6]] * (layers + 1)
    state = {"layerwise": [sum(ci) / 2 for ci in curve_ci], "layerwise_ci": curve_ci,
             "peak": {"layer": 1, "score": 0.8, "distinct": peak_distinct, "neighbours": []},
             "weighted": {"score": sum(probe_ci) / 2, "ci": list(probe_ci),
                          "weights": [1 / (layers + 1)] * (layers + 1)},
             "location": {"centre": centre * layers, "centre_ci": [depth_ci[0] * layers, depth_ci[1] * layers],
                          "relative_depth": centre, "relative_depth_ci": list(depth_ci),
                          "distance_from_uniform": 0.3, "distance_ci": [0.2, 0.4],
                          "shuffled_distances": [0.1] * refits, "p_value": moved_p, "refits": refits},
             "vs_baselines": {"length only": _difference(*vs_baseline)}}
    probes = {}
    for prop in PROPERTIES:
        states = {"random": dict(state), "pretrained": {**state, "vs_random": _difference(*vs_random)}}
        if prop.has_control:
            for s in states.values():
                s["control"] = {"layerwise": [0.3] * (layers + 1), "weighted": 0.3}
                s["selectivity"] = {"layerwise": [0.2] * (layers + 1), "weighted": 0.5,
                                    "weighted_ci": [0.4, 0.6]}
        probes[prop.name] = {"metric": prop.metric, "control": prop.has_control, "states": states,
                             "baselines": [{"name": "length only", "score": baseline_score,
                                            "ci": [baseline_score - 0.05, baseline_score + 0.05]}]}
    return {"model": "m", "num_layers": layers, "profile": "smoke", "probes": probes,
            "data": {"sbt_cut_share": sbt_cut, "sbt_max_tokens": 320}}


def test_a_baseline_touching_the_probes_lower_bound_is_no_verdict_against_it():
    """The baseline reaches the probe's lower CI bound, yet the paired difference lies above 0:
    the probe beats it and is informative (the old prose said it showed nothing more)."""
    text = report.describe_probing(_record(baseline_score=0.70, probe_ci=(0.70, 0.90)))
    assert "shows nothing that baseline does not" not in text
    assert "beats length only (+0.060 [+0.020, +0.100])" in text
    assert "is informative on this state" in text
    assert analysis.findings(_record())["structural"]["states"]["pretrained"]["informative"]


@pytest.mark.parametrize("interval, phrase", [
    ((0.02, 0.10), "beats length only"),
    ((-0.02, 0.10), "does not beat length only: the paired difference +0.040 [-0.020, +0.100] includes 0"),
    ((-0.10, -0.02), "does worse than length only"),
])
def test_baseline_verdicts_follow_the_paired_interval(interval, phrase):
    record = _record(vs_baseline=interval)
    text = report.describe_probing(record)
    assert phrase in text
    informative = analysis.findings(record)["semantic"]["states"]["pretrained"]["informative"]
    assert informative == (interval[0] > 0)
    assert ("not shown to be informative" in text) == (interval[0] <= 0)
    rows = report.verdict_table(record)
    assert {row["informative"] for row in rows} == {"yes" if interval[0] > 0 else "no"}
    assert rows[0]["vs baselines"].endswith("✓" if interval[0] > 0 else "✗")


def test_random_backbone_verdict_flips_with_its_interval():
    beats = report.describe_probing(_record(vs_random=(0.01, 0.2)))
    ties = report.describe_probing(_record(vs_random=(-0.01, 0.2)))
    assert "it beats the random-init backbone" in beats and "does not beat the random-init" not in beats
    assert "it does not beat the random-init backbone" in ties
    assert "does not beat the random-init backbone or" not in ties  # the baseline is beaten
    assert "it does not beat the random-init backbone." in ties


PEAKED = [(0.3, 0.4), (0.85, 0.95), (0.3, 0.4), (0.3, 0.4), (0.3, 0.4), (0.3, 0.4), (0.3, 0.4)]


def test_location_and_peak_sentences_flip_with_the_tests():
    moved = report.describe_probing(_record(peak_distinct=True))
    few_refits = report.describe_probing(_record(moved_p=0.05, refits=19, peak_distinct=False))
    underfit = report.describe_probing(_record(probe_ci=(0.70, 0.80), curve_ci=PEAKED))
    assert "Its layer weights locate it" in moved and "do not locate it" not in moved
    assert "Holm-adjusted 0.20 over 4 probes, 19 refits; a claim needs 99 or more" in few_refits
    assert "no region is claimed" in few_refits  # every layer is as good as the best one
    assert "scores below the best single layer's lower bound (0.850): it is underfit" in underfit
    assert "the layers the data cannot tell from it span relative depth 0.17-0.17, the lower layers" in underfit
    assert "above both neighbouring layers" in moved and "no layer-wise peak is claimed" in few_refits
    assert "no layer-wise peak is claimed" not in moved


@pytest.mark.parametrize("options, lexical, semantic", [
    ({"depth_ci": (0.05, 0.2)}, "agrees with the paper: by its weights", "differs from the paper"),
    ({"depth_ci": (0.7, 0.9)}, "differs from the paper", "differs from the paper"),
    ({"depth_ci": (0.2, 0.5)}, "cannot tell: by its weights it spans relative depth 0.20-0.50, across the lower and "
                               "middle layers", "cannot tell"),
    ({"moved_p": 0.5}, "cannot tell: by the layer-wise probe", "cannot tell"),
    ({"moved_p": 0.5, "curve_ci": PEAKED}, "agrees with the paper: by the layer-wise probe", "differs from the paper"),
])
def test_paper_contrast_flips_with_the_location(options, lexical, semantic):
    lines = report.paper_contrast(_record(**options)).splitlines()
    by_probe = {line.split("**")[1]: line for line in lines}
    assert lexical in by_probe["lexical"] and semantic in by_probe["semantic"]
    assert "consistent" not in by_probe["semantic"]  # a test that did not reject is never agreement
    assert "not informative" not in by_probe["lexical"]
    uninformative = report.paper_contrast(_record(vs_random=(-0.1, 0.1), **options))
    assert "not informative on this backbone" in uninformative


def test_sbt_note_warns_only_above_five_percent():
    assert "more than the 5%" not in report.sbt_note(_record(sbt_cut=0.05))
    assert "2.0% of their SBT sequences are longer than 320 tokens" in report.sbt_note(_record(sbt_cut=0.02))
    assert "raise the profile's sbt_max_tokens" in report.sbt_note(_record(sbt_cut=0.051))
    assert "raise the profile's" in report.describe_probing(_record(sbt_cut=0.2))


def test_selectivity_is_reported_for_the_lexical_probe_only():
    found = analysis.findings(_record())
    assert "selectivity" in found["lexical"] and "selectivity" not in found["structural"]
    rows = report.layer_rows(_record())
    assert {row["probe"] for row in rows if row["control"] is not None} == {"lexical"}
