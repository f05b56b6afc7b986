"""Inter-annotator agreement and annotator accuracy: pure functions over annotations.

- `cohen_kappa` for one pair of annotators (scikit-learn's), `fleiss_kappa` for many, `krippendorff_alpha` for
  many with missing ratings, `span_agreement` for NER spans (exact and overlap F1);
- `agreement_report` turns a project's `(item_id, annotator, value)` triples into the numbers the labeling app
  shows: overall, per label and per annotator pair;
- `annotator_accuracy` scores each annotator against adjudicated gold.

Values are a label (`"single"`), a list of labels (`"multi"`) or a list of spans (`"spans"`: `(start, end, label)`
tuples or `{"start", "end", "label"}` dicts, character offsets, end exclusive). A number that is undefined (no
overlapping items, a single category used by everyone) is `None`, never NaN, so reports serialize as JSON.
Fleiss' κ and Krippendorff's α are a dozen lines each, written here rather than pulling in statsmodels.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from typing import Hashable, Iterable, Sequence

import numpy as np

KINDS = ("single", "multi", "spans")
SPAN_MODES = ("exact", "overlap")

Span = tuple[int, int, str]


# ------------------------------------------------------------------------------------------ coefficients


def cohen_kappa(a: Sequence, b: Sequence) -> float | None:
    """Cohen's κ between two annotators' labels of the same items (in the same order); None when undefined
    (no items, or both annotators used one and the same label throughout, so chance agreement is 1)."""
    from sklearn.metrics import cohen_kappa_score

    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: {len(a)} labels against {len(b)}: pass the two annotators' labels of the same items")
    if len(a) == 0 or len(set(a) | set(b)) < 2:
        return None
    return _finite(cohen_kappa_score(list(a), list(b)))


def fleiss_kappa(ratings: Sequence[Sequence[str]]) -> float | None:
    """Fleiss' κ (1971) over items, each given as the labels its annotators gave it.

    Items with fewer than 2 ratings are ignored. Fleiss defined κ for a constant number of raters per item; with
    unequal counts each item's observed agreement P_i uses its own count n_i (the share of agreeing ordered
    pairs of its raters) and the category shares p_j pool all ratings — the usual generalization, which equals
    Fleiss' formula exactly when every item has the same number of ratings. None when undefined."""
    return _fleiss(_counts(ratings)[0])


def krippendorff_alpha(units: Sequence[Sequence[str]], level: str = "nominal") -> float | None:
    """Krippendorff's α over units, each given as the values its annotators gave (missing ratings left out, or
    None). Any number of annotators per unit; units with fewer than 2 values are not pairable and are ignored.

    Computed from the coincidence matrix (Krippendorff 2011, "Computing Krippendorff's alpha-reliability"):
    α = 1 - D_o / D_e. `level` is "nominal" (any values: δ = 0 if equal else 1) or "interval" (numbers:
    δ = (c - k)²). None when undefined (nothing pairable, or one value throughout)."""
    if level not in ("nominal", "interval"):
        raise ValueError(f"krippendorff_alpha: level {level!r}: use 'nominal' or 'interval'")
    counts, values = _counts(units, numeric=level == "interval")
    if level == "nominal":
        delta = 1.0 - np.eye(len(values))
    else:
        numbers = np.array(values, dtype=float)
        delta = (numbers[:, None] - numbers[None, :]) ** 2
    return _alpha(counts, delta)


def _counts(units: Sequence[Sequence], numeric: bool = False) -> tuple[np.ndarray, list]:
    """The (units, values) matrix of how many annotators gave each value to each unit, over the pairable units
    (2+ ratings, None left out), and the values of its columns. Both coefficients are sums over this matrix."""
    units = [[v for v in unit if v is not None] for unit in units]
    units = [unit for unit in units if len(unit) >= 2]
    values = sorted({v for unit in units for v in unit}, key=float if numeric else repr)
    index = {v: i for i, v in enumerate(values)}
    counts = np.zeros((len(units), len(values)))
    for row, unit in enumerate(units):
        for v in unit:
            counts[row, index[v]] += 1
    return counts, values


def _fleiss(counts: np.ndarray) -> float | None:
    if counts.shape[0] == 0:
        return None
    raters = counts.sum(axis=1)  # n_i
    observed = ((counts**2).sum(axis=1) - raters) / (raters * (raters - 1))  # P_i
    shares = counts.sum(axis=0) / raters.sum()  # p_j
    expected = float((shares**2).sum())
    return None if expected >= 1.0 else _finite((observed.mean() - expected) / (1.0 - expected))


def _alpha(counts: np.ndarray, delta: np.ndarray) -> float | None:
    if counts.shape[0] == 0 or counts.shape[1] < 2:
        return None
    weights = counts / (counts.sum(axis=1, keepdims=True) - 1)  # each unit's pairs weighted 1/(m_u - 1)
    coincidence = counts.T @ weights - np.diag(weights.sum(axis=0))  # o_ck: pairable value pairs (c, k)
    marginals = counts.sum(axis=0)  # n_c
    n = marginals.sum()
    observed = (coincidence * delta).sum() / n
    expected = (np.outer(marginals, marginals) * delta).sum() / (n * (n - 1))
    return None if expected == 0 else _finite(1.0 - observed / expected)


def _one_vs_rest(counts: np.ndarray, raters: np.ndarray) -> dict[int, dict]:
    """Per column (label) of a (units, labels) count matrix: κ and α of the yes/no decision "is it this label"
    (`raters`: the number of annotators of each unit)."""
    report = {}
    for j in range(counts.shape[1]):
        binary = np.stack([counts[:, j], raters - counts[:, j]], axis=1)  # (units, [yes, no])
        report[j] = {"kappa": _fleiss(binary), "alpha": _alpha(binary, 1.0 - np.eye(2)), "n": int(counts[:, j].sum())}
    return report


def span_agreement(a: list[Span], b: list[Span], mode: str = "exact") -> dict:
    """Span-level agreement of two annotators on one text: precision, recall and F1 of `b` against `a`.

    "exact": a span matches a span with the same start, end and label; "overlap": a span matches when a span
    of the other annotator with the same label shares at least one character. Precision is the share of b's
    spans matched, recall the share of a's, so swapping a and b swaps them and F1 is symmetric. Both empty:
    nothing to compare, all three are None."""
    return _prf(*_span_matches(_spans(a), _spans(b), mode))


# ------------------------------------------------------------------------------------------ project report


def agreement_report(annotations: Iterable[tuple[Hashable, str, object]], kind: str, labels: Sequence[str] | None = None) -> dict:
    """The labeling app's agreement numbers for one project.

    `annotations`: `(item_id, annotator, value)`; a later value of the same annotator on the same item replaces
    the earlier one, a None value (skipped) is left out. `labels`: the project's labels, so that an unused label
    is still reported (with None); by default the labels seen.

    Returns `{"overall", "per_label", "pairs"}`:
    - single: overall holds the mean pairwise Cohen κ (over pairs where it is defined), Fleiss' κ, Krippendorff's
      α and `items_with_overlap` (items with 2+ annotators); per_label the κ and α of the one-vs-rest decision
      "is it this label"; pairs `{"a", "b", "n", "kappa"}` for every pair that shares an item.
    - multi: each (item, label) is a yes/no decision; overall pools all of them, per_label takes one label's.
    - spans: overall and per_label hold exact and overlap span F1 pooled over all pairs and shared items
      (micro-averaged); pairs `{"a", "b", "n", "f1_exact", "f1_overlap"}`.
    """
    _check_kind(kind)
    by_item = _by_item(annotations)
    shared = {item: values for item, values in by_item.items() if len(values) >= 2}
    if kind == "spans":
        return _span_report(shared, labels)
    label_set = sorted(set(labels or []) | {label for values in by_item.values() for v in values.values() for label in _as_labels(v, kind)})
    column = {label: j for j, label in enumerate(label_set)}
    chosen = np.zeros((len(shared), len(label_set)))  # how many of an item's annotators chose each label
    for row, values in enumerate(shared.values()):
        for value in values.values():
            for label in set(_as_labels(value, kind)):
                chosen[row, column[label]] += 1
    pairs = []
    for a, b in _annotator_pairs(shared):
        items = [values for values in shared.values() if a in values and b in values]
        if kind == "single":
            kappa = cohen_kappa([values[a] for values in items], [values[b] for values in items])
        else:  # the pair's yes/no decisions over every (item, label)
            kappa = cohen_kappa(*([label in values[who] for values in items for label in label_set] for who in (a, b)))
        pairs.append({"a": a, "b": b, "n": len(items), "kappa": kappa})
    raters = np.array([len(values) for values in shared.values()], dtype=float)
    per_column = _one_vs_rest(chosen, raters)
    if kind == "single":
        overall_counts = chosen
    else:  # every (item, label) decision is a unit with a yes and a no column
        overall_counts = np.stack([chosen.ravel(), np.repeat(raters, len(label_set)) - chosen.ravel()], axis=1)
    defined = [p["kappa"] for p in pairs if p["kappa"] is not None]
    overall = {
        "cohen_kappa": float(np.mean(defined)) if defined else None,
        "fleiss_kappa": _fleiss(overall_counts),
        "krippendorff_alpha": _alpha(overall_counts, 1.0 - np.eye(overall_counts.shape[1])),
        "items_with_overlap": len(shared),
    }
    return {"overall": overall, "per_label": {label: per_column[column[label]] for label in label_set}, "pairs": pairs}


def annotator_accuracy(annotations: Iterable[tuple[Hashable, str, object]], gold: dict, kind: str) -> dict[str, dict]:
    """Each annotator scored on the items that have a gold value: `{annotator: {..., "n"}}`.

    single: `accuracy`; multi: `accuracy` (exact set match) and `f1` (micro F1 of labels); spans: `f1` (exact)
    and `f1_overlap`. An annotator with no gold items is listed with n = 0 and None scores."""
    _check_kind(kind)
    per_annotator: dict[str, list[tuple[object, object]]] = defaultdict(list)
    for item, values in _by_item(annotations).items():
        for annotator, value in values.items():
            per_annotator.setdefault(annotator, [])
            if item in gold and gold[item] is not None:
                per_annotator[annotator].append((value, gold[item]))
    report = {}
    for annotator, scored in sorted(per_annotator.items()):
        n = len(scored)
        if kind == "single":
            report[annotator] = {"accuracy": _share(sum(v == g for v, g in scored), n), "n": n}
        elif kind == "multi":
            sets = [(set(v), set(g)) for v, g in scored]
            hits, given, true = (sum(len(v & g) for v, g in sets), sum(len(v) for v, _ in sets), sum(len(g) for _, g in sets))
            report[annotator] = {"accuracy": _share(sum(v == g for v, g in sets), n), "f1": _prf(hits, given, hits, true)["f1"], "n": n}
        else:
            exact = _sum_counts(_span_matches(_spans(g), _spans(v), "exact") for v, g in scored)
            overlap = _sum_counts(_span_matches(_spans(g), _spans(v), "overlap") for v, g in scored)
            report[annotator] = {"f1": _prf(*exact)["f1"], "f1_overlap": _prf(*overlap)["f1"], "n": n}
    return report


# ------------------------------------------------------------------------------------------ helpers


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: use one of {', '.join(KINDS)}")


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _share(hits: int, n: int) -> float | None:
    return hits / n if n else None


def _by_item(annotations: Iterable[tuple[Hashable, str, object]]) -> dict[Hashable, dict[str, object]]:
    by_item: dict[Hashable, dict[str, object]] = {}
    for item, annotator, value in annotations:
        if value is not None:
            by_item.setdefault(item, {})[annotator] = value
    return by_item


def _annotator_pairs(shared: dict[Hashable, dict[str, object]]) -> list[tuple[str, str]]:
    pairs = set()
    for values in shared.values():
        pairs.update(itertools.combinations(sorted(values), 2))
    return sorted(pairs)


def _as_labels(value: object, kind: str) -> list[str]:
    return [value] if kind == "single" else list(value)


def _spans(value: Iterable) -> list[Span]:
    """Spans as (start, end, label) tuples, from tuples/lists or the app's {"start", "end", "label"} dicts."""
    return [(int(s["start"]), int(s["end"]), str(s["label"])) if isinstance(s, dict) else (int(s[0]), int(s[1]), str(s[2])) for s in value]


def _span_matches(a: list[Span], b: list[Span], mode: str) -> tuple[int, int, int, int]:
    """(b's spans matched, len(b), a's spans matched, len(a)): the counts behind precision and recall."""
    if mode not in SPAN_MODES:
        raise ValueError(f"span mode {mode!r}: use one of {', '.join(SPAN_MODES)}")
    if mode == "exact":
        common = sum((Counter(a) & Counter(b)).values())  # multiset intersection: a duplicated span matches once
        return common, len(b), common, len(a)

    def matched(x: Span, others: list[Span]) -> bool:
        return any(o[2] == x[2] and o[0] < x[1] and x[0] < o[1] for o in others)

    return sum(matched(s, a) for s in b), len(b), sum(matched(s, b) for s in a), len(a)


def _sum_counts(counts: Iterable[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    return tuple(int(x) for x in np.sum(list(counts) or [(0, 0, 0, 0)], axis=0))


def _prf(matched_b: int, n_b: int, matched_a: int, n_a: int) -> dict:
    precision, recall = _share(matched_b, n_b), _share(matched_a, n_a)
    if precision is None or recall is None:
        f1 = None if n_a + n_b == 0 else 0.0  # one side marked spans, the other none: no agreement at all
    else:
        f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}


def _span_report(shared: dict[Hashable, dict[str, object]], labels: Sequence[str] | None) -> dict:
    spans = {item: {annotator: _spans(v) for annotator, v in values.items()} for item, values in shared.items()}
    types = sorted(set(labels or []) | {s[2] for values in spans.values() for v in values.values() for s in v})
    pooled = {mode: [] for mode in SPAN_MODES}
    per_type = {t: {mode: [] for mode in SPAN_MODES} for t in types}
    pairs = []
    for a, b in _annotator_pairs(shared):
        items = [item for item, values in spans.items() if a in values and b in values]
        row = {"a": a, "b": b, "n": len(items)}
        for mode in SPAN_MODES:
            counts = [_span_matches(spans[i][a], spans[i][b], mode) for i in items]
            pooled[mode] += counts
            row[f"f1_{mode}"] = _prf(*_sum_counts(counts))["f1"]
            for t in types:
                per_type[t][mode] += [_span_matches([s for s in spans[i][a] if s[2] == t], [s for s in spans[i][b] if s[2] == t], mode) for i in items]
        pairs.append(row)
    overall = {f"f1_{mode}": _prf(*_sum_counts(pooled[mode]))["f1"] for mode in SPAN_MODES}
    overall["items_with_overlap"] = len(shared)
    per_label = {t: {f"f1_{mode}": _prf(*_sum_counts(per_type[t][mode]))["f1"] for mode in SPAN_MODES} for t in types}
    return {"overall": overall, "per_label": per_label, "pairs": pairs}
