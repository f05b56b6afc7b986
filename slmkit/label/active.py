"""Active learning: which unlabeled items to label next, from the attached model's class probabilities.

Uncertainty comes first (an item the model is unsure of teaches it most); a diversity term keeps a batch from
being ten copies of the same confusing sentence. The selection is greedy: among a candidate pool of the most
uncertain items, repeatedly pick the one with the best

    uncertainty - diversity × (largest cosine similarity to an item already picked)

which is a cheap stand-in for core-set or cluster-based batch selection and needs only the items' embeddings.
"""

from __future__ import annotations

import numpy as np

STRATEGIES = ("margin", "entropy", "random")
POOL_FACTOR = 5  # the greedy diverse pass looks at the POOL_FACTOR × k most uncertain items
DIVERSE_HEAD = 500  # with k=None (rank everything), only the first picks are diversified: the pass costs O(k × pool)


def uncertainty(probs: np.ndarray, strategy: str) -> np.ndarray:
    """Per item in [0, 1], higher = less sure. margin: 1 - (top probability - second); entropy: the entropy of
    the distribution over log(number of classes)."""
    probs = np.asarray(probs, dtype=np.float64)
    if strategy == "margin":
        top2 = np.sort(probs, axis=1)[:, -2:] if probs.shape[1] > 1 else np.hstack([np.zeros_like(probs), probs])
        return 1.0 - (top2[:, 1] - top2[:, 0])
    if strategy == "entropy":
        p = np.clip(probs, 1e-12, 1.0)
        return -(p * np.log(p)).sum(axis=1) / np.log(max(probs.shape[1], 2))
    raise ValueError(f"strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")


def rank_for_labeling(
    probs: np.ndarray,
    embeddings: np.ndarray | None = None,
    strategy: str = "margin",
    diversity: float = 0.5,
    k: int | None = None,
    seed: int = 0,
) -> list[int]:
    """Indices of the items to label next, most useful first: `k` of them, or all when k is None.

    `probs`: (n_items, n_classes) from the current model. `embeddings`: (n_items, dim) for the diversity term
    (without them, or with diversity=0, the order is plain uncertainty). "random" ignores both and returns a
    seeded shuffle — the baseline. Ties are broken by a seeded shuffle, so the result is deterministic for a seed.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (n_items, n_classes), got shape {probs.shape}")
    n = len(probs)
    k = n if k is None else max(0, min(int(k), n))
    rng = np.random.default_rng(seed)
    shuffle = rng.permutation(n)
    if strategy == "random":
        return [int(i) for i in shuffle[:k]]
    scores = uncertainty(probs, strategy)
    order = shuffle[np.argsort(-scores[shuffle], kind="stable")]  # most uncertain first, ties in seeded order
    if embeddings is None or diversity <= 0 or k < 2:
        return [int(i) for i in order[:k]]
    if len(embeddings) != n:
        raise ValueError(f"embeddings have {len(embeddings)} rows for {n} items")
    head = min(k, DIVERSE_HEAD)
    pool = order[: min(n, POOL_FACTOR * head)]
    picked = _greedy_diverse(scores[pool], _normalized(np.asarray(embeddings, dtype=np.float32)[pool]), diversity, head)
    chosen = [int(pool[i]) for i in picked]
    taken = set(chosen)
    return (chosen + [int(i) for i in order if i not in taken])[:k]  # past the diverse head: uncertainty order


def _greedy_diverse(scores: np.ndarray, unit: np.ndarray, diversity: float, count: int) -> list[int]:
    """Positions into the pool, picked one at a time by score - diversity × max similarity to the picks so far."""
    closest = np.zeros(len(scores))  # max cosine similarity to a pick, floored at 0 (dissimilar is not a bonus)
    available = np.ones(len(scores), dtype=bool)
    picked = []
    for _ in range(count):
        value = np.where(available, scores - diversity * closest, -np.inf)
        best = int(np.argmax(value))  # argmax keeps the first of equals: the pool is already in tie order
        picked.append(best)
        available[best] = False
        closest = np.maximum(closest, unit @ unit[best])
    return picked


def _normalized(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
