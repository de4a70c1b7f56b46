import pytest
import torch
from safetensors.torch import save_file

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
def test_smollm2_loads_when_fetched():
    from telly.backbones import smollm2_gguf

    try:
        smollm2_gguf()
    except BackboneUnavailable as exc:
        pytest.skip(f"smollm2-135m not fetched: {exc}")
    backbone = load("smollm2-135m")
    assert backbone.kind == "decoder" and backbone.num_layers == 30 and backbone.hidden_size == 576
