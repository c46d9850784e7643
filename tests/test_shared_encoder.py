"""One sentence encoder per process: the embedding judge, the demo panel and slice
clustering share it, so a text they all see is embedded once, with the same vector
a private encoder gives."""

import numpy as np
from alignloop.demo.panel import Panel
from alignloop.embeddings import Encoder, shared_encoder
from alignloop.labeling.embedding import EmbeddingEnsembleJudge


def test_judge_panel_and_slices_share_one_encoder_and_its_cache(monkeypatch):
    judge, panel = EmbeddingEnsembleJudge(), Panel("demo")
    assert judge.encoder is panel.encoder is shared_encoder()
    enc = shared_encoder()
    forwards = []
    real = enc.model.forward
    monkeypatch.setattr(enc.model, "forward", lambda *a, **k: forwards.append(1) or real(*a, **k))
    text = "Your parcel left the depot this morning and arrives tomorrow. (shared-encoder test)"
    judge.encoder.encode([text])
    panel.encoder.encode([text])
    assert len(forwards) == 1                        # the panel read the judge's vector

    from alignloop.stages import slices

    seen = []
    monkeypatch.setattr(Encoder, "encode", lambda self, texts, progress=False:
                        seen.append(self) or np.eye(len(texts), 4, dtype=np.float32))

    class Item:
        def __init__(self, i):
            self.prompt_id, self.prompt = f"p{i}", f"prompt {i}"

    slices.cluster_labels([Item(i) for i in range(3)], 2)
    assert seen == [enc]


def test_shared_vectors_equal_a_private_encoders():
    texts = ["I am sorry the order is late.", "Thanks!", "Refunds take 3-5 working days."]
    shared = shared_encoder().encode(texts)
    private = Encoder().encode(list(reversed(texts)))[::-1]
    assert np.array_equal(shared, private)
