"""The cheap learned judge: frozen sentence embeddings + a bootstrap ensemble of
Bradley-Terry logistic heads, refit on every label collected so far.

Bradley-Terry with a linear utility u(x, y) = w . phi(x, y) gives
P(a > b | x) = sigmoid(w . (phi(x, a) - phi(x, b))): a logistic regression on
feature differences without intercept. Each of M heads is fitted on a
bootstrap resample of the labeled comparisons (Efron 1979; the bootstrapped
ensemble of Osband et al. 2016); the spread of their probabilities is the
epistemic uncertainty, which shrinks as labels accumulate. Soft labels enter as
sample weights: a comparison with P(a > b) = p contributes (d, 1) with weight p
and (d, 0) with weight 1 - p, and the mirrored (-d, ·) rows keep the heads
antisymmetric, so P(a > b) + P(b > a) = 1 exactly.

phi(x, y) = [e(y), e(x) * e(y)] with e the unit sentence embedding: the response
itself, and its agreement with the prompt (topicality) dimension by dimension.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from alignloop.labeling import Comparison, Judgement, prompt_text
from alignloop.records import Prompt

UNFITTED_DETAIL = "no labels yet"


NEWTON_MAX_DIM = 64
"""Up to this many features the heads are fitted together by Newton's method (a few (D, D)
solves; milliseconds for synthetic features refit after every few labels); above it, as
sentence-embedding features are, one L-BFGS fit (scikit-learn) per head. Same objective and
minimum (strictly convex), so the choice changes time only (test_embedding_judge checks)."""


def fit_newton(diffs: np.ndarray, p_a: np.ndarray, counts: np.ndarray, l2: float,
               *, max_iter: int = 100, tol: float = 1e-10) -> np.ndarray:
    """(M, D) heads minimising, for every member m,

        L_m(w) = sum_i c_im CE(p_i, sigmoid(w . d_i)) + (l2 / 4) |w|^2

    with c_im the bootstrap count of comparison i in member m's resample. This is
    scikit-learn's C sum_rows ell + |w|^2 / 2 (C = 1 / l2) on the four mirrored rows of
    `BTEnsemble.fit`, divided by 2 C: each comparison contributes 2 CE there.
    Newton steps g = D^T (c (s - p)) + (l2 / 2) w, H = D^T diag(c s (1 - s)) D + (l2 / 2) I,
    halved while L_m rises. diffs (N, D), p_a (N,), counts (N, M)."""
    n, dim = diffs.shape
    M = counts.shape[1]
    W = np.zeros((M, dim))
    eye = np.eye(dim)

    def loss(W):
        z = diffs @ W.T                                                      # (N, M)
        # CE(p, sigmoid(z)) = softplus(z) - p z, computed stably
        ce = np.logaddexp(0.0, z) - p_a[:, None] * z
        return (counts * ce).sum(0) + 0.25 * l2 * (W * W).sum(1)             # (M,)

    current = loss(W)
    for _ in range(max_iter):
        s = 1.0 / (1.0 + np.exp(-(diffs @ W.T)))                             # (N, M)
        g = (counts * (s - p_a[:, None])).T @ diffs + 0.5 * l2 * W           # (M, D)
        a = counts * s * (1 - s)                                             # (N, M)
        h = np.stack([(diffs * a[:, m, None]).T @ diffs for m in range(M)]) + 0.5 * l2 * eye
        step = np.linalg.solve(h, g[:, :, None])[:, :, 0]                    # (M, D)
        t = np.ones(M)
        for _ in range(30):                                                  # backtracking
            trial = loss(W - t[:, None] * step)
            worse = trial > current + 1e-12
            if not worse.any():
                break
            t = np.where(worse, t / 2, t)
        W = W - t[:, None] * step
        current = loss(W)
        if np.max(np.abs(t[:, None] * step)) < tol:
            break
    return W


class BTEnsemble:
    """M bootstrap logistic heads over feature differences. Features are given, so the
    same heads serve the embedding judge and synthetic-feature benchmarks."""

    def __init__(self, members: int = 8, l2: float = 1.0, seed: int = 0):
        self.members = members
        self.l2 = l2
        self.seed = seed
        self.weights: np.ndarray | None = None  # (M, D) once fitted
        self.n_labels = 0

    @property
    def fitted(self) -> bool:
        return self.weights is not None

    def fit(self, diffs: np.ndarray, p_a: np.ndarray) -> BTEnsemble:
        """diffs (N, D) = phi(a) - phi(b); p_a (N,) soft labels in [0, 1]."""
        diffs = np.asarray(diffs, dtype=np.float64)
        p_a = np.clip(np.asarray(p_a, dtype=np.float64), 0.0, 1.0)
        n, dim = diffs.shape
        self.n_labels = n
        if n == 0:
            self.weights = None
            return self
        rng = np.random.default_rng(self.seed)
        if dim <= NEWTON_MAX_DIM:
            counts = np.stack([np.bincount(rng.integers(0, n, size=n), minlength=n)
                               for _ in range(self.members)], axis=1)      # (n, M)
            self.weights = fit_newton(diffs, p_a, counts.astype(np.float64), self.l2)
            return self
        from sklearn.linear_model import LogisticRegression

        heads = np.zeros((self.members, dim))
        for m in range(self.members):
            idx = rng.integers(0, n, size=n)
            d, p = diffs[idx], p_a[idx]
            X = np.concatenate([d, d, -d, -d])                       # (4n, D)
            y = np.concatenate([np.ones(n), np.zeros(n), np.ones(n), np.zeros(n)])
            w = np.concatenate([p, 1 - p, 1 - p, p])
            keep = w > 0
            head = LogisticRegression(C=1.0 / self.l2, fit_intercept=False, max_iter=1000)
            head.fit(X[keep], y[keep], sample_weight=w[keep])
            heads[m] = head.coef_[0]
        self.weights = heads
        return self

    def member_probs(self, diffs: np.ndarray) -> np.ndarray:
        """(M, N) member probabilities P(a > b); requires a fitted ensemble."""
        assert self.weights is not None, "fit() first"
        z = np.asarray(diffs, dtype=np.float64) @ self.weights.T    # (N, M)
        return (1.0 / (1.0 + np.exp(-z))).T

    def utilities(self, features: np.ndarray) -> np.ndarray:
        """(M, N) member utilities w_m . phi for pointwise ranking."""
        assert self.weights is not None, "fit() first"
        return (np.asarray(features, dtype=np.float64) @ self.weights.T).T


class EmbeddingEnsembleJudge:
    """Judge protocol over `BTEnsemble` with sentence-embedding features. Before any
    label it has no verdict (an invalid judgement, "no labels yet"): in an ensemble the
    other judges decide alone; on its own, everything goes to people until they have
    taught it something."""

    learns = True

    def __init__(self, name: str = "embedding_ensemble", *, encoder=None,
                 encoder_ref: str = "builtin:all-minilm-l6-v2", members: int = 8,
                 l2: float = 1.0, seed: int = 0):
        self.name = name
        self.n_members = members
        self._encoder = encoder
        self._encoder_ref = encoder_ref
        self.heads = BTEnsemble(members, l2, seed)

    @classmethod
    def from_spec(cls, spec, placement=None) -> EmbeddingEnsembleJudge:
        # The sentence encoder stays on the CPU in float32 (`alignloop.embeddings`): a small
        # model, run one text at a time so that a vector never depends on its batch-mates.
        return cls(spec.label, encoder_ref=spec.embedding_model, members=spec.members, l2=spec.l2)

    @property
    def encoder(self):
        if self._encoder is None:
            from alignloop.embeddings import shared_encoder

            self._encoder = shared_encoder(self._encoder_ref)
        return self._encoder

    def features(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> np.ndarray:
        """phi(x, y) = [e(y), e(x) * e(y)], (N, 2D)."""
        e_y = self.encoder.encode(list(responses), progress=True)
        e_x = self.encoder.encode([prompt_text(p) for p in prompts], progress=True)
        return np.concatenate([e_y, e_x * e_y], axis=1)

    def _diffs(self, items: Sequence[Comparison]) -> np.ndarray:
        prompts = [c.prompt for c in items]
        phi_a = self.features(prompts, [c.a for c in items])
        phi_b = self.features(prompts, [c.b for c in items])
        return phi_a - phi_b

    def fit(self, items: Sequence[Comparison], p_a: Sequence[float]) -> None:
        """Refit every head on all labels so far (not incrementally: bootstrap resamples
        of the whole set are what make the spread honest)."""
        items = list(items)
        diffs = self._diffs(items) if items else np.zeros((0, 2 * self.encoder.dim))
        self.heads.fit(diffs, np.asarray(p_a, dtype=np.float64))

    def judge(self, items: Sequence[Comparison]) -> list[Judgement]:
        items = list(items)
        if not self.heads.fitted:
            return [Judgement.invalid(self.n_members, UNFITTED_DETAIL) for _ in items]
        probs = self.heads.member_probs(self._diffs(items))          # (M, N)
        detail = f"fitted on {self.heads.n_labels} labels"
        return [Judgement.from_members(probs[:, i], detail=detail) for i in range(len(items))]

