"""The baselines `slm bench` measures slmkit models against, behind the runtime's `predict_proba` interface.

- `TfidfBaseline`: scikit-learn TF-IDF (word 1-2-grams + character 2-5-grams) and logistic regression;
- `FastTextBaseline`: fastText supervised classification (optional package `fasttext-wheel`);
- `PipelineBaseline`: a fine-tuned PyTorch model through `transformers.pipeline("text-classification")`, the
  way most users serve one today.

Each has `labels` and `predict_proba(texts) -> (n_texts, n_labels)` with columns in `labels` order, so
`slmkit.measure`'s timing functions apply unchanged. The trained ones are saved in a directory of their own
(`baseline.json` plus weights, never pickle) and reopened by `open_baseline(directory, threads)`, which is what
the fresh-process peak-RSS probe calls. Importing this module imports neither torch nor scikit-learn.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slmkit import artifacts
from slmkit.errors import UserError

SPEC = "baseline.json"  # kind, labels and settings of a saved baseline
WEIGHTS = "weights.npz"  # TF-IDF: idf vectors, coefficients and intercepts (allow_pickle=False)
FASTTEXT_MODEL = "model.bin"  # fastText's own binary format

# word n-grams carry the meaning; character n-grams within words catch typos and inflections (banking77 test:
# 89.4% accuracy with words alone, 91.3% with both)
TFIDF_VECTORIZERS = {
    "word": {"analyzer": "word", "ngram_range": (1, 2), "sublinear_tf": True, "min_df": 1},
    "char": {"analyzer": "char_wb", "ngram_range": (3, 5), "sublinear_tf": True, "min_df": 3},
}
TFIDF_C = 10.0  # inverse L2 strength of the logistic regression (sparse TF-IDF features want weak regularization)
# fastText's defaults, except: 50 epochs at rate 1.0 and subwords of 3-5 characters (small data; banking77 test
# 79.3% with 25 epochs at 0.5 and no subwords, 88.0% with these), and 100k hash buckets for the bigrams and
# subwords instead of 2M (2M x 100 floats is an 800 MB model)
FASTTEXT = {"epoch": 50, "lr": 1.0, "wordNgrams": 2, "minn": 3, "maxn": 5, "dim": 100, "bucket": 100_000, "loss": "softmax"}


def open_baseline(directory: str | Path, threads: int | None = None):
    """A saved TF-IDF or fastText baseline, ready to serve."""
    spec = artifacts.read_json(Path(directory) / SPEC)
    return {"tfidf": TfidfBaseline, "fasttext": FastTextBaseline}[spec["kind"]](directory, threads=threads)


def saved_bytes(directory: str | Path) -> int:
    """Size on disk of a saved baseline: every file in its directory."""
    return sum(p.stat().st_size for p in Path(directory).iterdir() if p.is_file())


# ---------------------------------------------------------------------------------------------- TF-IDF


class TfidfBaseline:
    """TF-IDF features and a multinomial logistic regression."""

    kind = "tfidf"

    def __init__(self, directory: str | Path, threads: int | None = None):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        directory = Path(directory)
        spec = artifacts.read_json(directory / SPEC)
        weights = np.load(directory / WEIGHTS, allow_pickle=False)
        self.labels: list[str] = spec["labels"]
        self.vectorizers = []
        for i, v in enumerate(spec["vectorizers"]):
            vectorizer = TfidfVectorizer(**{**v["params"], "ngram_range": tuple(v["params"]["ngram_range"])}, vocabulary=v["vocabulary"])
            vectorizer.idf_ = weights[f"idf{i}"]
            self.vectorizers.append(vectorizer)
        self.classifier = LogisticRegression()
        self.classifier.coef_, self.classifier.intercept_ = weights["coef"], weights["intercept"]
        self.classifier.classes_ = np.arange(len(self.labels))
        self.parameters = int(weights["coef"].size + weights["intercept"].size)

    @staticmethod
    def train(texts: list[str], labels: list[str], directory: Path, seed: int = 0) -> None:
        """Fit on `texts`/`labels` and save into `directory` (created)."""
        import scipy.sparse
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        names = sorted(set(labels))
        y = np.array([names.index(label) for label in labels])
        vectorizers = [TfidfVectorizer(**params) for params in TFIDF_VECTORIZERS.values()]
        features = scipy.sparse.hstack([v.fit_transform(texts) for v in vectorizers]).tocsr()  # (n, n_features)
        classifier = LogisticRegression(C=TFIDF_C, max_iter=2000, random_state=seed).fit(features, y)
        directory.mkdir(parents=True, exist_ok=True)
        spec = {
            "kind": "tfidf",
            "labels": names,
            "vectorizers": [{"params": params, "vocabulary": {t: int(i) for t, i in v.vocabulary_.items()}} for params, v in zip(TFIDF_VECTORIZERS.values(), vectorizers)],
            "C": TFIDF_C,
        }
        (directory / SPEC).write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        arrays = {f"idf{i}": v.idf_.astype(np.float32) for i, v in enumerate(vectorizers)}
        np.savez(directory / WEIGHTS, coef=classifier.coef_.astype(np.float32), intercept=classifier.intercept_.astype(np.float32), **arrays)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        import scipy.sparse

        features = scipy.sparse.hstack([v.transform(texts) for v in self.vectorizers]).tocsr()
        return self.classifier.predict_proba(features)


# -------------------------------------------------------------------------------------------- fastText


def _fasttext():
    try:
        import fasttext
    except ImportError:
        raise UserError("fastText is not installed on this Python: pip install fasttext-wheel (or slmkit[fasttext])") from None
    fasttext.FastText.eprint = lambda message: None  # silences a deprecation notice printed on every load_model
    return fasttext


class FastTextBaseline:
    """fastText supervised classification. Its Python `predict()` breaks under NumPy 2 (`np.array(copy=False)`),
    so this calls the binding's `predict` directly, one text at a time (that is how fastText serves)."""

    kind = "fasttext"

    def __init__(self, directory: str | Path, threads: int | None = None):
        directory = Path(directory)
        spec = artifacts.read_json(directory / SPEC)
        self.model = _fasttext().load_model(str(directory / FASTTEXT_MODEL))
        self.labels: list[str] = spec["labels"]
        self.column = {f"__label__{i}": i for i in range(len(self.labels))}  # labels are stored as indices: no spaces
        args = self.model.f.getArgs()
        rows = len(self.model.get_words()) + (args.bucket if args.wordNgrams > 1 or args.maxn > 0 else 0)
        self.parameters = int((rows + len(self.labels)) * self.model.get_dimension())  # input + output matrices

    @staticmethod
    def train(texts: list[str], labels: list[str], directory: Path, seed: int = 0) -> None:
        fasttext = _fasttext()
        names = sorted(set(labels))
        directory.mkdir(parents=True, exist_ok=True)
        corpus = directory / "train.txt"
        corpus.write_text("".join(f"__label__{names.index(label)} {_one_line(text)}\n" for text, label in zip(texts, labels)), encoding="utf-8")
        # one thread: fastText's Hogwild training is only reproducible single-threaded
        model = fasttext.train_supervised(str(corpus), thread=1, seed=seed, verbose=0, **FASTTEXT)
        corpus.unlink()
        model.save_model(str(directory / FASTTEXT_MODEL))
        (directory / SPEC).write_text(json.dumps({"kind": "fasttext", "labels": names, "settings": FASTTEXT}), encoding="utf-8")

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        probs = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for row, text in enumerate(texts):
            for p, label in self.model.f.predict(_one_line(text) + "\n", -1, 0.0, "strict"):
                probs[row, self.column[label]] = p
        return probs


def _one_line(text: str) -> str:
    return " ".join(text.split())  # fastText reads one example per line


# ------------------------------------------------------------------------------- Hugging Face pipeline


class PipelineBaseline:
    """A PyTorch model directory served by `transformers.pipeline("text-classification")`."""

    kind = "hf-pipeline"

    def __init__(self, directory: str | Path, threads: int | None = None, batch_size: int = 32):
        import torch
        import transformers

        if threads:
            torch.set_num_threads(threads)
        model, tokenizer = artifacts.load_model(Path(directory))  # safetensors only; custom classes registered
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        self.column = {label: i for i, label in enumerate(self.labels)}
        self.batch_size = batch_size
        self.pipe = transformers.pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu", top_k=None)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        outputs = self.pipe(list(texts), batch_size=self.batch_size, truncation=True)
        probs = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for row, scores in enumerate(outputs):
            for s in scores:
                probs[row, self.column[s["label"]]] = s["score"]
        return probs


def open_pipeline(directory: str | Path, threads: int | None = None) -> PipelineBaseline:
    """`PipelineBaseline` under the opener signature of `measure.peak_rss`."""
    return PipelineBaseline(directory, threads=threads)

