"""A Llama-style decoder (SmolLM2's architecture, tiny and random) through all five tasks: the
prompted sequence layout, one-line decoding, zero-shot generation, every fine-tuning method, and
bf16 autocast in training only. A byte-level BPE tokenizer with SmolLM2's special tokens stands in
for SmolLM2's, so no test needs the real weights: seconds each."""

import pytest
import torch

from telly import backbones
from telly.decoding import generate, generate_ids, line_break_ids
from telly.profiles import get_profile
from telly.sequences import IGNORE, collate_pairs, source_ids, special_ids
from telly.store import Variant
from telly.tasks import get_task
from telly.tasks.generation import PROMPTS, GenerationModel
from telly.trainer import finetune

CODE = ["def add(a, b):\n    return a + b\n", "class Stack:\n    def push(self, item):\n        self.items.append(item)\n",
        "for i in range(10):\n    print(i)\n", "Summarize this function in one sentence.\nSummary:\nBody:\nNext line:\n",
        "Write the body of this function.\nWrite the next line of this code.\n", "return the sum of two numbers\n"]
LAYERS = 4
UNIT = get_profile("smoke").changed(name="unit", train_examples=16, valid_examples=8, test_examples=8,
                           generation_examples=(8, 4, 6), batch_size=4, epochs=1, max_code_tokens=48,
                           max_target_tokens=6, bootstrap_samples=20, learning_rate=1e-3)


def byte_level_tokenizer():
    """SmolLM2's kind of tokenizer: byte-level BPE, no CLS/SEP, BOS <|im_start|>, EOS <|im_end|> (also padding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(CODE, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A tiny random Llama (tied embeddings, grouped-query attention) saved as a model directory."""
    from transformers import LlamaConfig, LlamaModel

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=256, tie_word_embeddings=True,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=2))
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def llama(llama_dir):
    return backbones.load(llama_dir)


# ---------------------------------------------------------------- the prompted layout

def test_a_decoder_reads_instruction_source_separator_and_is_scored_on_target_tokens_only(llama):
    tokenizer, prompt = llama.tokenizer, PROMPTS["code-summarization"]
    assert llama.kind == "decoder"
    assert special_ids(tokenizer) == {"source_start": None, "source_end": None, "bos": None, "eos": 2}

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    source, target = "def add(a, b):\n    return a + b", "return the sum"
    batch = collate_pairs(tokenizer, [source], [target], max_source_tokens=64, max_target_tokens=16, prompt=prompt)
    row, labels = batch["inputs"]["sequence"]["input_ids"][0].tolist(), batch["labels"][0].tolist()
    reading = ids(f"{prompt.instruction}\n") + ids(source) + ids(f"\n{prompt.separator}\n")
    assert row == reading + ids(target)  # no BOS, no CLS/SEP: the prompt frames the source
    start = len(reading) - 1  # the separator's final newline predicts the first target token
    assert tokenizer.decode(row[start]) == "\n" and int(batch["source_length"][0]) == start
    assert labels[:start] == [IGNORE] * start
    assert labels[start:] == [*ids(target), tokenizer.eos_token_id]  # target tokens, then EOS
    assert prompt.text(source) == tokenizer.decode(reading)


def test_truncation_cuts_the_source_never_the_instruction_or_the_separator(llama):
    tokenizer, prompt = llama.tokenizer, PROMPTS["code-completion"]
    source = "\n".join(f"x{i} = {i}" for i in range(60))
    for truncate, kept in (("left", "x59 = 59"), ("right", "x0 = 0")):
        row = source_ids(tokenizer, [source], 40, truncate=truncate, prompt=prompt)[0]
        assert len(row) == 41  # 40 tokens, then the start token
        text = tokenizer.decode(row)
        assert text.startswith(f"{prompt.instruction}\n") and text.endswith(f"\n{prompt.separator}\n")
        assert kept in text
    with pytest.raises(ValueError, match="leaves no room"):
        source_ids(tokenizer, [source], 8, prompt=prompt)
    with pytest.raises(ValueError, match="needs the task's Prompt"):
        GenerationModel(llama)


def test_a_one_line_prompt_stops_at_the_first_line_break(llama):
    """Line completion answers one line: a row ends at a token holding a line break, the text is
    cut there; other tasks decode on to EOS or the length limit."""
    tokenizer = llama.tokenizer
    word, newline = tokenizer.convert_tokens_to_ids("return"), tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    assert newline in line_break_ids(tokenizer) and word not in line_break_ids(tokenizer)
    sequence = [word, newline, word, word, word, word]

    def scripted(model):  # the t-th decoding step's logits put token sequence[t] on top
        steps = iter(range(100))

        def logits(hidden):
            scores = torch.zeros(hidden.shape[0], len(tokenizer))
            scores[:, sequence[min(next(steps), len(sequence) - 1)]] = 1.0
            return scores
        model.logits = logits
        return model

    completion = scripted(GenerationModel(llama, PROMPTS["code-completion"]).eval())
    assert generate(completion, tokenizer, ["x = 1"], max_source_tokens=32, max_new_tokens=6) == ["return"]
    summary = scripted(GenerationModel(llama, PROMPTS["code-summarization"]).eval())
    assert generate(summary, tokenizer, ["x = 1"], max_source_tokens=32, max_new_tokens=6) == ["return\nreturnreturnreturnreturn"]
    rows = source_ids(tokenizer, ["x = 1"], 32, prompt=PROMPTS["code-completion"])
    assert generate_ids(scripted(completion), rows, max_new_tokens=6, stop_ids=[newline]) == [[word, newline]]


# ---------------------------------------------------------------- through the trainer

def _run(tmp_path, llama_dir, task, freeze=-1, method="telly", cache=True, **options):
    variant = Variant.of(task, llama_dir, freeze, method=method, cache=cache, profile=options.pop("profile", UNIT),
                         **({"r": 4} if method == "lora" else {}))
    return finetune(variant, tmp_path, progress=False, **options)


def _blocks_and_norm(llama, k):
    return sum(p.numel() for p in llama.layers[k:].parameters()) + llama.model.norm.weight.numel()


@pytest.mark.parametrize("task", ["code-summarization", "code-search"])
def test_full_and_telly_k_cached_and_uncached_on_a_decoder(tmp_path, llama_dir, llama, task):
    full = _run(tmp_path, llama_dir, task)
    assert full["parameters"]["trainable"] == sum(p.numel() for p in llama.model.parameters())
    cached = _run(tmp_path, llama_dir, task, 2, dropout=0.0)
    uncached = _run(tmp_path, llama_dir, task, 2, cache=False, dropout=0.0)
    # Telly-2: blocks 2..3 and the final norm train; the embeddings, which are also the tied LM
    # head, stay frozen; the generation head adds no parameters.
    assert cached["parameters"]["trainable"] == uncached["parameters"]["trainable"] == _blocks_and_norm(llama, 2)
    assert cached["uses_cache"] and cached["cache"]["depth"] == 2 and not uncached["uses_cache"]
    assert cached["epochs"][0]["train_loss"] == pytest.approx(uncached["epochs"][0]["train_loss"], abs=1e-4)
    metric = get_task(task).metric
    assert cached["test"][metric] == pytest.approx(uncached["test"][metric], abs=1e-6)


def test_lora_adapts_the_query_and_value_projections_of_a_decoder(tmp_path, llama_dir):
    record = _run(tmp_path, llama_dir, "code-summarization", method="lora")
    assert record["method_config"]["lora_targets"] == ["q_proj", "v_proj"]
    # r x (in + out) per projection: q_proj 32 -> 32, v_proj 32 -> 16 (2 key/value heads of 8)
    assert record["parameters"]["trainable"] == LAYERS * 4 * ((32 + 32) + (32 + 16))
    backbones.load(llama_dir, checkpoint=tmp_path / record["run"])  # adapters merged into plain Llama keys


def test_generation_on_a_decoder_records_its_prompted_zero_shot_score(tmp_path, llama_dir):
    record = _run(tmp_path, llama_dir, "code-completion")
    zero_shot = record["zero_shot"]
    assert zero_shot is not None and set(get_task("code-completion").metrics) <= set(zero_shot["test"])
    assert len(zero_shot["test_per_example"]["prediction"]) == UNIT.generation.generation_examples[2]
    assert all("\n" not in p for p in record["test_per_example"]["prediction"])  # one line each
    encoder = finetune(Variant.of("code-completion", "tiny-random", profile=UNIT), tmp_path, progress=False)
    assert encoder["zero_shot"] is None  # an encoder's new LM head answers nothing before training


# ---------------------------------------------------------------- mixed precision

def _autocast_seen(monkeypatch) -> list[tuple[bool, bool]]:
    """(training?, bf16 autocast on?) each time the top block runs (from the prefix cache too)."""
    seen = []
    original = GenerationModel.__init__

    def spying_init(self, backbone, prompt=None):
        original(self, backbone, prompt)
        backbones.find_layers(self.backbone)[-1].register_forward_pre_hook(
            lambda module, args: seen.append((module.training, torch.is_autocast_enabled("cpu"))))

    monkeypatch.setattr(GenerationModel, "__init__", spying_init)
    return seen


def test_bf16_autocasts_training_forward_passes_and_never_decoding(tmp_path, llama_dir, monkeypatch):
    seen = _autocast_seen(monkeypatch)
    bf16 = UNIT.changed(mixed_precision="bf16")  # the profile's setting is the default
    record = _run(tmp_path, llama_dir, "code-summarization", 2, profile=bf16)
    assert record["mixed_precision"] == {"training": "bf16", "prefix_cache": "bf16", "evaluation": "no"}
    assert {autocast for training, autocast in seen if training} == {True}
    assert {autocast for training, autocast in seen if not training} == {False}  # evaluation and decoding
    assert any(training for training, _ in seen) and any(not training for training, _ in seen)
    seen.clear()
    record = _run(tmp_path / "fp32", llama_dir, "code-summarization", profile=bf16, mixed_precision="no")
    assert record["mixed_precision"]["training"] == "no" and not any(autocast for _, autocast in seen)
    with pytest.raises(ValueError, match="mixed_precision must be one of .*got 'fp16'"):
        _run(tmp_path, llama_dir, "code-summarization", mixed_precision="fp16")


def test_layer_features_take_the_profiles_precision_and_cache_it_apart(tiny, tmp_path, monkeypatch):
    from telly.features import layer_features

    monkeypatch.setenv("TELLY_CACHE", str(tmp_path / "cache"))
    seen = []
    hook = tiny.layers[0].register_forward_pre_hook(lambda module, args: seen.append(torch.is_autocast_enabled("cpu")))
    try:
        fp32 = layer_features(tiny, CODE, max_length=32, progress=False)
        bf16 = layer_features(tiny, CODE, max_length=32, progress=False, mixed_precision="bf16")
    finally:
        hook.remove()
    assert seen == [False, True] and fp32.key != bf16.key
    assert fp32.pooled.dtype == bf16.pooled.dtype == "float32"
    assert abs(fp32.pooled - bf16.pooled).max() < 0.1 * abs(fp32.pooled).max()  # bf16 keeps ~3 digits
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        layer_features(tiny, CODE, max_length=32, progress=False, mixed_precision="fp16")
