"""Token classification (NER, slot filling): a per-token head over the encoder, one BIO tag per word.

Examples are `slmkit.ner.Sentence`s (CoNLL, seq.in/seq.out, or JSONL spans; tags converted to BIO). A word's tag
is learned and predicted at its first sub-token; the other pieces and the special tokens carry label -100,
which the loss ignores. The model is transformers' `AutoModelForTokenClassification`, so the artifact also
loads in `transformers.pipeline("token-classification")`. Scores are seqeval's strict entity F1 (see slmkit.ner).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from slmkit import losses, ner
from slmkit.base import with_head
from slmkit.encoding import MAX_LENGTH_CAP, iterate, make_encoder, pad_batch, sorted_order
from slmkit.errors import UserError
from slmkit.ner import IGNORE, Sentence


class NERTask:
    name = "ner"
    metric_names = ("f1", "precision", "recall", "token_accuracy")
    default_lr = 1e-4  # fine-tuning a pretrained encoder
    auto_class = "AutoModelForTokenClassification"
    outputs = ("logits",)  # the model outputs an export keeps
    per_token = True  # logits (n_tokens, n_tags) per sentence
    packs = True  # its loss reads only the head's output and the labels: training batches can be packed (slmkit.packing)

    def __init__(self, scheme: str = "auto", strict: bool = False, warn: ner.Warn = ner.warn_stderr):
        if scheme not in ner.SCHEMES:
            raise UserError(f"data.scheme {scheme!r}: use one of {', '.join(ner.SCHEMES)}")
        self.scheme, self.strict, self.warn = scheme, strict, warn

    # ------------------------------------------------------------------------------------------ data
    def read(self, path: Path, d: Any) -> list[Sentence]:
        """Tagged sentences from a CoNLL file, a seq.in/seq.out folder or a JSONL of spans (see slmkit.ner)."""
        sentences = ner.read_sentences(
            path, getattr(d, "scheme", self.scheme), getattr(d, "tag_col", -1), getattr(d, "strict", self.strict), d.encoding, self.warn
        )
        if sentences[0].tags is None:
            raise UserError(f"{path}: no tags: give CoNLL lines of word and tag, a seq.out beside seq.in, or JSONL rows with \"spans\"")
        return sentences

    def split(self, examples: list[Sentence], fraction: float, seed: int) -> tuple[list[Sentence], list[Sentence]]:
        """A seeded random split of sentences (at least one held out), each part in file order."""
        order = np.random.default_rng(seed).permutation(len(examples))
        n_held = max(1, round(fraction * len(examples))) if len(examples) > 1 else 0
        held = set(order[:n_held].tolist())
        return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]

    def labels(self, train_ex: list[Sentence], train_path: Path, eval_ex: list[Sentence], eval_path: Path) -> list[str]:
        """O, then B-/I- of each entity type in the training data (sorted); an eval type train lacks is an error."""
        kinds = sorted({t[2:] for s in train_ex for t in s.tags if t != "O"})
        if not kinds:
            raise UserError(f"{train_path}: no entities: every tag is O, so there is nothing to learn")
        known = set(kinds)
        for s in eval_ex or []:
            for t in s.tags:
                if t != "O" and t[2:] not in known:
                    raise UserError(f"{eval_path} line {s.line}: entity type {t[2:]!r} does not occur in the training data ({', '.join(kinds[:8])}): add training examples of it or drop it")
        return ["O"] + [f"{p}-{k}" for k in kinds for p in "BI"]

    def default_max_length(self, hf_tokenizer: Any, examples: list[Sentence]) -> int:
        """The longest training sentence's sub-token count (special tokens included), rounded up to a multiple of 8,
        capped at 128. Not a percentile as for classification: a word beyond max_length loses its label, and
        length-bucketed batches pad only to their own longest member, so covering the long tail costs little."""
        encoder = make_encoder(hf_tokenizer, 512)
        longest = max(len(e.ids) for e in encoder.encode_batch([s.words for s in examples], is_pretokenized=True))
        return int(min(MAX_LENGTH_CAP, max(16, -(-longest // 8) * 8)))

    # ------------------------------------------------------------------------------------------ head
    def build_model(self, base: Any, labels: list[str], dropout: float | None) -> Any:
        """The base encoder with a fresh token-classification head over `labels`."""
        return with_head(base, self.auto_class, labels, dropout)

    # -------------------------------------------------------------------------------------- features
    def encode(self, examples: list[Sentence], encoder: Any, label2id: dict[str, int] | None) -> list[dict]:
        """Token ids, per-token labels (-100 except on each word's first piece) and each word's first-piece position.

        Words beyond the max length get no label (and the tag O when predicted); they are counted in a warning."""
        aligned = ner.align(encoder, examples, label2id)
        truncated = sum(a.truncated for a in aligned)
        if truncated:
            cut = sum(a.truncated > 0 for a in aligned)
            self.warn(f"{truncated} word(s) of {cut} sentence(s) lie beyond max_length {encoder.truncation['max_length']} tokens: they are not learned and are predicted O; raise model.max_length to keep them")
        return [{"input_ids": a.input_ids, "labels": a.labels, "word_starts": a.word_starts} for a in aligned]

    def collate(self, features: list[dict], pad_id: int, token_types: bool) -> dict:
        """Pad to the batch's longest sequence: input_ids/attention_mask/labels (batch, seq); labels pad with -100."""
        return pad_batch(features, pad_id, token_types, per_token={"labels": IGNORE})

    # ------------------------------------------------------------------------------------------ loss
    def loss(self, model: Any, batch: dict, class_weights: Any = None, label_smoothing: float = 0.0) -> Any:
        """Cross-entropy of the per-token logits (batch, seq, n_tags) against the labels, skipping -100."""
        import torch.nn.functional as F

        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        return F.cross_entropy(
            logits.float().flatten(0, 1), batch["labels"].flatten(), weight=class_weights, ignore_index=IGNORE, label_smoothing=label_smoothing
        )

    # ---------------------------------------------------------------------------------- distillation
    # `out` is the student's output, `batch` the task's batch plus the teacher's per-token logits
    # (`teacher_logits`, (batch, seq, n_tags), zero at padding). Every term reads the positions the hard loss
    # reads, each word's first piece (label != -100): those are the logits decoding uses, and the teacher's
    # logits on the other pieces were never trained. Each is a mean over those tokens.
    def kd_loss(self, out: Any, batch: dict, temperature: float) -> Any:
        """KL(teacher/T || student/T)·T² per word, averaged over the batch's words."""
        keep = batch["labels"] != IGNORE  # (batch, seq)
        if not bool(keep.any()):
            return out.logits.float().sum() * 0.0
        return losses.kd_loss(out.logits[keep], batch["teacher_logits"][keep], temperature)  # (words, n_tags) each

    def hard_loss(self, out: Any, batch: dict) -> Any:
        """Cross-entropy against the gold tags of each word's first piece."""
        import torch.nn.functional as F

        if not bool((batch["labels"] != IGNORE).any()):
            return out.logits.float().sum() * 0.0
        return F.cross_entropy(out.logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)

    def logit_mse(self, out: Any, batch: dict) -> Any:
        keep = batch["labels"] != IGNORE
        if not bool(keep.any()):
            return out.logits.float().sum() * 0.0
        return losses.logit_mse(out.logits[keep], batch["teacher_logits"][keep])

    def agreement(self, examples: list[Sentence], features: list[dict], outputs: Any, teacher_outputs: Any, labels: list[str]) -> float:
        """The fraction of words whose predicted tag is the teacher's."""
        student = [tags for tags, _ in self.predict_tags(features, outputs, labels)]
        teacher = [tags for tags, _ in self.predict_tags(features, teacher_outputs, labels)]
        same = sum(a == b for s, t in zip(student, teacher) for a, b in zip(s, t))
        return same / max(1, sum(len(s) for s in student))

    # ---------------------------------------------------------------------------------- predictions
    def predict_logits(self, model: Any, features: list[dict], collate: Callable[[list[dict]], dict], batch_size: int) -> list[np.ndarray]:
        """Per feature, its tokens' logits (n_tokens, n_tags) as float32, in feature order (batched by length)."""
        import torch

        out: list[np.ndarray | None] = [None] * len(features)
        batches = sorted_order(np.array([len(f["input_ids"]) for f in features]), batch_size)
        model.eval()
        with torch.inference_mode():
            for idx, batch in zip(batches, iterate(features, batches, collate)):
                inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                logits = model(**inputs).logits.float().cpu().numpy()  # (batch, seq, n_tags)
                for row, i in enumerate(idx):
                    out[i] = logits[row, : len(features[i]["input_ids"])]
        return out

    def predict_tags(self, features: list[dict], outputs: list[np.ndarray], labels: list[str]) -> list[tuple[list[str], np.ndarray]]:
        """Per feature, its words' BIO tags and their probabilities."""
        return [ner.decode_tags(ner.word_probs(logits, f["word_starts"]), labels) for f, logits in zip(features, outputs)]

    def score(
        self, examples: list[Sentence], features: list[dict], outputs: list[np.ndarray], labels: list[str], full: bool, seed: int = 0, n_resamples: int = 1000
    ) -> dict:
        """full=False: {f1, precision, recall, token_accuracy}; full=True: the metrics.json report (see ner.ner_report)."""
        true = [s.tags for s in examples]
        pred = [tags for tags, _ in self.predict_tags(features, outputs, labels)]
        if not full:
            return ner.quick_scores(true, pred)
        report = ner.ner_report(true, pred, n_resamples=n_resamples, seed=seed)
        report["words_without_token"] = sum(1 for f in features for s in f["word_starts"] if s < 0)
        report["labels"] = list(labels)
        return report


# ------------------------------------------------------------------------------------------ prediction
# For `slm predict` and serving: `runner` is what `slmkit.predict.open_task_model` opens (a PyTorch model
# directory or an exported one, served by the torch-free runtime); load it once, call these per request.


def open_ner_model(model_dir: str | Path, threads: int | None = None, batch_size: int = 64) -> Any:
    """The runner of an NER model directory (trained or exported); a UserError for a model of another task."""
    from slmkit.predict import open_task_model

    runner = open_task_model(model_dir, threads=threads, batch_size=batch_size)
    if runner.task.name != "ner":
        raise UserError(f"{model_dir}: a {runner.task.name} model, not an NER one: train one with --task ner")
    return runner


def text_entities(runner: Any, texts: list[str]) -> list[list[dict]]:
    """Per text, its entities {label, score, start, end, text}, with character offsets into the text."""
    return sentence_entities(runner, [ner.text_sentence(t, i) for i, t in enumerate(texts)])


def sentence_entities(runner: Any, sentences: list[Sentence]) -> list[list[dict]]:
    """Per sentence, its entities, with character offsets into `sentence.text`."""
    found: list[list[dict]] = [[] for _ in sentences]  # a sentence without words has no entities
    present = [i for i, s in enumerate(sentences) if s.words]
    if present:
        features, outputs = runner.run([sentences[i] for i in present])
        for i, f, logits in zip(present, features, outputs):
            found[i] = ner.predicted_entities(sentences[i], logits, f["word_starts"], runner.labels)
    return found


def sentence_tags(runner: Any, sentences: list[Sentence]) -> list[list[str]]:
    """Per sentence, its words' predicted BIO tags."""
    features, outputs = runner.run(sentences)
    return [tags for tags, _ in runner.task.predict_tags(features, outputs, runner.labels)]


def predict_entities(model_dir: str | Path, texts: list[str], batch_size: int = 64, threads: int | None = None) -> list[list[dict]]:
    """Entities of each text, in input order."""
    return text_entities(open_ner_model(model_dir, threads, batch_size), texts)


def predict_conll(model_dir: str | Path, data: str | Path, out: str | Path, scheme: str = "bio", encoding: str = "utf-8") -> Path:
    """Tag the sentences of `data` (any NER input; its tags, if any, are ignored) and write `word tag` lines in
    `scheme` (bio, iob1 or bioes) to `out`."""
    sentences = ner.read_sentences(data, encoding=encoding)
    return ner.write_conll(out, sentences, sentence_tags(open_ner_model(model_dir), sentences), scheme)
