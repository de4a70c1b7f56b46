import copy

import numpy as np
import pytest
import torch

from telly import backbones
from telly.features import layer_features

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "def loop(items):\n    total = 0\n    for x in items:\n        total += x * 2\n    return total\n",
    "x = 1",
]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TELLY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny():
    return backbones.load("tiny-random")


def _truncated_pooled(backbone, text, k):
    """Mean-pooled output of a copy of the model cut after block k (k = 0: embeddings only)."""
    model = copy.deepcopy(backbone.model)
    model.encoder.layer = model.encoder.layer[:k]
    encoded = backbone.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        if k == 0:
            states = model.embeddings(input_ids=encoded["input_ids"],
                                      token_type_ids=encoded["token_type_ids"])
        else:
            states = model(**encoded).last_hidden_state
    return states[0].mean(0).numpy()


def test_one_pass_equals_truncated_forwards(tiny):
    features = layer_features(tiny, TEXTS, max_length=64, progress=False)
    assert features.pooled.shape == (tiny.num_layers + 1, len(TEXTS), tiny.hidden_size)
    assert features.pooled.dtype == np.float32
    for k in (0, 2, tiny.num_layers):
        np.testing.assert_allclose(features.pooled[k, 1], _truncated_pooled(tiny, TEXTS[1], k),
                                   atol=1e-4)


def test_padding_does_not_change_pooled_states(tiny):
    batched = layer_features(tiny, TEXTS, max_length=64, batch_size=3, progress=False, cache=False)
    alone = layer_features(tiny, TEXTS[2:], max_length=64, batch_size=1, progress=False, cache=False)
    np.testing.assert_allclose(batched.pooled[:, 2], alone.pooled[:, 0], atol=1e-5)


def test_cache_hit_returns_identical_arrays(tiny, tmp_path):
    first = layer_features(tiny, TEXTS, max_length=32, keep_tokens=True, progress=False)
    assert list((tmp_path / "cache" / "features").iterdir())
    second = layer_features(tiny, TEXTS, max_length=32, keep_tokens=True, progress=False)
    assert second.key == first.key
    np.testing.assert_array_equal(first.pooled, second.pooled)
    np.testing.assert_array_equal(first.tokens, np.asarray(second.tokens))
    np.testing.assert_array_equal(first.offsets, second.offsets)
    other_length = layer_features(tiny, TEXTS, max_length=8, progress=False)
    assert other_length.key != first.key
    other_weights = layer_features(backbones.load("tiny-random", seed=1), TEXTS, max_length=32,
                                   progress=False)
    assert other_weights.key != first.key
    assert not np.allclose(other_weights.pooled, first.pooled)


def test_token_states_and_offsets_align_with_text(tiny):
    features = layer_features(tiny, TEXTS, max_length=64, keep_tokens=True, progress=False)
    states, offsets = features.token_states(1), features.token_offsets(1)
    assert states.dtype == np.float16
    assert states.shape[1] == offsets.shape[0] == features.lengths[1]
    pieces = [TEXTS[1][s:e] for s, e in offsets if e > s]
    assert pieces[:3] == ["def", "loop", "("]
    # Mean of the kept token states is the pooled vector (up to float16 rounding).
    np.testing.assert_allclose(states.astype(np.float32).mean(1), features.pooled[:, 1], atol=2e-3)


def test_truncation_to_max_length(tiny):
    features = layer_features(tiny, [TEXTS[1] * 20], max_length=16, keep_tokens=True, progress=False)
    assert features.lengths[0] == 16
    assert features.token_states(0).shape[1] == 16


def test_decoder_backbone_right_padding_without_token_types(tiny):
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
    decoder = backbones.Backbone(name="tiny-llama", model=LlamaModel(config).eval(),
                                 tokenizer=tiny.tokenizer, kind="decoder", source="random-init")
    decoder.tokenizer.padding_side = "left"  # decoders often ship with left padding
    try:
        batched = layer_features(decoder, TEXTS, max_length=64, progress=False, cache=False)
        alone = layer_features(decoder, TEXTS[2:], max_length=64, progress=False, cache=False)
    finally:
        decoder.tokenizer.padding_side = "right"
    assert batched.pooled.shape == (4, 3, 32)
    np.testing.assert_allclose(batched.pooled[:, 2], alone.pooled[:, 0], atol=1e-5)


def test_bad_inputs_raise_clear_errors(tiny):
    with pytest.raises(ValueError, match="at least one text"):
        layer_features(tiny, [], max_length=16)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        layer_features(tiny, ["ok", None], max_length=16)
    features = layer_features(tiny, TEXTS, max_length=16, progress=False)
    with pytest.raises(ValueError, match="keep_tokens"):
        features.token_states(0)


def test_masked_mean_averages_real_tokens_only():
    from telly.features import masked_mean

    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    expected = torch.stack([hidden[0, :2].mean(0), hidden[1, 0]])
    torch.testing.assert_close(masked_mean(hidden, mask), expected)
    assert torch.equal(masked_mean(hidden, torch.zeros(2, 3, dtype=torch.long)), torch.zeros(2, 4))


def test_decoder_states_are_all_taken_before_the_final_norm(tiny):
    """A pre-norm decoder's last hidden state from transformers carries the final norm; ours is
    the last block's output like every other state, and the final norm turns it into theirs."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
    model = LlamaModel(config).eval()
    decoder = backbones.Backbone(name="tiny-llama", model=model, tokenizer=tiny.tokenizer,
                                 kind="decoder", source="random-init")
    features = layer_features(decoder, TEXTS[1:2], max_length=64, keep_tokens=True,
                              progress=False, cache=False)
    states = torch.from_numpy(features.token_states(0).astype(np.float32))  # (L+1, t, d)
    encoded = tiny.tokenizer(TEXTS[1:2], return_tensors="pt")
    with torch.no_grad():
        output = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                       output_hidden_states=True)
        normed = model.norm(states[-1])
    torch.testing.assert_close(normed, output.last_hidden_state[0], atol=2e-2, rtol=1e-2)
    # Every state has the scale of the residual stream; a normed one would sit at RMS 1.
    rms = states.pow(2).mean(-1).sqrt().mean(-1)
    assert rms[-1] < 0.5 and rms[-1] < 3 * rms[-2]
    assert output.hidden_states[-1].pow(2).mean(-1).sqrt().mean() > 0.9  # what transformers returns
