"""Known-answer tests for every metric (values worked out by hand)."""

import numpy as np
import pytest

from slmkit import metrics

Y_TRUE = np.array([0, 0, 0, 1, 1, 2])
Y_PRED = np.array([0, 0, 1, 1, 2, 2])


def test_accuracy():
    assert metrics.accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 6)


def test_confusion_matrix_rows_are_true_classes():
    assert metrics.confusion_matrix(Y_TRUE, Y_PRED, 3).tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_precision_recall_f1_per_class():
    p, r, f1, support = metrics.precision_recall_f1(Y_TRUE, Y_PRED, 3)
    assert p.tolist() == pytest.approx([1.0, 0.5, 0.5])
    assert r.tolist() == pytest.approx([2 / 3, 0.5, 1.0])
    assert f1.tolist() == pytest.approx([0.8, 0.5, 2 / 3])
    assert support.tolist() == [3, 2, 1]


def test_macro_f1_and_zero_division():
    assert metrics.macro_f1(Y_TRUE, Y_PRED, 3) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    # class 1 is never predicted and never true: it does not count; class 2 is predicted but never true: F1 0
    assert metrics.macro_f1(np.array([0, 0]), np.array([0, 2]), 3) == pytest.approx((2 / 3 + 0) / 2)


def test_expected_calibration_error_known_answer():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 1, 0, 0])
    # bins (15 equal-width): 0.9 -> bin 13 with accuracy 1/2, confidence 0.9: gap 0.4, weight 1/2;
    # 0.6 (twice) -> bin 8 with accuracy 1/2, confidence 0.6: gap 0.1, weight 1/2
    assert metrics.expected_calibration_error(probs, y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert metrics.expected_calibration_error(perfect, np.array([0, 1])) == 0.0


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    pred = np.where(rng.random(400) < 0.8, y, 1 - y)
    low, high = metrics.bootstrap_ci(metrics.accuracy, y, pred, n_resamples=500, seed=3)
    assert (low, high) == metrics.bootstrap_ci(metrics.accuracy, y, pred, n_resamples=500, seed=3)
    assert low < metrics.accuracy(y, pred) < high
    # the 95% interval of a proportion near 0.8 with n=400 is about ±0.04
    assert 0.06 < high - low < 0.10
    assert metrics.bootstrap_ci(metrics.accuracy, y, y, n_resamples=200) == (1.0, 1.0)


def test_classification_report_is_json_ready():
    probs = np.eye(3)[Y_PRED] * 0.7 + 0.1
    report = metrics.classification_report(Y_TRUE, probs, ["a", "b", "c"], n_resamples=200)
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8), "support": 3}
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert report["accuracy_ci95"][0] <= report["accuracy"] <= report["accuracy_ci95"][1]
