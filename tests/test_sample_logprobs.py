"""A sample's log-prob is the same wherever it is computed: the generator's record
(`Completion.logprob_sum`) equals the eval stage's rescoring of the sample's tokens, for
samples ended by EOS, by a stop string and by the length limit (issue 14 #6: the record
dropped the EOS while the eval scorer added one, even after a stop string)."""

import pytest
import torch
from alignloop.generation import PromptItem, SamplingParams, make_generator

TINY = "builtin:tiny-random"
ITEMS = [PromptItem("a", [{"role": "user", "content": "Hello there, how are you today?"}]),
         PromptItem("b", "Write one word:")]


@pytest.fixture(scope="module")
def gen():
    """The tiny model with an output bias on EOS, so that some samples end by it."""
    gen = make_generator("hf", TINY, progress=False)
    head = gen.model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[gen.tokenizer.eos_token_id] = 10.0
    gen.model.lm_head = biased
    return gen


def test_eval_scores_exactly_the_tokens_the_policy_chose(gen):
    from alignloop.labeling.logprobs import score_token_sequences
    from alignloop.stages.evaluate import _completion_tokens

    eos = gen.tokenizer.eos_token_id
    # n and seed chosen so that the draws cover all three endings (a stop on "x" is rare)
    out = gen.sample(ITEMS, SamplingParams(n=16, max_new_tokens=5, stop=("x",), seed=9))
    kinds = {"eos" if c.token_ids[-1] == eos else c.finish_reason for c in out}
    assert kinds == {"eos", "stop", "length"}   # "stop" here: by the stop string, no EOS
    by_id = {it.prompt_id: it for it in ITEMS}
    seqs = [_completion_tokens(gen.tokenizer, by_id[c.prompt_id], c) for c in out]
    assert [tuple(resp) for _, resp in seqs] == [c.token_ids for c in out]
    scored = score_token_sequences(gen.model, seqs, pad_id=gen.tokenizer.pad_token_id,
                                   progress=False)
    assert list(scored) == pytest.approx([c.logprob_sum for c in out], abs=1e-3)
