"""`slm predict`: labels and class probabilities for texts, from a trained model directory (PyTorch).

Texts are tokenized exactly as in training (same tokenizer, same maximum length), batched by length for
speed, and returned in input order. The torch-free runtime over ONNX comes with the export stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from slmkit import artifacts
from slmkit.data import Example
from slmkit.encoding import make_encoder, uses_token_types
from slmkit.tasks import get_task


@dataclass
class Prediction:
    text: str
    label: str
    score: float  # probability of `label`
    scores: dict[str, float]  # probability of every label


def predict_probs(model_dir: str | Path, texts: list[str], batch_size: int = 64, threads: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Class probabilities (n_texts, n_labels) in input order, and the label names of the columns."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    if threads:
        torch.set_num_threads(threads)
    model_dir = Path(model_dir)
    model, hf_tokenizer = artifacts.load_model(model_dir)
    task = get_task(artifacts.model_task(model_dir))
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    encoder = make_encoder(hf_tokenizer, hf_tokenizer.model_max_length)
    features = task.encode([Example(t, None, i) for i, t in enumerate(texts)], encoder, None)
    collate = partial(task.collate, pad_id=hf_tokenizer.pad_token_id or 0, token_types=uses_token_types(model, hf_tokenizer))
    return task.predict_probs(model, features, collate, batch_size), labels


def predict(model_dir: str | Path, texts: list[str], batch_size: int = 64, threads: int | None = None) -> list[Prediction]:
    """One `Prediction` per text, in input order."""
    if not texts:
        return []
    probs, labels = predict_probs(model_dir, texts, batch_size, threads)
    return [
        Prediction(text, labels[int(row.argmax())], float(row.max()), {label: float(p) for label, p in zip(labels, row)})
        for text, row in zip(texts, probs)
    ]
