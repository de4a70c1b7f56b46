"""Generation head (telly.tasks.generation), decoding and metrics on tiny random models: seconds."""
import copy
import math

import numpy as np
import pytest
import torch

from telly.backbones import Backbone, find_embeddings
from telly.decoding import generate, generate_ids
from telly.freezing import freeze_bottom
from telly.metrics import (
    codexglue_sentence_bleu,
    codexglue_smoothed_bleu,
    corpus_bleu,
    degenerate_report,
    edit_similarity,
    exact_match,
)
from telly.sequences import IGNORE, collate_pairs, prefix_lm_mask, source_ids
from telly.tasks.generation import PROMPTS, GenerationModel

PROMPT = PROMPTS["code-summarization"]


@pytest.fixture()
def encoder_model(tiny):
    torch.manual_seed(0)
    return GenerationModel(copy.deepcopy(tiny)).eval()  # a copy: training must not touch the shared fixture


def decoder_backbone(tiny, architecture: str) -> Backbone:
    """A tiny random causal LM (GPT-2 or Llama): the decoder path, a causal LM with a prompt."""
    from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel

    torch.manual_seed(0)
    vocab = tiny.tokenizer.vocab_size
    if architecture == "gpt2":
        model = GPT2Model(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=3, n_head=4, n_positions=256))
    else:
        model = LlamaModel(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256))
    tokenizer = type(tiny.tokenizer).from_pretrained(tiny.tokenizer.name_or_path)
    tokenizer.cls_token, tokenizer.sep_token = None, None  # GPT-style: BOS/EOS only
    tokenizer.bos_token, tokenizer.eos_token = "[unused1]", "[unused2]"
    return Backbone(name=f"tiny-{architecture}", model=model.eval(), tokenizer=tokenizer, kind="decoder",
                    source="random-init")


@pytest.fixture(scope="module")
def gpt2_backbone(tiny):
    return decoder_backbone(tiny, "gpt2")


@pytest.fixture(params=["bert", "bert-eager", "gpt2", "llama"])
def any_model(tiny, request):
    """(GenerationModel, tokenizer) for a prefix-LM encoder (SDPA and eager attention, which take
    boolean and additive masks) and two prompted causal-LM decoders."""
    torch.manual_seed(0)
    backbone = copy.deepcopy(tiny) if request.param.startswith("bert") else decoder_backbone(tiny, request.param)
    if request.param == "bert-eager":
        backbone.model.set_attn_implementation("eager")
    return GenerationModel(backbone, PROMPT).eval(), backbone.tokenizer


SOURCES = ["def add(a, b):\n    return a + b", "class Stack:\n    pass", "x = [i for i in range(10)]"]
TARGETS = ["add two numbers", "an empty stack", "squares"]


# ---------------------------------------------------------------- layout and mask

def test_prefix_lm_mask_is_bidirectional_on_the_source_and_causal_on_the_target():
    attention = torch.tensor([[1, 1, 1, 1, 1, 0]])
    allowed = prefix_lm_mask(attention, torch.tensor([3]), bidirectional_source=True)[0, 0]
    assert allowed[0, 2]  # a source token sees a later source token
    assert not allowed[0, 3]  # ... but never the target
    assert allowed[3, :4].all() and not allowed[3, 4]  # first target token: source + itself
    assert allowed[4, :5].all()
    assert not allowed[:5, 5].any()  # nobody attends to padding
    causal = prefix_lm_mask(attention, torch.tensor([3]), bidirectional_source=False)[0, 0]
    assert not causal[0, 2] and causal[2, 0]  # decoders: causal on the prompt too


def test_collate_aligns_labels_with_the_next_token_and_cuts_targets(tiny):
    batch = collate_pairs(tiny.tokenizer, SOURCES, TARGETS, max_source_tokens=12, max_target_tokens=3)
    ids, labels, length = batch["inputs"]["sequence"]["input_ids"], batch["labels"], batch["source_length"]
    sep = tiny.tokenizer.sep_token_id
    for row in range(len(SOURCES)):
        n = int(length[row])
        assert n <= 12 and ids[row, n - 1] == sep and (labels[row, :n] == IGNORE).all()
        target = labels[row][labels[row] != IGNORE]
        assert 1 <= len(target) <= 3  # at most max_target_tokens, EOS included when it fits
        assert ids[row, n] == tiny.tokenizer.cls_token_id  # the target starts with BOS
        # teacher forcing: the label at position p is the input token at p + 1
        assert torch.equal(labels[row, n:n + len(target) - 1], ids[row, n + 1:n + len(target)])
    short = collate_pairs(tiny.tokenizer, ["x"], ["y"], max_source_tokens=12, max_target_tokens=8)
    assert short["labels"][0][short["labels"][0] != IGNORE][-1] == sep  # a target that fits ends with EOS


def test_left_truncation_keeps_the_end_of_the_source(tiny):
    text = " ".join(f"word{i}" for i in range(40))
    right = source_ids(tiny.tokenizer, [text], 10)[0]
    left = source_ids(tiny.tokenizer, [text], 10, truncate="left")[0]
    assert len(right) == len(left) == 11  # [CLS] source [SEP] within 10, then the start token [CLS]
    assert tiny.tokenizer.decode(left[1:-2]).replace(" ", "").endswith("word39")
    assert tiny.tokenizer.decode(right[1:-2]).replace(" ", "").startswith("word0")
    with pytest.raises(ValueError, match="truncate"):
        source_ids(tiny.tokenizer, [text], 10, truncate="middle")


# ---------------------------------------------------------------- Telly-K on both stacks

def _numel(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@pytest.mark.parametrize("k", [-1, 0, 1, 3])
def test_freezing_both_stacks_counts_exactly(tiny, k):
    tiny = copy.deepcopy(tiny)
    model = GenerationModel(tiny)
    report = freeze_bottom(model, k)
    backbone = model.backbone
    frozen = [] if k < 0 else [*find_embeddings(backbone), *tiny.layers[:k], backbone.pooler]
    head = _numel([model.head])
    total = _numel([backbone]) + head
    assert report.total_parameters == total
    assert report.trainable_parameters == total - _numel(frozen)
    # encoder and decoder roles are the same blocks: frozen blocks are frozen for both
    for index, layer in enumerate(tiny.layers):
        assert all(p.requires_grad == (index >= k) for p in layer.parameters())
    # the output projection is tied to the (frozen from K=0 on) input embeddings; the head trains
    assert backbone.get_input_embeddings().weight.requires_grad == (k < 0)
    assert all(p.requires_grad for p in model.head.parameters())


def test_freezing_a_decoder_backbone_counts_exactly(gpt2_backbone):
    model = GenerationModel(gpt2_backbone, PROMPT)
    report = freeze_bottom(model, 2)
    frozen = [*find_embeddings(model.backbone), *gpt2_backbone.layers[:2]]
    assert report.trainable_parameters == _numel([model]) - _numel(frozen)
    with pytest.raises(ValueError, match="-1..2"):
        freeze_bottom(model, 3)


# ---------------------------------------------------------------- decoding

def _greedy_by_recomputing(model, row, steps):
    """Reference greedy decoding: the whole sequence through the model at every step, no KV cache
    (`row` is a framed source: it ends with the start token)."""
    sequence, produced = list(row), []
    for _ in range(steps):
        ids = torch.tensor([sequence])
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "source_length": torch.tensor([len(row) - 1])}
        hidden, _ = model.encode(inputs)
        token = int(model.logits(hidden[0, -1]).argmax())
        if token == model.specials["eos"]:
            break
        produced.append(token)
        sequence.append(token)
    return produced


def test_cached_batched_decoding_matches_recomputing_each_row(any_model):
    model, tokenizer = any_model
    rows = source_ids(tokenizer, SOURCES, 24, prompt=model.prompt)
    assert len({len(r) for r in rows}) > 1  # rows of different lengths: padding and positions are exercised
    batched = generate_ids(model, rows, max_new_tokens=5)
    assert batched == [_greedy_by_recomputing(model, row, 5) for row in rows]
    # beam search with one beam is greedy; a row's result does not depend on its batch
    assert generate_ids(model, rows, max_new_tokens=5, num_beams=1) == batched
    beams = generate_ids(model, rows, max_new_tokens=5, num_beams=3)
    assert beams[1:] == generate_ids(model, rows[1:], max_new_tokens=5, num_beams=3)


@pytest.mark.parametrize("beams", [1, 3])
def test_decoding_respects_the_length_limit(encoder_model, tiny, beams):
    with torch.no_grad():  # EOS can never win: every output runs to the limit and no further
        encoder_model.head.bias[encoder_model.specials["eos"]] = -1e9
    rows = source_ids(tiny.tokenizer, SOURCES, 16)
    for limit in (1, 4):
        outputs = generate_ids(encoder_model, rows, max_new_tokens=limit, num_beams=beams)
        assert [len(o) for o in outputs] == [limit] * len(rows)
    with torch.no_grad():  # EOS always wins: empty outputs
        encoder_model.head.bias[encoder_model.specials["eos"]] = 1e9
    assert generate(encoder_model, tiny.tokenizer, SOURCES, max_source_tokens=16, max_new_tokens=4) == [""] * 3
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_ids(encoder_model, rows, max_new_tokens=0)


def test_the_cached_prefix_reproduces_the_uncached_model(any_model):
    """The trainer's frozen-prefix cache, built through the backbone's prefix-LM hook, then blocks
    K..L-1 under the same mask: the same hidden states and loss as the full model (eval mode)."""
    from telly.prefix_cache import build_prefix_cache
    from telly.tasks.generation import GenerationExample

    model, tokenizer = any_model
    examples = [GenerationExample(s, t, str(i)) for i, (s, t) in enumerate(zip(SOURCES, TARGETS))]

    def collate(rows):
        return collate_pairs(tokenizer, [e.source for e in rows], [e.target for e in rows],
                             max_source_tokens=24, max_target_tokens=6, prompt=model.prompt)

    batch = collate(examples)
    with torch.no_grad():
        full_hidden, _ = model.encode(batch["inputs"]["sequence"])
        full_loss = model(batch)
        for depth in (0, 2):
            cache = build_prefix_cache(model.backbone, examples, collate, depth, batch_size=2,
                                       memory_mb=64, show_progress=False)
            cached = dict(batch, inputs=cache.states(range(len(examples)), torch.float32))
            hidden, mask = model.encode(cached["inputs"]["sequence"], batch["source_length"])
            real = mask.bool()
            assert torch.allclose(hidden[real], full_hidden[real], atol=1e-5)
            assert torch.allclose(model(cached), full_loss, atol=1e-5)
            cache.close()


def test_loss_falls_when_the_model_trains(encoder_model, tiny):
    batch = collate_pairs(tiny.tokenizer, SOURCES, TARGETS, max_source_tokens=16, max_target_tokens=6)
    encoder_model.train()
    optimizer = torch.optim.AdamW(encoder_model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = encoder_model(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 2.0, losses


# ---------------------------------------------------------------- metrics

def test_codexglue_smoothed_bleu_matches_hand_computed_values():
    # Identical after lower-casing and splitPuncts: every precision 1, no brevity penalty.
    assert codexglue_sentence_bleu("Returns the Value.", "returns the value .") == pytest.approx(1.0)
    # ref a b c d, pred a b c: matches 3,2,1,0 of 3,2,1,0; +1 smoothing for n>1 makes every
    # precision 1; brevity penalty min(0, 1 - (4+1)/(3+1)) = -0.25.
    assert codexglue_sentence_bleu("a b c d", "a b c") == pytest.approx(math.exp(-0.25))
    # ref a b c d, pred a x c d: p1 = 3/4, p2 = (1+1)/(3+1), p3 = (0+1)/(2+1), p4 = (0+1)/(1+1);
    # geometric mean (3/4 * 1/2 * 1/3 * 1/2) ** (1/4) = 0.0625 ** 0.25 = 0.5.
    assert codexglue_sentence_bleu("a b c d", "a x c d") == pytest.approx(0.5)
    # bleu.py's quirk: an empty prediction scores exp(1 - (r+1)/1) = exp(-r), here r = 2.
    assert codexglue_sentence_bleu("a b", "") == pytest.approx(math.exp(-2))
    # The corpus score is the mean sentence score x100 (bleuFromMaps).
    assert codexglue_smoothed_bleu(["a b c d", "a b c d"], ["a b c", "a x c d"]) == pytest.approx(
        100 * (math.exp(-0.25) + 0.5) / 2)
    with pytest.raises(ValueError, match="2 references but 1 predictions"):
        codexglue_smoothed_bleu(["a", "b"], ["a"])


def _concode_bleu(references, predictions):
    """CodeXGLUE text-to-code evaluator/bleu.py (_bleu -> compute_bleu, smooth=True, max_order=4),
    transcribed for the test: whitespace tokens, +1 on every order's matches and candidates."""
    from collections import Counter

    def grams(words):
        return Counter(tuple(words[i:i + n]) for n in range(1, 5) for i in range(len(words) - n + 1))

    matches, possible, ref_len, hyp_len = [0] * 4, [0] * 4, 0, 0
    for reference, prediction in zip(references, predictions):
        ref, hyp = reference.strip().split(), prediction.strip().split()
        ref_len, hyp_len = ref_len + len(ref), hyp_len + len(hyp)
        for gram, count in (grams(hyp) & grams(ref)).items():
            matches[len(gram) - 1] += count
        for n in range(1, 5):
            possible[n - 1] += max(len(hyp) - n + 1, 0)
    geo = math.exp(sum(math.log((m + 1) / (p + 1)) for m, p in zip(matches, possible)) / 4)
    ratio = hyp_len / ref_len
    return 100 * geo * (1.0 if ratio > 1.0 else math.exp(1 - 1 / ratio))


def test_text_to_code_bleu_is_codexglue_concode_bleu():
    from telly.metrics import bleu_statistics, corpus_bleu_from_statistics

    # Whitespace tokens: "a+b" is one token, so "a + b" matches only "return" (old: splitPuncts made
    # both sides identical, 100.0). Precisions 2/5, 1/4, 1/3, 1/2; the candidate is longer: no penalty.
    assert corpus_bleu(["return a+b"], ["return a + b"]) == pytest.approx(100 * (2 / 5 * 1 / 4 * 1 / 3 * 1 / 2) ** 0.25)
    # Every order is smoothed, unigrams too: one wrong word scores ((0+1)/(1+1)) ** (1/4) (old: 0.0).
    assert corpus_bleu(["x"], ["y"]) == pytest.approx(100 * 0.5 ** 0.25)
    refs = ["return self._x + 1", "if x is None:\n    return []", "def f(a, b): pass", "int function ( ) { return 0 ; }"]
    preds = ["return self.x + 1", "if x:\n    return None", "def f(a): pass", "int function ( ) { return 0 ; }"]
    assert corpus_bleu(refs, preds) == pytest.approx(_concode_bleu(refs, preds))
    assert corpus_bleu(refs[:2], preds[:2]) == pytest.approx(_concode_bleu(refs[:2], preds[:2]))
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)
    # Per-example statistics: any resample of the rows sums to its own corpus BLEU.
    stats = bleu_statistics(refs, preds)
    rows = [2, 2, 0]
    assert corpus_bleu_from_statistics({k: v[rows] for k, v in stats.items()}) == pytest.approx(
        _concode_bleu([refs[i] for i in rows], [preds[i] for i in rows]))
    assert corpus_bleu(["a b"], [""]) == 0.0  # no candidate words: the limit of the brevity penalty


def test_exact_match_and_edit_similarity_as_codexglue_evaluators():
    from telly.metrics import codexglue_post_process

    # Exact match: whitespace tokens (old: splitPuncts tokens made these equal).
    assert exact_match("x = foo(1)", "x=foo( 1 )") == 0.0
    assert exact_match("if x:\n    return y", "if x: return y") == 1.0
    assert exact_match("x = foo(1)", "x = foo(2)") == 0.0
    # Edit similarity: fuzz.ratio of the raw strings, rounded as fuzzywuzzy does. "a b" vs "a c"
    # share "a " (4 of 6 characters): 66.67 -> 67; "x=foo(1)" vs "x = foo(1)": 16 of 18 -> 89
    # (old: 100, both re-spaced as "x = foo ( 1 )").
    assert edit_similarity("a b", "a c") == 67.0
    assert edit_similarity("x=foo(1)", "x = foo(1)") == 89.0
    assert edit_similarity("return x", "  return x\n") == 100.0  # the prediction is stripped
    # The evaluator's literal post-processing, on both sides.
    assert codexglue_post_process('s = "<STR_LIT:hi>" + <NUM_LIT> + <NUM_LIT:3>') == 's = "hi" + 0 + 3'
    assert edit_similarity('s = "<STR_LIT:hi>"', 's = "hi"') == 100.0


def test_retrieval_counts_ties_as_a_random_order():
    from telly.metrics import retrieval_scores

    n = 12
    collapsed = retrieval_scores(np.zeros((n, n)))  # every candidate scores the same
    harmonic = sum(1 / k for k in range(1, n + 1))
    assert collapsed["reciprocal_rank"] == pytest.approx(np.full(n, harmonic / n))  # chance (old: 1.0)
    assert collapsed["hit@1"] == pytest.approx(np.full(n, 1 / n))
    assert collapsed["hit@10"] == pytest.approx(np.full(n, 10 / n))
    # Query 0: one candidate above, one tied: rank 2 or 3 with equal chance.
    scores = retrieval_scores(np.array([[0.5, 0.9, 0.5, 0.1], [0.0, 1.0, 0.2, 0.3]]), cutoffs=(1, 2))
    assert scores["reciprocal_rank"] == pytest.approx([(1 / 2 + 1 / 3) / 2, 1.0])
    assert scores["hit@1"] == pytest.approx([0.0, 1.0]) and scores["hit@2"] == pytest.approx([0.5, 1.0])
    with pytest.raises(ValueError, match="queries, candidates"):
        retrieval_scores(np.zeros((3, 2)))


def test_clone_scores_match_scikit_learn_where_a_class_is_missing():
    from sklearn.metrics import precision_recall_fscore_support

    from telly.metrics import clone_scores

    rng = np.random.default_rng(0)
    cases = [(rng.integers(0, 2, 20), rng.integers(0, 2, 20)) for _ in range(20)]
    cases += [(np.zeros(5, int), np.zeros(5, int)), (np.ones(5, int), np.zeros(5, int)), (np.zeros(5, int), np.ones(5, int))]
    for label, prediction in cases:
        expected = precision_recall_fscore_support(label, prediction, average="binary", zero_division=0)[:3]
        scores = clone_scores({"prediction": prediction, "label": label})
        assert [scores["precision"], scores["recall"], scores["f1"]] == pytest.approx(list(expected))


def test_degenerate_outputs_are_detected():
    healthy = degenerate_report(["a", "b", "c", "a"])
    assert not healthy["is_degenerate"] and healthy["distinct"] == 3 and healthy["most_common_share"] == 0.5
    assert not degenerate_report(["a", "b", "c", "d"])["is_degenerate"]
    empty = degenerate_report(["", " ", "x", ""])
    assert empty["is_degenerate"] and empty["empty"] == 3 and "empty" in empty["reasons"][0]
    same = degenerate_report(["the the", "the the", "the the"])
    assert same["is_degenerate"] and same["distinct"] == 1 and "identical" in same["reasons"][0]
    mostly = degenerate_report(["x", "x", "x", "y"])
    assert mostly["is_degenerate"] and mostly["most_common_share"] == 0.75
    assert degenerate_report([])["is_degenerate"]


def test_a_generation_score_reads_the_shares_off_a_resample_of_numpy_columns():
    from telly.metrics import score_function

    # The bootstrap hands the score function numpy string columns, resampled with repeats.
    predictions = np.array(["", "def f ( ) :", "x x x x x", "return a"])
    rows = np.array([0, 0, 2, 3, 1, 0])
    columns = {"prediction": predictions[rows], "edit_similarity": np.arange(6.0), "exact_match": np.zeros(6)}
    score = score_function("code-completion")(columns)
    assert score["edit_similarity"] == 2.5 and score["empty_share"] == 0.5 and score["most_common_share"] == 0.5
    assert score["degenerate"] == 1.0  # half the resampled predictions are empty
    assert score_function("code-completion")({name: column[1:5] for name, column in columns.items()})["degenerate"] == 0
    assert degenerate_report(columns["prediction"].tolist())["looping"] == 1


def test_example_outputs_show_the_best_and_the_most_frozen_variant():
    from telly.report.freezing import example_outputs

    def record(method, freeze, bleu, predictions):
        return {"task": "code-summarization", "method": method, "freeze": freeze, "metric": "bleu",
                "test": {"bleu": bleu, "degenerate": float(len(set(predictions)) == 1)},
                "test_per_example": {"reference": ["a b", "c d", "e f"], "prediction": predictions}}

    records = [record("full", -1, 30.0, ["a b", "c", "e"]), record("telly", 3, 35.0, ["a b", "c d", "e"]),
               record("telly", 5, 10.0, ["x", "x", "x"]), record("lora", -1, 20.0, ["a", "c", "e"])]
    rows = example_outputs(records, n=2)
    assert [r["variant"] for r in rows] == ["best: Telly-3"] * 2 + ["most frozen: Telly-5"] * 2
    assert rows[1]["prediction"] == "c d" and rows[1]["reference"] == "c d" and rows[1]["bleu"] == 35.0
    assert rows[2]["degenerate"] and not rows[0]["degenerate"]
    assert len(example_outputs(records[1:2], n=3)) == 3  # best and most frozen are the same run: shown once
    with pytest.raises(ValueError, match="one task"):
        example_outputs([records[0], dict(records[1], task="code-generation")])


def test_degenerate_report_flags_decoding_loops():
    looping = ["modular modular modular modular", "med med med med med", "return the value of x"]
    report = degenerate_report(looping + ["a b c d"])
    assert report["looping"] == 2 and report["is_degenerate"]
    assert any("repeat one word" in r for r in report["reasons"])
    assert not degenerate_report(["return the value", "open a file", "a a b c"])["is_degenerate"]
