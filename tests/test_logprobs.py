"""Response log-probs (apl selection, eval): the response-only output projection equals the
plain full-logits computation, with padding and batching."""

import torch
from alignloop.labeling.logprobs import score_token_sequences, sequence_logprobs
from alignloop.models import load_model, load_tokenizer


def test_response_only_projection_matches_full_logits():
    model, tok = load_model("builtin:tiny-random"), load_tokenizer("builtin:tiny-random")
    # longest first in batches of 2: the two responses share one projection; the last
    # batch has no response token at all
    seqs = [([1, 2, 3, 4, 5], [6, 7, 8]), ([9, 10], [11, 12, 13, 14, 15, 16]), ([3, 4], []),
            ([5, 6, 7], [])]
    got = score_token_sequences(model, seqs, pad_id=tok.pad_token_id, batch_size=2)
    assert got[2] == got[3] == 0.0
    with torch.no_grad():
        for (prompt, resp), value in zip(seqs, got, strict=True):
            lp = model(input_ids=torch.tensor([prompt + resp])).logits[0].log_softmax(-1)
            want = sum(float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(resp))
            assert abs(value - want) < 1e-4


def test_sequence_logprobs_prefers_what_the_model_says():
    # a response the model would not produce scores lower than one sampled from it
    model_ref = "builtin:tiny-random"
    chat = [{"role": "user", "content": "hello"}]
    a, b = sequence_logprobs(model_ref, [chat, chat], ["ok", "ok ok ok ok ok ok ok ok"],
                             progress=False)
    assert a > b
