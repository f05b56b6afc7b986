"""Extractive question answering: a start/end span head over every token of a question + context window.

Examples come from SQuAD v1.1 JSON or MRQA JSONL (`slmkit.qa`); a context longer than the window is read in
overlapping windows (`stride` tokens shared), each a feature of its own. Training targets are the answer's
first and last token in each window (the first token, [CLS], when the window does not hold the answer); at
evaluation the best span over all windows of a question becomes a character span of the original context and
is scored with SQuAD's exact match and F1. The model is transformers' `AutoModelForQuestionAnswering` (its
question-answering pipeline is gone in transformers 5; `QAPredictor` answers from a model directory).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from slmkit import losses, qa
from slmkit.base import with_head
from slmkit.encoding import iterate, make_encoder, pad_batch, sorted_order
from slmkit.qa import QAExample


class QATask:
    name = "qa"
    metric_names = ("f1", "exact_match")
    default_lr = 1e-4  # fine-tuning a pretrained encoder
    auto_class = "AutoModelForQuestionAnswering"
    outputs = ("start_logits", "end_logits")  # the model outputs an export keeps
    per_token = True  # a start and an end logit per token of each window
    # random training batches whatever train.bucket says: the windows of one paragraph's questions share a length,
    # so length-bucketed batches fill with one paragraph (5 SQuAD subsets of 1,024 questions: F1 39.31 random,
    # 38.27 bucketed; benchmarks/results/qa-gpu.md)
    buckets = False

    def __init__(self, stride: int = 128):
        self.stride = stride  # context tokens shared by neighbouring windows; 0: contexts must fit one window

    # ------------------------------------------------------------------------------------------ data
    def read(self, path: Path, d: Any) -> list[QAExample]:
        from slmkit.progress import stderr

        return qa.read_qa(path, strict=d.strict, encoding=d.encoding, warn=lambda line: stderr.print(line, markup=False, highlight=False, soft_wrap=True))

    def read_unlabeled(self, path: Path, d: Any) -> list[QAExample]:
        """Questions without answers (distillation's unlabeled questions): JSONL rows {"question", "context"},
        the input of `slm predict` for a QA model."""
        return [QAExample(qid, question, context, [], i, f"{path} question {i}", str(path)) for i, (qid, question, context) in enumerate(qa.read_pairs(path, d.encoding), start=1)]

    def split(self, examples: list[QAExample], fraction: float, seed: int) -> tuple[list[QAExample], list[QAExample]]:
        """Whole paragraphs held out, so that no context is seen in training and evaluation both."""
        return qa.split_by_context(examples, fraction, seed)

    def labels(self, train_ex: list, train_path: Path, eval_ex: list, eval_path: Path) -> list[str]:
        return []  # spans, not classes

    def default_max_length(self, hf_tokenizer: Any, examples: list[QAExample]) -> int:
        """384 tokens (or the base model's position limit, if lower), less when every training pair is shorter."""
        cap = min(qa.DEFAULT_MAX_LENGTH, _position_limit(hf_tokenizer))
        paired = qa.pair_tokenizer(make_encoder(hf_tokenizer, cap))
        longest = max(len(enc.ids) for enc in paired.encode_batch([(e.question, e.context) for e in examples]))
        return int(min(cap, max(32, -(-longest // 8) * 8)))

    # ------------------------------------------------------------------------------------------ head
    def build_model(self, base: Any, labels: list[str], dropout: float | None) -> Any:
        """The base encoder with a fresh span head: a linear layer giving a start and an end logit per token,
        named in config.json (transformers 5 leaves the default LABEL_0/LABEL_1 out)."""
        return with_head(base, self.auto_class, ["start", "end"], dropout)

    # -------------------------------------------------------------------------------------- features
    def encode(self, examples: list[QAExample], encoder: Any, label2id: dict | None) -> list[dict]:
        """One feature per window (see `slmkit.qa.encode_windows`); the window size is the encoder's truncation."""
        max_length = encoder.truncation["max_length"]
        return qa.encode_windows(examples, encoder, max_length, self.stride, with_answers=True)

    def collate(self, features: list[dict], pad_id: int, token_types: bool) -> dict:
        """Pad to the batch's longest window: input_ids/attention_mask/token_type_ids (batch, seq; 0 for the
        question, 1 for the context: BERT's segments); start/end_positions (batch,): −1 (UNLABELED) for
        a window of a question without answers, or of features encoded without them."""
        import torch

        batch = pad_batch(features, pad_id, token_types)
        batch["start_positions"] = torch.tensor([f.get("start_position", losses.UNLABELED) for f in features])
        batch["end_positions"] = torch.tensor([f.get("end_position", losses.UNLABELED) for f in features])
        return batch

    # ------------------------------------------------------------------------------------------ loss
    def loss(self, model: Any, batch: dict, class_weights: Any = None, label_smoothing: float = 0.0) -> Any:
        """Mean of the start and end cross-entropies over each window's tokens (padding masked out)."""
        return self.hard_loss(model(**_model_inputs(batch)), batch, label_smoothing)

    # ---------------------------------------------------------------------------------- distillation
    # `out` is the student's output, `batch` the task's batch plus the teacher's `teacher_start_logits` and
    # `teacher_end_logits` (batch, seq), zero at padding. Each window is one distribution over its tokens for
    # the start and one for the end (padding masked out of both), as in the hard loss.
    def hard_loss(self, out: Any, batch: dict, label_smoothing: float = 0.0) -> Any:
        """Mean of the start and end cross-entropies over each window's tokens (padding masked out), over the
        windows of answered questions; 0 for a batch of unlabeled windows only (still part of the graph)."""
        import torch.nn.functional as F

        labeled = batch["start_positions"] != losses.UNLABELED  # (batch,)
        if not bool(labeled.any()):
            return out.start_logits.float().sum() * 0.0
        pad = batch["attention_mask"][labeled] == 0
        start = out.start_logits[labeled].float().masked_fill(pad, -1e4)  # (labeled, seq)
        end = out.end_logits[labeled].float().masked_fill(pad, -1e4)
        smoothing = {"label_smoothing": label_smoothing}
        return (F.cross_entropy(start, batch["start_positions"][labeled], **smoothing) + F.cross_entropy(end, batch["end_positions"][labeled], **smoothing)) / 2

    def kd_loss(self, out: Any, batch: dict, temperature: float) -> Any:
        """Mean over start and end of KL(teacher/T || student/T)·T², each averaged over the windows."""
        pad = batch["attention_mask"] == 0
        terms = [
            losses.kd_loss(getattr(out, name).float().masked_fill(pad, -1e4), batch[f"teacher_{name}"].float().masked_fill(pad, -1e4), temperature)
            for name in self.outputs
        ]
        return sum(terms) / len(terms)

    def logit_mse(self, out: Any, batch: dict) -> Any:
        """Mean over start and end of the squared logit differences on real tokens."""
        real = batch["attention_mask"].float()  # (batch, seq)
        terms = [((getattr(out, name).float() - batch[f"teacher_{name}"].float()).pow(2) * real).sum() / real.sum() for name in self.outputs]
        return sum(terms) / len(terms)

    def agreement(self, examples: list[QAExample], features: list[dict], outputs: list, teacher_outputs: list, labels: list[str]) -> float:
        """The fraction of questions whose best answer (its character span) is the teacher's."""
        def spans(found: list[list[qa.Answer]]) -> list:
            return [(a[0].start, a[0].end) if a else None for a in found]

        student, teacher = spans(self.best_answers(examples, features, outputs)), spans(self.best_answers(examples, features, teacher_outputs))
        return float(np.mean([s == t for s, t in zip(student, teacher)])) if student else 0.0

    # ---------------------------------------------------------------------------------- predictions
    def predict_logits(self, model: Any, features: list[dict], collate: Callable[[list[dict]], dict], batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(start_logits, end_logits) per feature, each of shape (window length,), in feature order."""
        import torch

        batches = sorted_order(np.array([len(f["input_ids"]) for f in features]), batch_size)
        outputs: list = [None] * len(features)
        model.eval()
        with torch.inference_mode():
            for idx, batch in zip(batches, iterate(features, batches, collate)):
                out = model(**_model_inputs(batch))
                starts, ends = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
                for row, i in enumerate(idx):
                    n = len(features[i]["input_ids"])
                    outputs[i] = (starts[row, :n], ends[row, :n])
        return outputs

    def best_answers(self, examples: list[QAExample], features: list[dict], outputs: list) -> list[list[qa.Answer]]:
        """Each question's best answer (a list of one, or none) over all its windows' outputs."""
        return qa.decode_answers(examples, features, outputs)

    def score(self, examples: list[QAExample], features: list[dict], outputs: list, labels: list[str], full: bool, seed: int = 0, n_resamples: int = 1000) -> dict:
        """Quick: {"f1", "exact_match"}; full: the same with 95% bootstrap intervals and per question type."""
        predictions = [answers[0].text if answers else "" for answers in self.best_answers(examples, features, outputs)]
        golds = [[text for text, _ in e.answers] for e in examples]
        if not full:
            em, f1 = qa.squad_scores(predictions, golds)
            return {"f1": float(f1.mean()), "exact_match": float(em.mean())}
        report = qa.qa_report(predictions, golds, [e.question for e in examples], n_resamples=n_resamples, seed=seed)
        return {**report, "n_windows": len(features), "stride": self.stride}


def _model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def _position_limit(hf_tokenizer: Any) -> int:
    """The longest input the base model takes: the tokenizer's model_max_length or the config's positions."""
    limits = [int(hf_tokenizer.model_max_length)] if 0 < (hf_tokenizer.model_max_length or 0) < 100_000 else []
    config = Path(hf_tokenizer.name_or_path or "") / "config.json"
    if config.is_file():
        settings = json.loads(config.read_text())
        positions = settings.get("max_position_embeddings")
        if positions:  # RoBERTa-style models reserve the first positions after the padding id
            limits.append(positions - 2 if settings.get("model_type") in ("roberta", "xlm-roberta", "camembert") else positions)
    return min(limits, default=512)


# ------------------------------------------------------------------------------------------ answering


class QAPredictor:
    """A trained QA model directory (PyTorch), loaded once: (question, context) pairs in, best answers out.

    Pairs are windowed exactly as in training (the saved max_length and stride), so a context of any length is
    read whole; each answer is a character span of its context."""

    def __init__(self, model_dir: str | Path, threads: int | None = None, batch_size: int = 32):
        import torch

        from slmkit import artifacts
        from slmkit.encoding import uses_token_types
        from slmkit.errors import UserError
        from slmkit.lineage import recorded_train_config

        if threads:
            torch.set_num_threads(threads)
        self.directory = Path(model_dir)
        task = artifacts.model_task(self.directory) if self.directory.is_dir() else None
        if task != "qa":
            raise UserError(f"{self.directory}: not a QA model directory (task {task!r}): pass a directory made by slm train --task qa")
        self.model, hf_tokenizer = artifacts.load_model(self.directory)
        saved = recorded_train_config(self.directory)  # slm train's settings, or a distilled student's
        self.max_length = saved.model.max_length or int(hf_tokenizer.model_max_length)
        self.task = QATask(stride=saved.model.stride)
        self.encoder = make_encoder(hf_tokenizer, self.max_length)
        token_types = uses_token_types(self.model, hf_tokenizer)
        self.collate = partial(self.task.collate, pad_id=hf_tokenizer.pad_token_id or 0, token_types=token_types)
        self.batch_size = batch_size

    def answer(self, pairs: list[tuple[str, str]], n_best: int = 1) -> list[list[qa.Answer]]:
        """The `n_best` answers (best first) of each (question, context) pair, in input order."""
        run = partial(self.task.predict_logits, self.model, collate=self.collate, batch_size=self.batch_size)
        return qa.answer_pairs(pairs, self.encoder, self.max_length, self.task.stride, run, n_best)


def open_qa_model(model_dir: str | Path, threads: int | None = None, batch_size: int = 32) -> Any:
    """The runner of a QA model directory, trained or exported (`slmkit.predict.open_task_model`); a UserError
    for a model of another task."""
    from slmkit.errors import UserError
    from slmkit.predict import open_task_model

    runner = open_task_model(model_dir, threads=threads, batch_size=batch_size)
    if runner.task.name != "qa":
        raise UserError(f"{model_dir}: a {runner.task.name} model, not a QA one: train one with --task qa")
    return runner


def pair_answers(runner: Any, pairs: list[tuple[str, str]], n_best: int = 1) -> list[list[qa.Answer]]:
    """The `n_best` answers of each (question, context) pair from a runner of `open_qa_model` (either kind): windows
    of the model's max length and stride, every window of every pair in one batched run."""
    return qa.answer_pairs(pairs, runner.encoder, runner.encoder.truncation["max_length"], runner.task.stride, runner.outputs, n_best)


def answer_questions(model_dir: str | Path, pairs: list[tuple[str, str]], batch_size: int = 32, threads: int | None = None) -> list[qa.Answer]:
    """The best answer (text, score, start, end in the context) of each (question, context) pair."""
    return [answers[0] for answers in QAPredictor(model_dir, threads, batch_size).answer(pairs)]
