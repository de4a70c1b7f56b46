"""Fine-tuning methods: validated settings, run-id tags and labels, and what each one trains."""
import pytest
from torch import nn

from telly.methods import METHODS, BitFit, Full, LoRA, Telly, make_method


def test_methods_validate_their_settings_and_name_themselves():
    assert list(METHODS) == ["full", "telly", "telly-auto", "lora", "bitfit"]
    assert make_method("telly", -1) == Full() and make_method("telly", 3) == Telly(3)
    assert make_method("telly", 3, cache=False).tag == "telly3-nocache"
    assert [m.label for m in (Full(), Telly(3), Telly(3, cache=False), LoRA(), BitFit())] == \
        ["Full fine-tuning", "Telly-3 cached", "Telly-3 uncached", "LoRA", "BitFit"]
    assert LoRA(r=16).tag == "lora-r16" and LoRA(targets=["q_proj"]).targets == ("q_proj",)
    with pytest.raises(ValueError, match="K >= 0"):
        Telly(-1)
    with pytest.raises(ValueError, match="an integer in -1 or more, got -2"):
        Telly(-2)
    with pytest.raises(ValueError, match=r"in -1\.\.5 for a 6-layer model, got 6"):
        Telly(6).check_depth(6)
    with pytest.raises(ValueError, match="rank r"):
        LoRA(r=0)
    with pytest.raises(ValueError, match="freeze must be -1"):
        make_method("bitfit", 2)
    with pytest.raises(ValueError, match="unknown method 'adapter'"):
        make_method("adapter")


def test_bitfit_refuses_a_backbone_without_bias_terms():
    from transformers import LlamaConfig, LlamaModel

    backbone = LlamaModel(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2))
    task_model = nn.Module()
    task_model.backbone, task_model.head = backbone, nn.Linear(16, 2)
    assert not any(name.endswith("bias") for name, _ in backbone.named_parameters())
    with pytest.raises(ValueError, match="BitFit trains bias terms, and LlamaModel has none"):
        BitFit().apply(task_model)
    assert all(p.requires_grad for p in backbone.parameters())  # nothing was frozen on the way


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_lora_can_adapt_every_attention_and_mlp_projection(kind):
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    from telly.methods import default_lora_targets

    backbone = (BertModel(BertConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                     num_attention_heads=2)) if kind == "bert" else
                LlamaModel(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=2)))
    narrow, wide = default_lora_targets(backbone), default_lora_targets(backbone, "attention+mlp")
    assert len(narrow) == 2 and set(narrow) < set(wide)
    task_model = nn.Module()
    task_model.backbone, task_model.head = backbone, nn.Linear(16, 2)
    LoRA(scope="attention+mlp").apply(task_model)
    adapted = {name.split(".lora_A")[0] for name, _ in task_model.backbone.named_parameters() if ".lora_A" in name}
    mlp = ("intermediate.dense", "output.dense") if kind == "bert" else ("gate_proj", "up_proj", "down_proj")
    assert all(any(name.endswith(m) for name in adapted) for m in mlp)
    assert not any("pooler" in name for name in adapted)
    assert LoRA(scope="attention+mlp").tag == "lora-mlp"
    with pytest.raises(ValueError, match="LoRA scope must be one of"):
        LoRA(scope="everything")
