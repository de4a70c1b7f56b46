import pytest
import torch

from telly import prefix_cache
from telly.prefix_cache import PrefixStates, build_prefix_cache, run_prefix, run_top
from telly.profiles import get_profile

TEXTS = ["def add(a, b): return a + b", "return the sum of two numbers, or raise if they are not numbers at all"]


def _decoder(kind: str, tiny):
    from transformers import BertModel, GPT2Config, GPT2Model, LlamaConfig, LlamaModel

    torch.manual_seed(0)
    if kind == "bert-decoder":  # a BERT run as a decoder (config.is_decoder): causal mask, no positions per block
        config = tiny.model.config.__class__.from_dict({**tiny.model.config.to_dict(), "is_decoder": True})
        return BertModel(config).eval()
    if kind == "gpt2":
        return GPT2Model(GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=30522,
                                    bos_token_id=0, eos_token_id=0)).eval()
    return LlamaModel(LlamaConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=64, vocab_size=30522)).eval()


@pytest.mark.parametrize("kind", ["bert", "bert-decoder", "gpt2", "llama"])
def test_top_blocks_from_the_prefix_reproduce_the_whole_model(tiny, kind):
    model = tiny.model if kind == "bert" else _decoder(kind, tiny)
    inputs = tiny.tokenizer(TEXTS, padding=True, return_tensors="pt")
    inputs = {k: v for k, v in inputs.items() if kind.startswith("bert") or k != "token_type_ids"}
    real = inputs["attention_mask"].bool()
    assert not real.all()  # the batch is padded: the mask handling is exercised
    with torch.no_grad():
        expected = model(**inputs).last_hidden_state
        for depth in range(len(prefix_cache.find_layers(model))):
            hidden = run_prefix(model, inputs, depth)
            got = run_top(model, hidden, depth, inputs["attention_mask"])
            torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-5)


def test_prefix_depth_out_of_range(tiny):
    inputs = dict(tiny.tokenizer(TEXTS[:1], return_tensors="pt"))
    with pytest.raises(ValueError, match=r"0\.\.3"):
        run_prefix(tiny.model, inputs, 4)


def _search_setup(tiny):
    from telly.tasks import get_task
    from telly.tasks.code_search import SearchExample

    task = get_task("code-search")
    profile = get_profile("smoke")
    examples = [SearchExample(query=f"query number {i} " * (1 + i % 3), code=f"def f{i}(x):\n    return x * {i}", id=str(i))
                for i in range(10)]
    model = task.build_model(tiny).eval()
    return task, profile, examples, model, (lambda rows: task.collate(rows, tiny.tokenizer, profile))


@pytest.mark.parametrize("depth", [0, 2])
def test_cached_batches_give_the_uncached_loss(tiny, depth):
    task, profile, examples, model, collate = _search_setup(tiny)
    cache = build_prefix_cache(model.backbone, examples, collate, depth, batch_size=4, memory_mb=64,
                               show_progress=False)
    assert cache.storage == "memory" and len(cache) == len(examples)
    # only real tokens are stored: rows = the number of unmasked tokens, fp32 like the model
    batch = collate(examples)
    real_tokens = sum(int(v["attention_mask"].sum()) for v in batch["inputs"].values())
    assert cache.nbytes() == real_tokens * tiny.hidden_size * 4
    indices = [7, 1, 4, 2]
    with torch.no_grad():
        uncached = model(collate([examples[i] for i in indices]))
        cached_batch = collate([examples[i] for i in indices]) | {"inputs": cache.states(indices, torch.float32)}
        assert isinstance(cached_batch["inputs"]["query"], PrefixStates)
        cached = model(cached_batch)
    torch.testing.assert_close(cached, uncached, rtol=1e-5, atol=1e-5)


def test_over_budget_cache_spills_to_float16_disk_shards_and_says_so(tiny, capsys):
    task, profile, examples, model, collate = _search_setup(tiny)
    cache = build_prefix_cache(model.backbone, examples, collate, 1, batch_size=4, memory_mb=0,
                               show_progress=False)
    assert cache.storage == "disk" and "exceeds the 0 MB memory budget" in cache.note
    assert "float16 shards on disk" in capsys.readouterr().err
    shard_dir = cache._tmp.name
    with torch.no_grad():
        uncached = model(collate(examples[:5]))
        cached = model(collate(examples[:5]) | {"inputs": cache.states(range(5), torch.float32)})
    torch.testing.assert_close(cached, uncached, rtol=1e-2, atol=1e-2)  # float16 storage
    cache.close()
    import os
    assert not os.path.exists(shard_dir)


def test_running_out_of_memory_falls_back_to_disk(tiny, capsys, monkeypatch):
    task, profile, examples, model, collate = _search_setup(tiny)
    real_fill = prefix_cache._fill

    def fill(*args):
        if args[7] == "memory":  # the storage argument
            raise MemoryError("simulated")
        return real_fill(*args)

    monkeypatch.setattr(prefix_cache, "_fill", fill)
    cache = build_prefix_cache(model.backbone, examples, collate, 1, batch_size=4, memory_mb=64,
                               show_progress=False)
    assert cache.storage == "disk" and "ran out of memory" in cache.note
    assert "ran out of memory" in capsys.readouterr().err
    cache.close()


@pytest.mark.parametrize("task_name, depth", [("code-search", 2), ("clone-detection", 3), ("code-summarization", 1)])
def test_evaluation_from_the_prefix_memo_is_the_uncached_models(tiny, task_name, depth):
    """A cached Telly-K's validation and test: blocks K..L-1 over memoised prefix states score every
    row as the whole model does, the second pass entirely from memory."""
    import numpy as np

    from telly.tasks import get_task
    from telly.trainer import _evaluate, _valid_loss

    task = get_task(task_name)
    profile = get_profile("smoke").changed(valid_examples=8, test_examples=8, batch_size=4, max_target_tokens=4)
    data = task.load_data(profile)
    torch.manual_seed(0)
    model = task.build_model(tiny)
    task.prepare(model, data, tiny.tokenizer, profile)
    expected = [_evaluate(task, model, split, tiny.tokenizer, profile) for split in (data.valid, data.test)]
    expected_loss = _valid_loss(task, model, data.valid, tiny.tokenizer, profile, "cpu")
    model.prefix_memo = prefix_cache.PrefixMemo(depth, memory_mb=64)
    for attempt in range(2):
        got = [_evaluate(task, model, split, tiny.tokenizer, profile) for split in (data.valid, data.test)]
        for want, have in zip(expected, got):
            assert have.metrics.keys() == want.metrics.keys()
            for name, value in want.metrics.items():
                if name != "decode_seconds":
                    assert have.metrics[name] == pytest.approx(value, abs=1e-6), name
            for column, values in want.per_example.items():
                if values.dtype == object:
                    assert list(have.per_example[column]) == list(values), column
                else:
                    np.testing.assert_allclose(have.per_example[column], values, rtol=1e-5, atol=1e-5)
        assert _valid_loss(task, model, data.valid, tiny.tokenizer, profile, "cpu") == pytest.approx(expected_loss, rel=1e-5)
        if attempt == 0:
            seen = model.prefix_memo.describe()
            assert seen["rows"] > 0 and seen["misses"] > 0
    # The second round computed no prefix: every row came from memory.
    assert model.prefix_memo.describe()["misses"] == seen["misses"]


def test_the_memo_keeps_rows_within_its_budget_and_computes_the_rest_each_time(tiny):
    task, profile, examples, model, collate = _search_setup(tiny)
    inputs = collate(examples)["inputs"]["code"]
    memo = prefix_cache.PrefixMemo(1, memory_mb=0.005)
    with torch.no_grad():
        first = memo.states(model.backbone, inputs)
        again = memo.states(model.backbone, inputs)
    assert 0 < memo.describe()["rows"] < len(examples) and memo.nbytes <= 0.005 * 2**20
    torch.testing.assert_close(again.hidden, first.hidden)
    assert memo.misses == 2 * len(examples) - memo.describe()["rows"]


def test_the_memo_is_not_used_while_training(tiny):
    task, profile, examples, model, collate = _search_setup(tiny)
    inputs = collate(examples[:2])["inputs"]["code"]
    model.prefix_memo = prefix_cache.PrefixMemo(1, memory_mb=64)
    assert isinstance(model.memoised(inputs), PrefixStates)
    model.train()  # dropout on: the frozen blocks' training outputs are not the memoised eval outputs
    assert model.memoised(inputs) is inputs
