"""`slm predict`: labels and class probabilities for texts, from a trained model directory (PyTorch).

Texts are tokenized exactly as in training (same tokenizer, same maximum length), batched by length for
speed, and returned in input order. A directory made by `slm export` or `slm quantize` is served by the
torch-free runtime (`slmkit.runtime.Predictor`) instead.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from slmkit import artifacts
from slmkit.data import Example
from slmkit.encoding import make_encoder, uses_token_types
from slmkit.lineage import recorded_task
from slmkit.runtime import Prediction, Predictor
from slmkit.tasks import get_task


class TorchPredictor:
    """A PyTorch model directory behind the same interface as the runtime's `Predictor`."""

    def __init__(self, model_dir: str | Path, threads: int | None = None, batch_size: int = 64):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.directory = Path(model_dir)
        self.model, hf_tokenizer = artifacts.load_model(self.directory)
        self.task = get_task(artifacts.model_task(self.directory))
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.encoder = make_encoder(hf_tokenizer, hf_tokenizer.model_max_length)
        self.collate = partial(self.task.collate, pad_id=hf_tokenizer.pad_token_id or 0, token_types=uses_token_types(self.model, hf_tokenizer))
        self.batch_size = batch_size

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        features = self.task.encode([Example(t, None, i) for i, t in enumerate(texts)], self.encoder, None)
        return self.task.predict_probs(self.model, features, self.collate, self.batch_size)


class TorchTaskModel:
    """A PyTorch model directory of any task: the task's features in, its raw outputs out (what `task.score`
    and the task's decoders read). `slmkit.runtime.TaskSession` is the same for an exported directory."""

    def __init__(self, model_dir: str | Path, threads: int | None = None, batch_size: int = 64, data=None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.directory = Path(model_dir)
        self.model, hf_tokenizer = artifacts.load_model(self.directory)
        self.task = recorded_task(self.directory, data)
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.encoder = make_encoder(hf_tokenizer, hf_tokenizer.model_max_length)
        self.collate = partial(self.task.collate, pad_id=hf_tokenizer.pad_token_id or 0, token_types=uses_token_types(self.model, hf_tokenizer))
        self.batch_size = batch_size

    def run(self, examples: list) -> tuple[list[dict], object]:
        """The task's features of `examples` and the model's outputs over them."""
        features = self.task.encode(examples, self.encoder, None)
        return features, self.outputs(features)

    def outputs(self, features: list[dict]) -> list:
        """Per feature, its unpadded outputs, as `TaskSession.outputs` gives them for an exported model."""
        return self.task.predict_logits(self.model, features, self.collate, self.batch_size)


def open_task_model(model_dir: str | Path, threads: int | None = None, batch_size: int = 64, data=None):
    """`slmkit.runtime.TaskSession` for an exported (ONNX) directory, `TorchTaskModel` for a trained one."""
    if (Path(model_dir) / artifacts.ONNX_MODEL).is_file():
        from slmkit.runtime import TaskSession

        return TaskSession(model_dir, threads=threads, batch_size=batch_size, data=data)
    return TorchTaskModel(model_dir, threads=threads, batch_size=batch_size, data=data)


def open_predictor(model_dir: str | Path, threads: int | None = None, batch_size: int = 64) -> Predictor | TorchPredictor:
    """The runtime `Predictor` for an exported (ONNX) directory, a `TorchPredictor` for a trained one."""
    if (Path(model_dir) / artifacts.ONNX_MODEL).is_file():
        return Predictor(model_dir, threads=threads, batch_size=batch_size)
    return TorchPredictor(model_dir, threads=threads, batch_size=batch_size)


def predict_probs(model_dir: str | Path, texts: list[str], batch_size: int = 64, threads: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Class probabilities (n_texts, n_labels) in input order, and the label names of the columns."""
    predictor = open_predictor(model_dir, threads, batch_size)
    return predictor.predict_proba(texts), predictor.labels


def predict(model_dir: str | Path, texts: list[str], batch_size: int = 64, threads: int | None = None) -> list[Prediction]:
    """One `Prediction` per text, in input order."""
    if not texts:
        return []
    probs, labels = predict_probs(model_dir, texts, batch_size, threads)
    return [
        Prediction(text, labels[int(row.argmax())], float(row.max()), {label: float(p) for label, p in zip(labels, row)})
        for text, row in zip(texts, probs)
    ]
