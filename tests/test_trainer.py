import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from telly import backbones, cli, trainer
from telly.profiles import get_profile
from telly.store import WEIGHTS, RunStore, Variant
from telly.trainer import finetune

# Tiny sizes: 2 steps per epoch, so a tiny-random run takes seconds.
UNIT = get_profile("smoke").changed(name="unit", train_examples=16, valid_examples=8, test_examples=8,
               batch_size=8, epochs=2, patience=1, bootstrap_samples=50, learning_rate=1e-3)


def run(out, task, freeze, *, model="tiny-random", profile=None, method="telly", cache=True, lora_r=None,
        **options):
    """finetune() of one variant under the UNIT profile (or `profile`)."""
    method_options = {"r": lora_r} if lora_r else {}
    variant = Variant.of(task, model, freeze, method=method, cache=cache, profile=profile or UNIT, **method_options)
    return finetune(variant, out, **options)


def _weights(out, record):
    return load_file(str(Path(out) / record["run"] / WEIGHTS))


def test_record_carries_every_design_field_and_the_best_weights_load_back(tmp_path):
    record = run(tmp_path, "code-search", 2, progress=False)
    path = RunStore(tmp_path).record_path(Variant.of("code-search", "tiny-random", 2, profile=UNIT))
    assert path.exists() and json.loads(path.read_text())["run"] == record["run"]
    for key in ("model", "task", "freeze", "seed", "profile", "parameters", "epochs", "epochs_to_best",
                "test", "test_ci", "peak_tensor_memory_mb", "provenance", "time_to_best_seconds", "zero_shot",
                "profile_settings", "cache_megabytes"):
        assert key in record, key
    assert record["provenance"]["corpus_fingerprint"] == record["data"]["fingerprint"]
    assert set(record["provenance"]["versions"]) >= {"torch", "transformers", "accelerate"}
    assert len(record["epochs"]) == record["epochs_run"] >= 1
    for epoch in record["epochs"]:
        assert epoch["train_seconds"] > 0 and epoch["eval_seconds"] > 0 and epoch["valid_loss"] > 0
    assert "mrr" in record["valid"] and record["evaluation_prefix_memo"]["rows"] > 0
    ci = record["test_ci"]["mrr"]
    assert ci["low"] <= record["test"]["mrr"] <= ci["high"]
    assert len(record["test_per_example"]["reciprocal_rank"]) == UNIT.training.test_examples
    assert record["cache"]["storage"] == "memory" and record["uses_cache"]
    assert record["zero_shot"]["test"]["mrr"] > 0
    # trainable = blocks 2..3 of the 4-block tiny model (a bi-encoder has no head parameters)
    fresh = backbones.load("tiny-random")
    expected = sum(p.numel() for p in fresh.layers[2:].parameters())
    assert record["parameters"]["backbone_trainable"] == record["parameters"]["trainable"] == expected
    # the saved backbone loads under the HF base model's keys: frozen blocks unchanged, top ones trained
    trained = backbones.load("tiny-random", checkpoint=tmp_path / record["run"])
    assert set(_weights(tmp_path, record)) == set(fresh.model.state_dict())
    torch.testing.assert_close(trained.layers[1].state_dict(), fresh.layers[1].state_dict())
    assert not torch.allclose(trained.layers[3].output.dense.weight, fresh.layers[3].output.dense.weight)


def test_cached_and_uncached_training_agree_without_dropout(tmp_path):
    cached = run(tmp_path, "clone-detection", 2, dropout=0.0, progress=False)
    uncached = run(tmp_path, "clone-detection", 2, cache=False, dropout=0.0, progress=False)
    assert cached["run"] != uncached["run"] and uncached["cache"] is None
    assert cached["epochs"][0]["train_loss"] == pytest.approx(uncached["epochs"][0]["train_loss"], abs=1e-5)
    a, b = _weights(tmp_path, cached), _weights(tmp_path, uncached)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_bad_input_gives_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        run(tmp_path, "nope", 0)
    with pytest.raises(ValueError, match=r"freeze depth must be an integer in -1\.\.3 .*got 4"):
        run(tmp_path, "code-search", 4)
    with pytest.raises(ValueError, match="unknown method 'adapter'"):
        run(tmp_path, "code-search", -1, method="adapter")
    with pytest.raises(ValueError, match="freeze must be -1"):
        run(tmp_path, "code-search", 2, method="lora")
    assert cli.main(["finetune", "--task", "code-search", "--freeze", "9", "--model", "tiny-random",
                     "--profile", "smoke", "--out", str(tmp_path)]) == 2
    assert "freeze depth must be an integer in -1..3" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))


def test_bitfit_and_lora_train_what_they_should_and_save_plain_backbones(tmp_path):
    bitfit = run(tmp_path, "clone-detection", -1, method="bitfit", progress=False)
    fresh = backbones.load("tiny-random")
    biases = sum(p.numel() for n, p in fresh.model.named_parameters() if n.endswith("bias"))
    head = 4 * 32 * 32 + 32 + 32 * 2 + 2  # dense(4H->H) over [u; v; |u-v|; u*v] + out(H->2), H = 32
    assert bitfit["parameters"]["backbone_trainable"] == biases
    assert bitfit["parameters"]["trainable"] == biases + head
    assert bitfit["head_learning_rate"] == 20 * UNIT.training.learning_rate  # the random classifier learns faster
    lora = run(tmp_path, "clone-detection", -1, method="lora", lora_r=4, progress=False)
    assert lora["method_config"]["lora_r"] == 4 and lora["method_config"]["lora_targets"] == ["query", "value"]
    adapters = 4 * 2 * (4 * (32 + 32))  # 4 blocks x (query, value) x r x (in + out)
    assert lora["parameters"]["backbone_trainable"] == adapters
    assert set(_weights(tmp_path, lora)) == set(fresh.model.state_dict())  # adapters merged away
    backbones.load("tiny-random", checkpoint=tmp_path / lora["run"])


def test_epoch_checkpoints_on_request(tmp_path):
    seen = []
    record = run(tmp_path, "code-search", 3, profile=UNIT.changed(patience=5), save_epoch_checkpoints=True,
                 progress=False, on_epoch=lambda epoch, epochs: seen.append((epoch["epoch"], epochs)))
    assert seen == [(epoch, UNIT.training.epochs) for epoch in range(1, UNIT.training.epochs + 1)]
    for epoch in range(1, record["epochs_run"] + 1):
        assert (tmp_path / record["run"] / f"epoch-{epoch}" / WEIGHTS).exists()
    assert record["epochs_run"] == UNIT.training.epochs


SCRIPT = textwrap.dedent("""
    import sys
    from telly.profiles import get_profile
    from telly.store import Variant
    from telly.trainer import finetune
    profile = get_profile("smoke").changed(name="unit", train_examples=16, valid_examples=8,
                      test_examples=8, batch_size=8, epochs=1, bootstrap_samples=20, learning_rate=1e-3)
    finetune(Variant.of(sys.argv[1], "tiny-random", int(sys.argv[2]), profile=profile), sys.argv[3],
             dropout=0.0, progress=False)
""")


@pytest.mark.parametrize("task,freeze", [("code-search", -1), ("clone-detection", 2)])
def test_two_cpu_processes_match_one_process_on_the_same_global_batch(tmp_path, task, freeze):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, str(script), task, str(freeze), str(one)], check=True, env=env, timeout=600)
    launched = subprocess.run(
        # torchrun starts the two gloo processes (`accelerate launch --cpu` would start only one)
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), task, str(freeze), str(two)],
        env=env, timeout=600, capture_output=True, text=True)
    assert launched.returncode == 0, launched.stderr[-3000:]
    name = Variant.of(task, "tiny-random", freeze, profile=UNIT).run_id
    single, double = (json.loads((d / f"{name}.json").read_text()) for d in (one, two))
    assert single["num_processes"] == 1 and double["num_processes"] == 2
    a, b = load_file(str(one / name / WEIGHTS)), load_file(str(two / name / WEIGHTS))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert single["test"] == pytest.approx(double["test"], abs=1e-6)


@pytest.mark.integration
def test_smoke_finetune_of_minilm_on_code_search(tmp_path):
    record = run(tmp_path, "code-search", 4, model="minilm-l6", profile=get_profile("smoke"), progress=False)
    assert record["parameters"]["num_layers"] == 6 and record["cache"]["depth"] == 4
    assert record["zero_shot"]["test"]["mrr"] > 0.3  # a pre-trained sentence encoder already matches docstrings
    assert record["test"]["mrr"] > 0.3


def test_the_warm_up_step_measures_memory_without_touching_the_model_or_the_random_state():
    from telly.tasks import get_task
    from telly.trainer import optimizer_factory, step_peak_memory

    task = get_task("clone-detection")
    model = task.build_model(backbones.load("tiny-random"))
    data = task.load_data(UNIT)
    batch = task.collate(data.train[:8], backbones.load("tiny-random").tokenizer, UNIT)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.random.get_rng_state()
    make = optimizer_factory(task, UNIT, 1e-3)
    peak = step_peak_memory(model, make, batch, torch.device("cpu"))
    with_cache = step_peak_memory(model, make, batch, torch.device("cpu"), cache_bytes=10 * 2**20)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    # weights + gradients + two Adam moments at least; a held cache adds its bytes
    assert peak >= 4 * weights and with_cache - peak == pytest.approx(10 * 2**20, rel=0.05)
    assert torch.equal(torch.random.get_rng_state(), state)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert step_peak_memory(model, make, batch, torch.device("cpu"), measure=False) is None


def test_the_optimiser_uses_the_profiles_weight_decay_and_clips_the_gradient_norm():
    from telly.tasks import get_task
    from telly.trainer import optimizer_factory

    task = get_task("clone-detection")
    model = task.build_model(backbones.load("tiny-random"))
    profile = UNIT.changed(weight_decay=0.0, max_grad_norm=1.0)
    optimizer = optimizer_factory(task, profile, 1e-3)(model)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.0, 0.0]  # torch's AdamW default is 0.01
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    for parameter in trained:
        parameter.grad = torch.full_like(parameter, 10.0)
    optimizer.step()
    assert torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trained])).item() == pytest.approx(1.0, rel=1e-4)
    assert optimizer_factory(task, UNIT.changed(weight_decay=0.1), 1e-3)(model).param_groups[0]["weight_decay"] == 0.1
    with pytest.raises(ValueError, match="max_grad_norm must be positive, got 0"):
        optimizer_factory(task, UNIT.changed(max_grad_norm=0), 1e-3)


def test_the_record_names_the_optimiser_and_epoch_one_is_timed_after_the_warm_up_step(tmp_path, monkeypatch):

    events = []
    real_warm_up, real_step, real_clock = trainer.step_peak_memory, trainer.train_step, trainer.time.perf_counter

    def warm_up(*args, **kwargs):
        events.append("warm-up starts")
        result = real_warm_up(*args, **kwargs)
        events.append("warm-up ends")
        return result

    def step(*args, **kwargs):
        events.append("step")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "step_peak_memory", warm_up)
    monkeypatch.setattr(trainer, "train_step", step)
    clock = []
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: clock.append(len(events)) or real_clock())
    record = run(tmp_path, "code-search", 2, profile=UNIT.changed(epochs=1), progress=False)
    assert record["optimizer"] | {"replication_package": None} == {
        "name": "AdamW", "learning_rate": UNIT.training.learning_rate, "head_learning_rate": UNIT.training.learning_rate,
        "eps": 1e-8, "weight_decay": UNIT.training.weight_decay, "max_grad_norm": UNIT.training.max_grad_norm,
        "schedule": "linear warm-up over 10% of the steps, then linear decay to 0", "replication_package": None}
    warmed = events.index("warm-up ends")
    # the warm-up step runs inside step_peak_memory; the first timed step comes after it, and the
    # epoch's clock starts after the warm-up has ended
    assert events[:warmed + 1] == ["warm-up starts", "step", "warm-up ends"] and events[warmed + 1] == "step"
    assert warmed + 1 in clock


def test_early_stopping_follows_the_validation_loss_and_says_which_epoch_won(tmp_path, monkeypatch):

    losses = iter([0.50, 0.40, 0.45, 0.30])

    def scripted(*args):
        return next(losses)

    monkeypatch.setattr(trainer, "_valid_loss", scripted)
    profile = UNIT.changed(epochs=4, patience=1, test_examples=12)
    record = run(tmp_path / "a", "code-search", 2, profile=profile, progress=False)
    # epoch 2 is lower than 1; epoch 3 is not, and patience 1 stops there: epoch 4 never runs
    assert (record["epochs_run"], record["epochs_to_best"]) == (3, 2)
    assert [e["valid_loss"] for e in record["epochs"]] == [0.50, 0.40, 0.45]
    report = record["early_stopping"]
    assert report["signal"] == "validation loss" and report["best_epoch"] == 2
    assert report["lead_over_other_epochs"] == pytest.approx(0.05)


def test_the_validation_loss_is_the_models_own_loss_in_eval_mode(tmp_path):
    from telly.tasks import get_task
    from telly.trainer import _valid_loss

    task = get_task("clone-detection")
    backbone = backbones.load("tiny-random")
    model = task.build_model(backbone).train()
    data = task.load_data(UNIT)
    loss = _valid_loss(task, model, data.valid, backbone.tokenizer, UNIT, torch.device("cpu"))
    assert model.training  # left as found
    with torch.no_grad():
        model.eval()
        expected = float(model(task.collate(data.valid, backbone.tokenizer, UNIT)))
    assert loss == pytest.approx(expected, rel=1e-5)  # one batch: the plain mean


def test_the_threshold_is_chosen_once_on_the_best_epochs_weights(tmp_path, monkeypatch):
    import numpy as np

    from telly.tasks.clone_detection import CloneDetectionTask

    real, calls = CloneDetectionTask.calibrate, []

    def recording(self, model, valid):
        """The real calibration, noting its threshold and the head's weights it was chosen under."""
        result = real(self, model, valid)
        calls.append((result.extras["calibration"]["threshold"], model.head.state_dict()))
        return result

    rising = iter([0.3, 0.4, 0.5])  # validation loss rises after epoch 1: epoch 1 stays best
    weights = []
    monkeypatch.setattr(CloneDetectionTask, "calibrate", recording)
    monkeypatch.setattr(trainer, "_valid_loss", lambda task, model, *args: (
        weights.append({k: v.clone() for k, v in model.head.state_dict().items()}), next(rising))[1])
    record = run(tmp_path, "clone-detection", -1, profile=UNIT.changed(epochs=3, patience=2), progress=False)
    assert (record["epochs_run"], record["epochs_to_best"]) == (3, 1) and len(calls) == 1
    assert all("calibration" not in epoch and "valid" not in epoch for epoch in record["epochs"])
    threshold, head = calls[0]
    # Chosen under epoch 1's weights, though two later epochs trained on.
    for key, value in weights[0].items():
        if key != "threshold":
            torch.testing.assert_close(head[key], value)
    assert not torch.equal(weights[0]["out.weight"], weights[2]["out.weight"])
    assert record["calibration"]["threshold"] == threshold
    columns = record["test_per_example"]
    assert columns["prediction"] == (np.asarray(columns["clone_probability"]) >= np.float32(threshold)).astype(int).tolist()


def test_a_stored_record_counts_only_under_its_profile_and_its_tasks_current_config(tmp_path, monkeypatch):
    from telly.tasks import get_task

    record = run(tmp_path, "clone-detection", -1, progress=False)
    variant = Variant.of("clone-detection", "tiny-random", -1, profile=UNIT)
    assert trainer.finished_run(variant, tmp_path)["run"] == record["run"]
    # The profile's settings changed under the same name: the record is stale.
    changed = Variant.of("clone-detection", "tiny-random", -1, profile=UNIT.changed(epochs=5))
    assert changed.run_id == variant.run_id and trainer.finished_run(changed, tmp_path) is None
    # The task's head changed since (another default): the record is stale, so a sweep runs it again.
    monkeypatch.setattr(trainer, "task_of", lambda variant: get_task(variant.task, pair_features="concat"))
    assert trainer.finished_run(variant, tmp_path) is None


def test_a_record_splits_its_wall_time_into_parts_that_add_up(tmp_path):
    record = run(tmp_path, "code-search", 2, progress=False)
    split = record["time_split"]
    assert set(split) == {"load", "prepare", "pilot", "cache", "train", "eval", "test", "other"}
    assert all(seconds >= 0 for seconds in split.values())
    assert sum(split.values()) == pytest.approx(record["wall_seconds"], rel=1e-6)
    assert split["cache"] == record["cache_seconds"] > 0  # Telly-2 cached: the prefix was built
    assert split["train"] == pytest.approx(sum(e["train_seconds"] for e in record["epochs"]))
    # what the run got of the CPU, to tell a shared machine's runs: at most all cores for the whole run
    assert 0 < record["process_cpu_seconds"] <= record["wall_seconds"] * os.cpu_count() * 1.05


def test_the_preparation_runs_once_per_data_and_reads_back_exactly(tmp_path, monkeypatch):
    from telly.tasks.code_search import CodeSearchTask

    first = run(tmp_path / "shared", "code-search", 2, progress=False)
    prepared = list((tmp_path / "shared" / "prepared").glob("*.json"))
    assert len(prepared) == 1 and "head_buffers" in json.loads(prepared[0].read_text())
    alone = run(tmp_path / "alone", "code-search", 3, progress=False)  # prepares for itself

    def must_not_prepare(*args, **kwargs):
        raise AssertionError("the stored preparation of the same data should have been read back")

    monkeypatch.setattr(CodeSearchTask, "prepare", must_not_prepare)
    reused = run(tmp_path / "shared", "code-search", 3, progress=False)
    assert reused["valid_before_training"] == first["valid_before_training"] == alone["valid_before_training"]
    assert reused["test_per_example"] == alone["test_per_example"] and reused["test"] == alone["test"]
