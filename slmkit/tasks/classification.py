"""Text classification: a sequence-classification head over the encoder's pooled [CLS] output.

Features are token ids (no padding) plus the class id; `collate` pads a batch to its longest member, so
length-bucketed batches carry little padding. The model is transformers' `AutoModelForSequenceClassification`,
which keeps the artifact loadable by `transformers.pipeline("text-classification")`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from slmkit import losses, metrics
from slmkit.base import with_head
from slmkit.data import Example, check_labels, read_examples, read_texts, stratified_split
from slmkit.encoding import derive_max_length, iterate, pad_batch, sorted_order


class ClassificationTask:
    name = "classification"
    metric_names = ("accuracy", "macro_f1")
    default_lr = 1e-4  # fine-tuning a pretrained encoder
    auto_class = "AutoModelForSequenceClassification"
    outputs = ("logits",)  # the model outputs an export keeps
    per_token = False  # one row of logits per text, not per token
    packs = True  # its loss reads only the head's output and the labels: training batches can be packed (slmkit.packing)

    # ------------------------------------------------------------------------------------------ data
    def read(self, path: Path, d: Any) -> list[Example]:
        """Labeled texts from a .csv/.tsv/.jsonl file (`d` is the stage's DataConfig)."""
        return read_examples(path, d.text_col, d.label_col, d.encoding, d.drop_empty)

    def read_unlabeled(self, path: Path, d: Any) -> list[Example]:
        """Texts without labels (distillation's unlabeled texts): a .txt file, one per line, or a text column."""
        return [Example(t, None, i) for i, t in enumerate(read_texts(path, d.text_col, d.encoding), start=1)]

    def split(self, examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
        """(train, eval): a seeded split that keeps every class's share."""
        return stratified_split(examples, fraction, seed)

    def labels(self, train_ex: list[Example], train_path: Path, eval_ex: list[Example], eval_path: Path) -> list[str]:
        """The sorted class names; a class seen only in eval, or a single class, is an error."""
        return check_labels(train_ex, train_path, eval_ex, eval_path)

    def default_max_length(self, hf_tokenizer: Any, examples: list[Example]) -> int:
        return derive_max_length(hf_tokenizer, [e.text for e in examples])

    # ------------------------------------------------------------------------------------------ head
    def build_model(self, base: Any, labels: list[str], dropout: float | None) -> Any:
        """The base encoder with a fresh classification head over `labels`."""
        return with_head(base, self.auto_class, labels, dropout)

    # -------------------------------------------------------------------------------------- features
    def encode(self, examples: list[Example], encoder: Any, label2id: dict[str, int] | None) -> list[dict]:
        """Token ids per example (truncated, unpadded) and the class id when labels are known."""
        encodings = encoder.encode_batch([e.text for e in examples])
        return [
            {"input_ids": enc.ids, "label": label2id[e.label] if label2id is not None and e.label is not None else -1}
            for e, enc in zip(examples, encodings)
        ]

    def collate(self, features: list[dict], pad_id: int, token_types: bool) -> dict:
        """Pad to the batch's longest sequence: input_ids/attention_mask (batch, seq), labels (batch,)."""
        import torch

        return {**pad_batch(features, pad_id, token_types), "labels": torch.tensor([f["label"] for f in features])}

    # ------------------------------------------------------------------------------------------ loss
    def loss(self, model: Any, batch: dict, class_weights: Any = None, label_smoothing: float = 0.0) -> Any:
        """Cross-entropy of the head's logits (batch, n_classes) against the labels."""
        import torch.nn.functional as F

        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        return F.cross_entropy(logits.float(), batch["labels"], weight=class_weights, label_smoothing=label_smoothing)

    # ---------------------------------------------------------------------------------- distillation
    # `out` is the student's output, `batch` the task's batch plus the teacher's outputs (`teacher_logits`,
    # (batch, classes)); unlabeled and augmented rows carry label -1, which the cross-entropy skips
    def kd_loss(self, out: Any, batch: dict, temperature: float) -> Any:
        return losses.kd_loss(out.logits, batch["teacher_logits"], temperature)

    def hard_loss(self, out: Any, batch: dict) -> Any:
        return losses.ce_loss(out.logits, batch["labels"])

    def logit_mse(self, out: Any, batch: dict) -> Any:
        return losses.logit_mse(out.logits, batch["teacher_logits"])

    def agreement(self, examples: list[Example], features: list[dict], outputs: np.ndarray, teacher_outputs: np.ndarray, labels: list[str]) -> float:
        """The fraction of texts where the student's class is the teacher's."""
        return float(np.mean(outputs.argmax(axis=1) == teacher_outputs.argmax(axis=1)))

    # ---------------------------------------------------------------------------------- predictions
    def decode(self, logits: np.ndarray) -> np.ndarray:
        """Class probabilities (n, n_classes) from logits, by a numerically stable softmax."""
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict_logits(self, model: Any, features: list[dict], collate: Callable[[list[dict]], dict], batch_size: int) -> np.ndarray:
        """Logits (n, n_classes) of a PyTorch model, in feature order (batched by length)."""
        import torch

        batches = sorted_order(np.array([len(f["input_ids"]) for f in features]), batch_size)
        rows = []
        model.eval()
        with torch.inference_mode():
            for batch in iterate(features, batches, collate):
                inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                rows.append(model(**inputs).logits.float().cpu().numpy())
        logits = np.empty((len(features), rows[0].shape[1]), dtype=np.float32)
        logits[np.concatenate(batches)] = np.concatenate(rows)
        return logits

    def predict_probs(self, model: Any, features: list[dict], collate: Callable[[list[dict]], dict], batch_size: int) -> np.ndarray:
        """Class probabilities (n, n_classes) of a PyTorch model, in feature order."""
        return self.decode(self.predict_logits(model, features, collate, batch_size))

    def score(self, examples: list[Example], features: list[dict], logits: np.ndarray, labels: list[str], full: bool, seed: int = 0, n_resamples: int = 1000) -> dict:
        """Quick per-epoch metrics, or (`full`) the report with intervals, of `logits` against the features' class ids."""
        y_true, probs = np.array([f["label"] for f in features]), self.decode(logits)
        return self.metrics(y_true, probs, labels, n_resamples, seed) if full else self.quick_metrics(y_true, probs)

    def metrics(self, y_true: np.ndarray, probs: np.ndarray, labels: list[str], n_resamples: int = 1000, seed: int = 0) -> dict:
        return metrics.classification_report(y_true, probs, labels, n_resamples=n_resamples, seed=seed)

    def quick_metrics(self, y_true: np.ndarray, probs: np.ndarray) -> dict:
        """The per-epoch numbers (no bootstrap): accuracy and macro-F1."""
        pred = probs.argmax(axis=1)
        return {"accuracy": metrics.accuracy(y_true, pred), "macro_f1": metrics.macro_f1(y_true, pred, probs.shape[1])}
