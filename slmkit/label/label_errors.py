"""Label-error detection: which given labels are probably wrong, ranked most likely first.

cleanlab's confident learning needs out-of-sample predicted probabilities — each item scored by a model that did
not see its label. We compute them for the user: a linear probe (logistic regression) on frozen encoder
features, cross-validated. Fine-tuning the encoder K times would take K× the training time (minutes to hours on
a CPU); the linear probe on frozen features gives out-of-sample probabilities in seconds for a few thousand
items (minutes for banking77's 10,003 × 77 intents on 2 vCPUs), and the features are the same embeddings active
learning already uses.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from slmkit.errors import UserError

MIN_PER_LABEL = 2  # an item whose label no other item has cannot be scored out of sample
FILTER_BY = "low_self_confidence"  # cleanlab's rule for which items are issues (see rank_label_issues)
PROBE_C = 10.0  # weak regularization: unit-length embeddings have small coordinates (see benchmarks/label_quality.py)


def out_of_sample_probs(features: np.ndarray, labels: Sequence[str], folds: int = 5, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Cross-validated class probabilities (n_items, n_labels) and the label names of the columns (sorted).

    Stratified K-fold, each fold's items scored by a logistic regression fitted on the other folds. A label with
    fewer members than folds is spread over as many folds as it has members (scikit-learn warns, we do not): its
    items are still scored by a model that saw its other members. Folds are capped at the largest label's size."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    features = np.asarray(features, dtype=np.float32)
    names = sorted(set(labels))
    y = _encode(labels, names)
    counts = np.bincount(y, minlength=len(names))
    if len(names) < 2 or counts.min() < MIN_PER_LABEL:
        raise UserError(_too_few_message(labels))
    splits = max(2, min(folds, int(counts.max())))
    probs = np.zeros((len(y), len(names)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        folds_iter = list(StratifiedKFold(splits, shuffle=True, random_state=seed).split(features, y))
    for fit_rows, score_rows in folds_iter:
        probe = LogisticRegression(C=PROBE_C, max_iter=1000)
        probe.fit(features[fit_rows], y[fit_rows])
        probs[np.ix_(score_rows, probe.classes_)] = probe.predict_proba(features[score_rows])  # a label absent from a fold's fit gets 0
    return probs, names


def find_label_errors(
    texts: Sequence[str], labels: Sequence[str], model_dir: str | Path | None = None, folds: int = 5, features: np.ndarray | None = None
) -> list[dict]:
    """Suspected label errors, most likely first: `[{"index", "given", "suggested", "score"}]`.

    `features`: precomputed embeddings of `texts`; by default `slmkit.label.features.embed_texts(texts,
    model_dir)` (the attached model's encoder, or the packaged MiniLM). Then `out_of_sample_probs` and
    `rank_label_issues`."""
    if len(texts) != len(labels):
        raise UserError(f"{len(texts)} texts but {len(labels)} labels: pass one label per text")
    if features is None:
        from slmkit.label.features import embed_texts

        features = embed_texts(list(texts), model_dir)
    elif len(features) != len(texts):
        raise UserError(f"{len(features)} feature rows for {len(texts)} texts: pass one row per text")
    probs, names = out_of_sample_probs(features, labels, folds=folds)
    return rank_label_issues(probs, labels, names)


def rank_label_issues(probs: np.ndarray, labels: Sequence[str], names: list[str], filter_by: str = FILTER_BY) -> list[dict]:
    """cleanlab's `find_label_issues` over out-of-sample probabilities (columns named by `names`): which items
    are issues, ranked by self-confidence. `score` is 1 - the probability of the given label (higher = more
    suspect), `suggested` the most probable label.

    `filter_by="low_self_confidence"`: confident learning estimates how many labels are wrong, and the flagged
    items are that many of the lowest self-confidence — the top of the very ranking the review queue shows, so
    the queue never skips a more suspect item to show a less suspect one. On banking77 with 5% injected noise it
    was also the most precise of cleanlab's rules at a similar recall (benchmarks/results/labeling.md compares
    them; a person's time is spent on every false alarm)."""
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        raise UserError("label-error detection needs cleanlab: run `pip install 'slmkit[label]'`") from None
    y = _encode(labels, names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab warns about small classes; out_of_sample_probs checked the counts
        ranked = find_label_issues(labels=y, pred_probs=probs, filter_by=filter_by, return_indices_ranked_by="self_confidence")
    return [
        {"index": int(i), "given": labels[i], "suggested": names[int(probs[i].argmax())], "score": float(1.0 - probs[i, y[i]])}
        for i in ranked
    ]


def _encode(labels: Sequence[str], names: list[str]) -> np.ndarray:
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[label] for label in labels])


def _too_few_message(labels: Sequence[str]) -> str:
    counts = Counter(labels)
    if len(counts) < 2:
        return f"label-error detection needs at least 2 different labels, got {len(counts)}: label more items first"
    rare = sorted(label for label, n in counts.items() if n < MIN_PER_LABEL)
    shown = ", ".join(repr(label) for label in rare[:5]) + (" ..." if len(rare) > 5 else "")
    return f"label-error detection needs at least {MIN_PER_LABEL} examples of every label; too few for {shown}: label more items of these first"
