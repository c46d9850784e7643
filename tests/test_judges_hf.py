"""The model judges: `llm_pairwise` (both orders, log-prob verdicts) and `reward_model`.

Position bias must cancel, content preference must survive, an unreadable
verdict must stay unreadable, and reward-model members must equal the
Bradley-Terry sigmoid of a direct forward pass. Offline, CPU, tiny models.
"""

import math

import numpy as np
import pytest
import torch
from alignloop.config.labeling import JudgeSpec
from alignloop.labeling import Comparison, LabelingError, make_judge, sigmoid
from alignloop.labeling.llm_pairwise import HFVerdictModel, LLMPairwiseJudge
from alignloop.labeling.reward_model import RewardModelJudge, render_text
from alignloop.models import load_model, load_tokenizer, resolve_model_path

TINY = "builtin:tiny-random"
CHAT = [{"role": "user", "content": "My parcel is late again."}]
ITEMS = [Comparison("Say hello.", "thanks, hello!", "go away", key="1"),
         Comparison(CHAT, "I'm sorry, let me check.", "thanks for waiting, it's coming.", key="2"),
         Comparison(CHAT, "Not my problem.", "Let me look into it.", key="3")]


class Scripted:
    """A VerdictModel whose (P(A), P(B)) is a function of the question text."""

    def __init__(self, verdict):
        self.verdict = verdict
        self.asked: list[str] = []

    def verdict_token_ids(self, verdicts):
        return 0, 1

    def first_token_probs(self, questions, token_ids):
        self.asked += questions
        return np.array([self.verdict(q) for q in questions], dtype=float)


def first_slot_has(word):
    """Prefers whichever reply slot contains `word` (the default template's 'Reply A:')."""
    def verdict(question):
        first = question.split("Reply A:")[1].split("Reply B:")[0]
        return (0.9, 0.05) if word in first else (0.05, 0.9)
    return verdict


# --------------------------------------------------------------------------- llm_pairwise, scripted


def test_planted_position_bias_cancels():
    judge = LLMPairwiseJudge(Scripted(lambda q: (0.95, 0.03)))
    out = judge.judge(ITEMS)
    assert len(out) == len(ITEMS)
    for j in out:
        # members (0.95/0.98, 1 - 0.95/0.98): the mean is exactly 1/2
        assert j.valid and abs(j.p_a - 0.5) < 1e-9
        assert j.uncertainty == pytest.approx(0.95 / 0.98 - 0.5)
        assert not j.order_consistent


def test_position_bias_of_095_gives_uncertainty_045():
    j = LLMPairwiseJudge(Scripted(lambda q: (0.95, 0.05))).judge(ITEMS[:1])[0]
    assert abs(j.p_a - 0.5) < 1e-9 and j.uncertainty == pytest.approx(0.45)
    assert j.members == pytest.approx((0.95, 0.05)) and not j.order_consistent


def test_both_orders_asked_and_content_preference_kept():
    model = Scripted(first_slot_has("thanks"))
    out = LLMPairwiseJudge(model).judge(ITEMS[:2])
    assert len(model.asked) == 4
    assert "Reply A:\nthanks, hello!" in model.asked[0] and "Reply A:\ngo away" in model.asked[2]
    assert "user: My parcel is late again." in model.asked[1]  # chat prompt as role: content
    q = 0.9 / 0.95
    assert out[0].p_a == pytest.approx(q) and out[0].order_consistent   # a says thanks
    assert out[1].p_a == pytest.approx(1 - q) and out[1].order_consistent  # b says thanks


def test_unparsable_verdict_is_invalid_never_a_number():
    out = LLMPairwiseJudge(Scripted(lambda q: (0.001, 0.001))).judge(ITEMS)
    for j in out:
        assert not j.valid and math.isnan(j.p_a) and all(math.isnan(m) for m in j.members)
        assert "unparsable" in j.detail and "0.002" in j.detail
    # one order readable, the other not: still invalid
    flip = Scripted(lambda q: (0.9, 0.05) if "Reply A:\nthanks" in q else (0.01, 0.01))
    assert not LLMPairwiseJudge(flip).judge(ITEMS[:1])[0].valid


def test_template_braces_in_responses_survive():
    model = Scripted(lambda q: (0.5, 0.5))
    item = Comparison("p {a}", "use {b} and {x}", "json: {\"k\": 1}")
    LLMPairwiseJudge(model, template="{prompt}|{a}|{b}").judge([item])
    assert model.asked == ['p {a}|use {b} and {x}|json: {"k": 1}',
                           'p {a}|json: {"k": 1}|use {b} and {x}']


# --------------------------------------------------------------------------- llm_pairwise, real model


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TINY)


@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY, dtype="float32")


def planted(tokenizer, verdict: str):
    """The tiny model with an output layer whose logits are constant: +12 on `verdict`'s token,
    0 elsewhere, so P(verdict) = e^12 / (e^12 + V - 1) whatever the question (V: the vocabulary,
    49152 for SmolLM2's tokenizer: 0.76805)."""
    model = load_model(TINY, dtype="float32")
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tokenizer(verdict, add_special_tokens=False)["input_ids"][0]] = 12.0
    model.lm_head = head
    return model


@pytest.mark.parametrize("verdict", ["A", "B"])
def test_real_model_with_planted_verdict_is_debiased(tokenizer, verdict):
    hf = HFVerdictModel(planted(tokenizer, verdict), tokenizer, batch_size=2, progress=False)
    probs = hf.first_token_probs(["x", "y"], (49, 50))
    vocab = hf.model.config.vocab_size
    expected = math.exp(12) / (math.exp(12) + vocab - 1)
    assert probs[:, 0 if verdict == "A" else 1] == pytest.approx([expected] * 2, abs=1e-5)
    for j in LLMPairwiseJudge(hf).judge(ITEMS):
        assert j.valid and abs(j.p_a - 0.5) < 1e-6 and not j.order_consistent
        assert j.uncertainty == pytest.approx(0.5, abs=1e-4)


def test_real_model_end_to_end(tiny, tokenizer):
    hf = HFVerdictModel(tiny, tokenizer, batch_size=4, progress=False)
    judge = LLMPairwiseJudge(hf, min_verdict_mass=0.0)
    assert judge.token_ids == (49, 50)  # "A" and "B" are single tokens in the SmolLM2 vocab
    for j in judge.judge(ITEMS):
        assert j.valid and all(0 < m < 1 for m in j.members)
        assert j.p_a == pytest.approx(sum(j.members) / 2, abs=1e-12)
    # the random model spreads its mass over 49k tokens: the default threshold refuses it
    assert not any(j.valid for j in LLMPairwiseJudge(hf).judge(ITEMS))


def test_batching_and_padding_do_not_change_probabilities(tiny, tokenizer):
    questions = ["short", "a much longer question " * 8, "medium length question here", "q"]
    one = HFVerdictModel(tiny, tokenizer, batch_size=1, progress=False)
    four = HFVerdictModel(tiny, tokenizer, batch_size=4, progress=False)
    np.testing.assert_allclose(four.first_token_probs(questions, (49, 50)),
                               one.first_token_probs(questions, (49, 50)), rtol=1e-4, atol=1e-8)


def test_long_question_keeps_its_end(tiny, tokenizer):
    hf = HFVerdictModel(tiny, tokenizer, max_length=16, progress=False)
    full = HFVerdictModel(tiny, tokenizer, progress=False).encode("word " * 100 + "end")
    assert hf.encode("word " * 100 + "end") == full[-16:]


def test_verdicts_with_the_same_first_token_are_refused(tiny, tokenizer):
    hf = HFVerdictModel(tiny, tokenizer, progress=False)
    with pytest.raises(LabelingError, match="same token"):
        LLMPairwiseJudge(hf, verdicts=("Answer A", "Answer B"))


def test_registry_builds_llm_judge():
    judge = make_judge(JudgeSpec(kind="llm_pairwise", name="gen", models=(TINY,),
                                 min_verdict_mass=0.0, batch_size=3))
    assert isinstance(judge, LLMPairwiseJudge) and judge.name == "gen" and judge.n_members == 2
    assert judge.model.batch_size == 3 and not judge.learns


# --------------------------------------------------------------------------- reward_model


@pytest.fixture(scope="module")
def rm_dirs(tmp_path_factory, tokenizer):
    """Two tiny random Llama reward models (seeds 1, 2); the second has no pad id in its config."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    dirs = []
    for seed, pad in ((1, tokenizer.pad_token_id), (2, None)):
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                             num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                             num_labels=1, pad_token_id=pad)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForSequenceClassification(config)
            with torch.no_grad():
                model.score.weight.normal_(0, 1.0)  # rewards far enough apart to tell members apart
        out = tmp_path_factory.mktemp(f"rm{seed}")
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        dirs.append(str(out))
    return dirs


@pytest.fixture(scope="module")
def rm_judge(rm_dirs):
    return make_judge(JudgeSpec(kind="reward_model", models=tuple(rm_dirs), batch_size=3))


def direct_reward(rm, prompt, response):
    ids = rm.tokenizer(render_text(rm.tokenizer, prompt, response), add_special_tokens=False,
                       return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return float(rm.model(input_ids=ids).logits[0, 0])


def test_reward_members_are_bradley_terry_of_direct_scores(rm_judge):
    assert isinstance(rm_judge, RewardModelJudge) and rm_judge.n_members == 2
    assert rm_judge.name == "reward_model" and not rm_judge.learns
    out = rm_judge.judge(ITEMS)
    for c, j in zip(ITEMS, out, strict=True):
        expected = [sigmoid(direct_reward(rm, c.prompt, c.a) - direct_reward(rm, c.prompt, c.b))
                    for rm in rm_judge.models]
        assert j.members == pytest.approx(expected, abs=1e-5)
        assert j.p_a == pytest.approx(sum(j.members) / 2)
        assert j.uncertainty == pytest.approx(abs(j.members[0] - j.members[1]) / 2)
        assert j.valid and j.order_consistent
    assert len({round(j.members[0] - j.members[1], 6) for j in out}) > 1  # the members differ


def test_reward_is_antisymmetric_and_text_rendered_with_template(rm_judge):
    swapped = [Comparison(c.prompt, c.b, c.a) for c in ITEMS]
    for ab, ba in zip(rm_judge.judge(ITEMS), rm_judge.judge(swapped), strict=True):
        assert ab.p_a + ba.p_a == pytest.approx(1.0, abs=1e-9)
    text = render_text(rm_judge.models[0].tokenizer, "Hi", "Hello")
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n")


def test_each_unique_response_scored_once(rm_judge):
    responses = ["one", "two", "three", "four"]
    items = [Comparison("P", x, y) for i, x in enumerate(responses) for y in responses[i + 1:]]
    items.append(Comparison(CHAT, "one", "two"))  # same text, another prompt: a new text
    rows = []
    hooks = [rm.model.register_forward_hook(
        lambda m, args, kwargs, out: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
        for rm in rm_judge.models]
    try:
        out = rm_judge.judge(items)
    finally:
        for h in hooks:
            h.remove()
    assert len(out) == 7
    assert sum(rows) == 2 * 6  # per model: 4 responses to "P" + 2 to the chat prompt
    assert len(rows) == 2 * 2  # two batches of 3 per model


def test_batch_size_does_not_change_rewards(rm_dirs, rm_judge):
    one = make_judge(JudgeSpec(kind="reward_model", models=tuple(rm_dirs), batch_size=1))
    for a, b in zip(one.judge(ITEMS), rm_judge.judge(ITEMS), strict=True):
        assert a.members == pytest.approx(b.members, abs=1e-6)


def test_non_classifier_is_refused_by_name(tmp_path, tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    with pytest.raises(LabelingError, match="tiny-random.*not a sequence-classification"):
        make_judge(JudgeSpec(kind="reward_model", models=(str(resolve_model_path(TINY)),)))
    two = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, num_labels=2))
    two.save_pretrained(tmp_path / "two")
    with pytest.raises(LabelingError, match="two.*2 outputs"):
        make_judge(JudgeSpec(kind="reward_model", models=(str(tmp_path / "two"),)))


def test_render_without_chat_template_is_plain_text():
    class Plain:
        chat_template = None

    assert render_text(Plain(), "Hi", "Hello") == "Hi\nHello"
    assert render_text(Plain(), CHAT, "Sorry") == "user: My parcel is late again.\nSorry"
