"""Task metrics as pure numpy functions over integer class ids and probability arrays.

`y_true`, `y_pred`: int arrays of shape (n,); `probs`: float array of shape (n, n_classes) whose rows sum to 1.
Undefined ratios (no predictions of a class, no examples of it) count as 0, as scikit-learn's
`zero_division=0` does. Each function has a known-answer test in tests/test_metrics.py.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts; rows are true classes, columns predicted ones."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def precision_recall_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 and support, each of shape (n_classes,)."""
    matrix = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1, support


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int | None = None) -> float:
    """Unweighted mean F1 over the classes present in `y_true` or `y_pred` (scikit-learn's `average='macro'`)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n = n_classes or int(max(y_true.max(), y_pred.max())) + 1
    _, _, f1, support = precision_recall_f1(y_true, y_pred, n)
    present = (support > 0) | (np.bincount(y_pred, minlength=n) > 0)
    return float(f1[present].mean())


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """Confidence-binned |accuracy - confidence|, weighted by bin size (Guo et al. 2017), equal-width bins."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    # bin i holds confidences in (i/n, (i+1)/n]; a confidence of exactly 0 goes to the first bin
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `metric(y_true, y_pred)` over examples resampled with replacement."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    rng = np.random.default_rng(seed)
    n = len(y_true)
    scores = np.array([metric(y_true[idx], y_pred[idx]) for idx in rng.integers(0, n, size=(n_resamples, n))])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(scores, [alpha, 1 - alpha])
    return float(low), float(high)


def classification_report(
    y_true: np.ndarray, probs: np.ndarray, labels: list[str], n_resamples: int = 1000, seed: int = 0
) -> dict:
    """Everything `slm evaluate` reports for a classifier, as a JSON-ready dict."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(probs).argmax(axis=1)
    n = len(labels)
    precision, recall, f1, support = precision_recall_f1(y_true, y_pred, n)
    macro = lambda t, p: macro_f1(t, p, n)  # noqa: E731 - the bootstrap needs a two-argument metric
    return {
        "n_examples": int(len(y_true)),
        "accuracy": accuracy(y_true, y_pred),
        "accuracy_ci95": bootstrap_ci(accuracy, y_true, y_pred, n_resamples, seed=seed),
        "macro_f1": macro_f1(y_true, y_pred, n),
        "macro_f1_ci95": bootstrap_ci(macro, y_true, y_pred, n_resamples, seed=seed),
        "ece": expected_calibration_error(probs, y_true),
        "per_class": {
            label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, label in enumerate(labels)
        },
        "labels": list(labels),
        "confusion_matrix": confusion_matrix(y_true, y_pred, n).tolist(),
    }


def perplexity(nll: np.ndarray, tokens: np.ndarray) -> float:
    """exp(total negative log-likelihood / total predicted tokens) over documents: `nll` (n_docs,) in nats summed
    over each document's tokens, `tokens` (n_docs,) how many tokens each predicted."""
    total = float(np.sum(tokens))
    if total <= 0:
        raise ValueError("perplexity needs at least one predicted token")
    return float(np.exp(np.sum(nll) / total))


def perplexity_interval(
    nll: np.ndarray, tokens: np.ndarray, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of `perplexity` over documents resampled with replacement (a document's
    tokens stay together: they are not independent)."""
    nll, tokens = np.asarray(nll, dtype=np.float64), np.asarray(tokens, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(nll), size=(n_resamples, len(nll)))
    # a resample with no predicted tokens (only possible with empty documents) has no perplexity: skip it
    totals = tokens[idx].sum(axis=1)
    scores = np.exp(nll[idx].sum(axis=1)[totals > 0] / totals[totals > 0])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(scores, [alpha, 1 - alpha])
    return float(low), float(high)


def perplexity_report(nll: np.ndarray, tokens: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> dict:
    """What `slm evaluate` reports for a language model on held-out documents, as a JSON-ready dict."""
    nll, tokens = np.asarray(nll, dtype=np.float64), np.asarray(tokens, dtype=np.float64)
    return {
        "n_examples": int(len(nll)),  # documents
        "n_tokens": int(tokens.sum()),  # predicted tokens
        "perplexity": perplexity(nll, tokens),
        "perplexity_ci95": perplexity_interval(nll, tokens, n_resamples, seed=seed),
        "loss": float(nll.sum() / tokens.sum()),  # mean cross-entropy per token, nats
    }
