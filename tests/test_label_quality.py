"""The labeling app's quality modules: agreement coefficients on known answers, active-learning order, label-error
detection on synthetic features, and the encoder features of a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_rows

from slmkit.errors import UserError
from slmkit.label.agreement import agreement_report, annotator_accuracy, cohen_kappa, fleiss_kappa, krippendorff_alpha, span_agreement

# ------------------------------------------------------------------------------------------ agreement

# Fleiss (1971) as worked on Wikipedia's "Fleiss' kappa" page: 10 items, 14 raters, 5 categories; κ = 0.210
FLEISS_TABLE = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]  # fmt: skip

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", section C: 4 observers, 12 units, missing
# ratings; α = 0.743 nominal, 0.849 interval
N = None
KRIPPENDORFF_DATA = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
]


def test_fleiss_kappa_textbook_example():
    items = [sum(([f"c{j}"] * c for j, c in enumerate(row)), []) for row in FLEISS_TABLE]
    assert fleiss_kappa(items) == pytest.approx(0.20993, abs=1e-5)
    assert fleiss_kappa([["a"], ["b"]]) is None  # nothing with 2+ ratings
    assert fleiss_kappa([["a", "a"], ["a", "a", "a"]]) is None  # one category: chance agreement is 1
    assert fleiss_kappa([["a", "a"], ["b", "b", "b"]]) == pytest.approx(1.0)  # unequal counts, perfect agreement


def test_krippendorff_alpha_worked_example():
    units = list(zip(*KRIPPENDORFF_DATA))
    assert krippendorff_alpha(units) == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(units, level="interval") == pytest.approx(0.849, abs=5e-4)
    # labels as strings give the same nominal α; a unit with one rating is not pairable and changes nothing
    as_text = [[None if v is None else f"v{v}" for v in unit] for unit in units]
    assert krippendorff_alpha(as_text + [["v9"]]) == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha([["a", "a"], ["a", "a"]]) is None
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha(units, level="ratio")


def test_cohen_kappa_matches_sklearn():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    a = rng.choice(list("xyz"), 200)
    b = np.where(rng.random(200) < 0.7, a, rng.choice(list("xyz"), 200))
    assert cohen_kappa(list(a), list(b)) == pytest.approx(cohen_kappa_score(a, b))
    assert cohen_kappa(["x", "x"], ["x", "x"]) is None and cohen_kappa([], []) is None


def test_span_agreement_exact_and_overlap():
    a = [(0, 5, "PER"), (10, 20, "ORG"), (30, 35, "LOC")]
    b = [(0, 5, "PER"), (12, 20, "ORG"), (40, 45, "LOC"), (50, 52, "PER")]
    exact = span_agreement(a, b, "exact")
    assert (exact["precision"], exact["recall"]) == (pytest.approx(1 / 4), pytest.approx(1 / 3))
    assert exact["f1"] == pytest.approx(2 * (1 / 4) * (1 / 3) / (1 / 4 + 1 / 3))
    overlap = span_agreement(a, b, "overlap")
    assert (overlap["precision"], overlap["recall"]) == (pytest.approx(2 / 4), pytest.approx(2 / 3))
    assert span_agreement(b, a, "overlap")["f1"] == pytest.approx(overlap["f1"])  # symmetric
    assert span_agreement([(0, 5, "PER")], [(0, 5, "ORG")], "overlap")["f1"] == 0.0  # same range, other type
    assert span_agreement([], [], "exact") == {"precision": None, "recall": None, "f1": None}
    assert span_agreement([(0, 1, "X")], [], "exact")["f1"] == 0.0


def test_agreement_report_single():
    labels = {1: "pos", 2: "neg", 3: "pos", 4: "neu", 5: "neg", 6: "pos"}
    annotations = [(i, "ann", v) for i, v in labels.items()]
    annotations += [(i, "bob", v if i != 4 else "pos") for i, v in labels.items()]
    annotations += [(1, "cat", "pos"), (2, "cat", "neg"), (7, "cat", "neu")]  # item 7 has one annotator
    report = agreement_report(annotations, "single", labels=["pos", "neg", "neu", "unused"])
    overall = report["overall"]
    assert overall["items_with_overlap"] == 6
    pair = {(p["a"], p["b"]): p for p in report["pairs"]}
    assert pair[("ann", "bob")]["n"] == 6
    assert pair[("ann", "bob")]["kappa"] == pytest.approx(cohen_kappa([labels[i] for i in range(1, 7)], ["pos", "neg", "pos", "pos", "neg", "pos"]))
    assert pair[("ann", "cat")]["kappa"] == pytest.approx(1.0)
    assert overall["cohen_kappa"] == pytest.approx(np.mean([p["kappa"] for p in report["pairs"] if p["kappa"] is not None]))
    units = [[labels[i], labels[i] if i != 4 else "pos"] + (["pos", "neg"][i - 1 : i] if i <= 2 else []) for i in range(1, 7)]
    assert overall["fleiss_kappa"] == pytest.approx(fleiss_kappa(units))
    assert overall["krippendorff_alpha"] == pytest.approx(krippendorff_alpha(units))
    assert report["per_label"]["neg"]["kappa"] == pytest.approx(1.0)  # everyone agrees on what is "neg"
    assert report["per_label"]["unused"] == {"kappa": None, "alpha": None, "n": 0}
    json.dumps(report, allow_nan=False)  # None, never NaN
    empty = agreement_report([(1, "ann", "pos")], "single")
    assert empty["overall"] == {"cohen_kappa": None, "fleiss_kappa": None, "krippendorff_alpha": None, "items_with_overlap": 0}


def test_agreement_report_multi_and_spans():
    multi = [(1, "a", ["x", "y"]), (1, "b", ["x"]), (2, "a", []), (2, "b", []), (3, "a", ["y"]), (3, "b", ["y"])]
    report = agreement_report(multi, "multi")
    # per (item, label) yes/no decisions: x: (1,1) (0,0) (0,0); y: (1,0) (0,0) (1,1)
    assert report["per_label"]["x"]["kappa"] == pytest.approx(1.0)
    assert report["pairs"][0]["kappa"] == pytest.approx(cohen_kappa([1, 0, 0, 1, 0, 1], [1, 0, 0, 0, 0, 1]))
    decisions = [[1, 1], [0, 0], [0, 0], [1, 0], [0, 0], [1, 1]]
    assert report["overall"]["fleiss_kappa"] == pytest.approx(fleiss_kappa(decisions))
    assert report["overall"]["krippendorff_alpha"] == pytest.approx(krippendorff_alpha(decisions))
    assert report["per_label"]["y"]["alpha"] == pytest.approx(krippendorff_alpha([[1, 0], [0, 0], [1, 1]]))
    spans = [
        ("t1", "a", [{"start": 0, "end": 4, "label": "PER"}, {"start": 9, "end": 12, "label": "LOC"}]),
        ("t1", "b", [{"start": 0, "end": 4, "label": "PER"}, {"start": 8, "end": 12, "label": "LOC"}]),
        ("t2", "a", [(3, 6, "PER")]),
        ("t2", "b", []),
    ]
    report = agreement_report(spans, "spans")
    assert report["overall"]["f1_exact"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))  # P 1/2, R 1/3
    assert report["overall"]["f1_overlap"] == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert report["per_label"]["LOC"] == {"f1_exact": 0.0, "f1_overlap": 1.0}
    assert report["pairs"] == [{"a": "a", "b": "b", "n": 2, "f1_exact": report["overall"]["f1_exact"], "f1_overlap": report["overall"]["f1_overlap"]}]


def test_annotator_accuracy():
    annotations = [(1, "a", "x"), (2, "a", "y"), (3, "a", "x"), (1, "b", "x"), (4, "c", "y")]
    gold = {1: "x", 2: "x", 3: "x"}
    assert annotator_accuracy(annotations, gold, "single") == {
        "a": {"accuracy": pytest.approx(2 / 3), "n": 3},
        "b": {"accuracy": 1.0, "n": 1},
        "c": {"accuracy": None, "n": 0},
    }
    multi = annotator_accuracy([(1, "a", ["x", "y"]), (2, "a", ["y"])], {1: ["x"], 2: ["y"]}, "multi")["a"]
    assert multi == {"accuracy": 0.5, "f1": pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1)), "n": 2}
    spans = annotator_accuracy([(1, "a", [(0, 3, "PER")])], {1: [(0, 4, "PER")]}, "spans")["a"]
    assert spans == {"f1": 0.0, "f1_overlap": 1.0, "n": 1}
    with pytest.raises(ValueError, match="kind"):
        annotator_accuracy(annotations, gold, "ner")


# ------------------------------------------------------------------------------------------ active learning

from slmkit.label.active import rank_for_labeling  # noqa: E402


def test_margin_and_entropy_order():
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.5, 0.5, 0.0], [0.34, 0.33, 0.33], [0.7, 0.2, 0.1]])
    # margins (top - second): 0.85, 0.05, 0.0, 0.01, 0.5
    assert rank_for_labeling(probs, strategy="margin") == [2, 3, 1, 4, 0]
    # entropy (nats): 0.39, 1.08, 0.69, 1.10, 0.80 — unlike the margin, [.7 .2 .1] is less sure than [.5 .5 0]
    assert rank_for_labeling(probs, strategy="entropy") == [3, 1, 4, 2, 0]
    assert rank_for_labeling(probs, strategy="margin", k=2) == [2, 3]
    with pytest.raises(ValueError, match="strategy"):
        rank_for_labeling(probs, strategy="least")


def test_diversity_separates_near_duplicates():
    rng = np.random.default_rng(1)
    # items 0-2: near-copies of one sentence, the most uncertain; 3-5: distinct, a little surer; 6: sure
    embeddings = np.eye(8)[[0, 0, 0, 1, 2, 3, 4]] + 0.01 * rng.normal(size=(7, 8))
    probs = np.array([[0.5, 0.5], [0.51, 0.49], [0.5, 0.5], [0.6, 0.4], [0.62, 0.38], [0.65, 0.35], [0.95, 0.05]])
    plain = rank_for_labeling(probs, embeddings, diversity=0.0)
    assert sorted(plain[:3]) == [0, 1, 2]  # without the diversity term the copies cluster at the top
    diverse = rank_for_labeling(probs, embeddings, diversity=0.5)
    assert diverse[0] in (0, 2) and diverse[1:4] == [3, 4, 5]  # one copy, then the distinct items
    assert sorted(diverse) == list(range(7))
    assert diverse[:3] == rank_for_labeling(probs, embeddings, diversity=0.5, k=3)
    assert rank_for_labeling(probs, embeddings, diversity=0.5, k=2)[1] == 3


def test_ranking_is_deterministic_for_a_seed():
    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=50)
    embeddings = np.random.default_rng(1).normal(size=(50, 8))
    assert rank_for_labeling(probs, strategy="random", seed=3) == rank_for_labeling(probs, strategy="random", seed=3)
    assert rank_for_labeling(probs, strategy="random", seed=3) != rank_for_labeling(probs, strategy="random", seed=4)
    assert sorted(rank_for_labeling(probs, strategy="random", seed=3)) == list(range(50))
    ties = np.full((6, 2), 0.5)  # all equally uncertain: the seed decides, reproducibly
    assert rank_for_labeling(ties, seed=5) == rank_for_labeling(ties, seed=5)
    assert rank_for_labeling(probs, embeddings, k=10, seed=2) == rank_for_labeling(probs, embeddings, k=10, seed=2)


# ------------------------------------------------------------------------------------------ features

from slmkit.label.features import embed_texts, model_probs  # noqa: E402

TEXTS = ["my parcel is late", "the courier lost my parcel again", "refund the charge please", "password locked", "hello"]


def test_embed_texts_tiny_encoder(tiny_base, trained_tiny):
    vectors = embed_texts(TEXTS, tiny_base, batch_size=2)
    assert vectors.shape == (5, 32) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # batching by length and padding do not change a text's vector; input order is kept
    alone = np.vstack([embed_texts([t], tiny_base) for t in TEXTS])
    assert np.allclose(vectors, alone, atol=1e-5)
    fine_tuned = embed_texts(TEXTS, trained_tiny)  # an slm train output: its encoder, without the head
    assert fine_tuned.shape == (5, 32) and not np.allclose(fine_tuned, vectors)


def test_embed_texts_refuses_bad_dirs(tmp_path):
    with pytest.raises(UserError, match="not found"):
        embed_texts(["x"], tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(UserError, match="pickle"):
        embed_texts(["x"], tmp_path)


def test_model_probs_torch_and_onnx(trained_tiny, exported_tiny):
    probs, labels = model_probs(TEXTS, trained_tiny)
    assert labels == ["billing", "delivery", "login"] and probs.shape == (5, 3)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    onnx_probs, onnx_labels = model_probs(TEXTS, exported_tiny)
    assert onnx_labels == labels and np.allclose(onnx_probs, probs, atol=1e-4)
    # an exported model is served without torch: check in a fresh interpreter
    code = "import sys; from slmkit.label.features import model_probs; model_probs(['hello'], sys.argv[1]); print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code, str(exported_tiny)], capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_embed_texts_default_minilm_knows_paraphrases():
    a, b, c = embed_texts(["where is my parcel?", "my package has not arrived yet", "I forgot my password"])
    assert a.shape == (384,)
    assert a @ b > a @ c + 0.1  # the packaged sentence encoder puts the paraphrase closer


# ------------------------------------------------------------------------------------------ label errors

from slmkit.label.label_errors import find_label_errors, out_of_sample_probs  # noqa: E402


def clustered(n_per_label: int, labels: list[str], seed: int) -> tuple[np.ndarray, list[str]]:
    """Unit vectors in one tight cluster per label: a linear probe separates them perfectly."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(labels), 16))
    x = np.vstack([c + 0.3 * rng.normal(size=(n_per_label, 16)) for c in centers])
    return x / np.linalg.norm(x, axis=1, keepdims=True), [label for label in labels for _ in range(n_per_label)]


def test_out_of_sample_probs_are_out_of_sample():
    rng = np.random.default_rng(0)
    noise, labels = rng.normal(size=(120, 32)), list(rng.choice(["a", "b", "c"], 120))
    probs, names = out_of_sample_probs(noise, labels, folds=4)
    assert names == ["a", "b", "c"] and probs.shape == (120, 3) and np.allclose(probs.sum(axis=1), 1)
    given = probs[np.arange(120), [names.index(label) for label in labels]]
    assert given.mean() < 0.45  # random labels: a model that had seen them would be near 1, out of sample ~1/3
    # a label with fewer members than folds still gets its column, and its items are scored
    x, y = clustered(10, ["a", "b"], seed=1)
    x, y = np.vstack([x, x[:2] + 5.0]), y + ["rare", "rare"]
    probs, names = out_of_sample_probs(x, y, folds=5)
    assert names == ["a", "b", "rare"] and np.allclose(probs.sum(axis=1), 1)
    with pytest.raises(UserError, match="'solo'"):
        out_of_sample_probs(np.vstack([x, x[:1]]), y + ["solo"])


def test_find_label_errors_finds_flipped_labels():
    x, y = clustered(40, ["billing", "delivery", "login"], seed=2)
    flipped = [3, 50, 97, 110]
    noisy = list(y)
    for i in flipped:
        noisy[i] = "login" if y[i] != "login" else "billing"
    issues = find_label_errors([f"text {i}" for i in range(len(y))], noisy, features=x)
    assert sorted(issue["index"] for issue in issues[: len(flipped)]) == flipped
    assert len(issues) <= len(flipped) + 2  # clean clusters: (almost) nothing else flagged
    top = issues[0]
    assert top["given"] == noisy[top["index"]] and top["suggested"] == y[top["index"]]
    assert [i["score"] for i in issues] == sorted((i["score"] for i in issues), reverse=True)
    with pytest.raises(UserError, match="one label per text"):
        find_label_errors(["a", "b"], ["x"], features=x[:2])
    with pytest.raises(UserError, match="at least 2 different labels"):
        find_label_errors(["a", "b"], ["x", "x"], features=x[:2])


def test_find_label_errors_embeds_with_a_model_dir(tiny_base):
    texts, labels = map(list, zip(*synthetic_rows(30, seed=4)))
    issues = find_label_errors(texts, labels, model_dir=tiny_base, folds=3)
    assert all(set(i) == {"index", "given", "suggested", "score"} and labels[i["index"]] == i["given"] for i in issues)
