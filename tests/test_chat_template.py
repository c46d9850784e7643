"""`data.chat_template`: a plain-text prompt for a chat model is one user turn in every stage
(generation, training, scoring), unless the config says to keep it as written."""

from __future__ import annotations

import pytest
from alignloop import models
from alignloop.config import GenerationConfig
from alignloop.generation import PromptItem, SamplingParams, generator_for
from alignloop.records import Pair
from alignloop.training.batching import encode_pair

TINY = "builtin:tiny-random"
PLAIN = "Is the Grindstone grinder loud?"
CHAT = [{"role": "user", "content": PLAIN}]
PARAMS = SamplingParams(n=2, max_new_tokens=6, seed=3)


def _sample(mode: str, prompt) -> list[tuple]:
    """Each sample's tokens and their log-probs (a random tiny model may sample the same
    tokens after different prompts; their log-probs tell the contexts apart)."""
    gen = generator_for(GenerationConfig(backend="hf"), TINY, chat_template=mode)
    gen.progress = False
    return [(c.token_ids, [round(x, 4) for x in c.token_logprobs])
            for c in gen.sample([PromptItem("p", prompt)], PARAMS)]


def test_generation_renders_a_plain_prompt_as_a_user_turn():
    """Same prompt id and seed: the plain prompt samples exactly what the one-message chat
    prompt samples under `auto`, and something else when kept as written (`never`)."""
    chat = _sample("auto", CHAT)
    assert _sample("auto", PLAIN) == chat
    assert _sample("never", PLAIN) != chat


@pytest.mark.parametrize("mode, same", [("auto", True), ("always", True), ("never", False)])
def test_training_encodes_a_plain_pair_as_its_chat_twin(mode, same):
    tok = models.load_tokenizer(TINY, chat_template=mode)
    plain = encode_pair(Pair(prompt=PLAIN, chosen="Quiet.", rejected="Loud."), tok,
                        max_length=256, max_prompt_length=128, truncation="error")
    chat = encode_pair(Pair(prompt=CHAT, chosen="Quiet.", rejected="Loud."), tok,
                       max_length=256, max_prompt_length=128, truncation="error")
    assert (plain == chat) is same


def test_scoring_follows_the_same_rule():
    from alignloop.labeling.logprobs import sequence_logprobs

    plain = sequence_logprobs(TINY, [PLAIN], ["Quiet."], progress=False)
    chat = sequence_logprobs(TINY, [CHAT], ["Quiet."], progress=False)
    raw = sequence_logprobs(TINY, [PLAIN], ["Quiet."], progress=False, chat_template="never")
    assert plain[0] == pytest.approx(chat[0], abs=1e-6)
    assert raw[0] != pytest.approx(chat[0], abs=1e-3)
