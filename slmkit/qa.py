"""Extractive question answering without torch: reading, windowing, span decoding and SQuAD metrics.

- Readers turn SQuAD v1.1 JSON and MRQA JSONL into `QAExample`s (answers as (text, char start) pairs whose text
  is always `context[start:start + len(text)]`), with one-line errors naming the file and the question.
- `encode_windows` pairs each question with its context and, when the pair is longer than `max_length`, cuts the
  context into overlapping windows (`stride` tokens shared by neighbours); every window keeps the character
  offsets of its context tokens and, for training, the token positions of the answer (0, the first token, when
  the answer is not inside the window).
- `best_spans` reads the start/end logits of all windows of one question and returns the best spans as
  character spans of the original context.
- `squad_scores` / `qa_report`: the SQuAD v1.1 answer normalization, exact match and token F1 (max over the
  gold answers), with bootstrap intervals over questions.

Only numpy and `tokenizers` are used: the torch-free runtime decodes answers with the same code.
"""

from __future__ import annotations

import json
import re
import string
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from slmkit.data import _decode
from slmkit.errors import UserError
from slmkit.losses import UNLABELED

MAX_QUESTION_TOKENS = 64  # longer questions are cut to this many tokens (BERT's SQuAD setting)
MAX_ANSWER_TOKENS = 30  # longest span considered when decoding
DEFAULT_MAX_LENGTH = 384  # question + context window when none is set


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[tuple[str, int]]  # (text, char start); text == context[start:start + len(text)]; [] to predict
    line: int  # SQuAD JSON: 1-based question number in the file; MRQA JSONL: 1-based line of the file
    where: str = ""  # "<file> question 7 (id ...)": where errors point
    source: str = ""  # the file read


@dataclass
class Answer:
    text: str
    start: int  # char offsets in the context; text == context[start:end]
    end: int
    score: float  # probability of this span in its window: softmax(start) x softmax(end) over the context tokens
    logit: float  # start + end logit: what ranks spans across windows


# ----------------------------------------------------------------------------------------------- reading


def read_qa(path: str | Path, strict: bool = False, encoding: str = "utf-8", warn: Callable[[str], None] | None = None) -> list[QAExample]:
    """Questions with answers from SQuAD v1.1 JSON (.json) or MRQA JSONL (.jsonl).

    An answer whose text is not at its offset is refused with `strict`; otherwise it moves to the nearest
    occurrence of its text in the context, or is dropped when the context lacks it (a question left without
    answers is dropped too), and one warning line counts what was changed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found: check the path")
    text = _decode(path, encoding)
    repairs = _Repairs(path, strict)
    suffix = path.suffix.lower()
    if suffix == ".json":
        examples = _read_squad(path, text, repairs)
    elif suffix in (".jsonl", ".ndjson"):
        examples = _read_mrqa(path, text, repairs)
    else:
        raise UserError(f"{path}: unknown QA file type {path.suffix!r}: use SQuAD v1.1 .json or MRQA .jsonl")
    if not examples:
        raise UserError(f"{path}: no questions with answers: the file needs SQuAD v1.1 data/paragraphs/qas or MRQA lines")
    repairs.report(warn or (lambda line: print(line, file=sys.stderr)))
    return examples


@dataclass
class _Repairs:
    """Answers that were not where their offsets said (non-strict reading), counted for one warning line."""

    path: Path
    strict: bool
    moved: int = 0
    dropped: int = 0
    questions_dropped: int = 0
    first: str = ""

    def check(self, context: str, text: str, start: int, where: str, problem: str = "") -> tuple[str, int] | None:
        """(text, start) when the answer is at `start` (and there is no other `problem` with it), else refuse
        (strict) or repair it: move it to the nearest occurrence of its text, or drop it (None)."""
        if not text.strip():
            raise UserError(f"{where}: empty answer text: give the answer's text or remove the answer")
        if not problem and 0 <= start and context[start : start + len(text)] == text:
            return text, start
        found = [m.start() for m in re.finditer(re.escape(text), context)]
        if self.strict:
            hint = f" (it occurs at {', '.join(map(str, found[:3]))})" if found else " (the context does not contain it)"
            problem = problem or f"answer {text!r} is not at answer_start {start}{hint}"
            raise UserError(f"{where}: {problem}: fix the offset, or drop --strict to repair such answers")
        self.first = self.first or where
        if not found:
            self.dropped += 1
            return None
        self.moved += 1
        best = min(found, key=lambda s: abs(s - start))
        return text, best

    def report(self, warn: Callable[[str], None]) -> None:
        if self.moved or self.dropped:
            warn(
                f"warning: {self.path}: {self.moved} answer(s) moved to the nearest occurrence of their text and "
                f"{self.dropped} answer(s) missing from their context dropped ({self.questions_dropped} question(s) left "
                f"without an answer skipped); first: {self.first}; pass --strict to refuse such answers"
            )


def _read_squad(path: Path, text: str, repairs: _Repairs) -> list[QAExample]:
    try:
        root = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} line {e.lineno}: not valid JSON ({e.msg}): a SQuAD file is one JSON object") from None
    if not isinstance(root, dict) or not isinstance(root.get("data"), list):
        raise UserError(f"{path}: no top-level 'data' list: expected SQuAD v1.1 JSON {{\"data\": [{{\"paragraphs\": [...]}}]}}")
    examples, n = [], 0
    for a, article in enumerate(root["data"]):
        paragraphs = _field(article, "paragraphs", list, f"{path} data[{a}]")
        for p, paragraph in enumerate(paragraphs):
            at = f"{path} data[{a}].paragraphs[{p}]"
            context = _field(paragraph, "context", str, at)
            if not context.strip():
                raise UserError(f"{at}: empty context: give the paragraph's text or remove it")
            for q, qa in enumerate(_field(paragraph, "qas", list, at)):
                n += 1
                qid = str(qa.get("id", "")) if isinstance(qa, dict) else ""
                where = f"{path} question {n} (id {qid or '?'}, data[{a}].paragraphs[{p}].qas[{q}])"
                question = _field(qa, "question", str, where)
                if not question.strip():
                    raise UserError(f"{where}: empty question: write the question or remove it")
                if qa.get("is_impossible"):
                    raise UserError(f"{where}: an unanswerable (SQuAD 2.0) question: only answerable questions are supported; remove it")
                if not _field(qa, "answers", list, where):
                    raise UserError(f"{where}: no answers: every question needs at least one answer with text and answer_start")
                answers = []
                for i, answer in enumerate(qa["answers"]):
                    answer_text = _field(answer, "text", str, f"{where} answers[{i}]")
                    start = _field(answer, "answer_start", int, f"{where} answers[{i}]")
                    kept = repairs.check(context, answer_text, start, f"{where} answers[{i}]")
                    if kept is not None:
                        answers.append(kept)
                if not answers:
                    repairs.questions_dropped += 1
                    continue
                examples.append(QAExample(qid or str(n), question, context, answers, n, where, str(path)))
    return examples


def _read_mrqa(path: Path, text: str, repairs: _Repairs) -> list[QAExample]:
    examples = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {line}: not valid JSON ({e.msg}): MRQA files hold one JSON object per line") from None
        if isinstance(row, dict) and "header" in row:
            continue
        context = _field(row, "context", str, f"{path} line {line}")
        if not context.strip():
            raise UserError(f"{path} line {line}: empty context: give the paragraph's text or remove the line")
        for q, qa in enumerate(_field(row, "qas", list, f"{path} line {line}")):
            qid = str(qa.get("id") or qa.get("qid") or "") if isinstance(qa, dict) else ""
            where = f"{path} line {line} (id {qid or '?'}, qas[{q}])"
            question = _field(qa, "question", str, where)
            if not question.strip():
                raise UserError(f"{where}: empty question: write the question or remove it")
            if not _field(qa, "detected_answers", list, where):
                raise UserError(f"{where}: no detected_answers: every question needs an answer span")
            answers = []
            for i, detected in enumerate(qa["detected_answers"]):
                for span in _field(detected, "char_spans", list, f"{where} detected_answers[{i}]"):
                    if not (isinstance(span, list) and len(span) == 2 and all(isinstance(x, int) for x in span)):
                        raise UserError(f"{where} detected_answers[{i}]: char_spans holds {span!r}: each span is [start, end] (end inclusive)")
                    start, end = span
                    if not 0 <= start <= end < len(context):  # MRQA ends are inclusive
                        problem = f"char_span [{start}, {end}] is not inside the {len(context)}-character context (ends are inclusive)"
                        kept = repairs.check(context, str(detected.get("text", "")), start, f"{where} detected_answers[{i}]", problem)
                    else:
                        kept = (context[start : end + 1], start)
                    if kept is not None:
                        answers.append(kept)
            if not answers:
                repairs.questions_dropped += 1
                continue
            examples.append(QAExample(qid or str(line), question, context, answers, line, where, str(path)))
    return examples


def _field(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise UserError(f"{where}: missing {key!r}: see the SQuAD v1.1 / MRQA format")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"{where}: {key!r} should be {kind.__name__}, got {type(value).__name__}")
    return value


def read_pairs(path: str | Path, encoding: str = "utf-8") -> list[tuple[str, str, str]]:
    """Questions to answer: JSONL rows `{"question", "context"}` (an optional `"id"` is kept) as (id, question,
    context); the id defaults to the row's line number."""
    from slmkit.data import _decode, json_lines

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found: check the path")
    rows = []
    for line, obj in json_lines(path, _decode(path, encoding)):
        if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) and obj[k].strip() for k in ("question", "context")):
            raise UserError(f'{path} line {line}: expected a JSON object with a non-empty "question" and "context": {{"question": "...", "context": "..."}}')
        rows.append((str(obj.get("id", line)), obj["question"], obj["context"]))
    if not rows:
        raise UserError(f"{path}: no questions: the file holds no JSON lines")
    return rows


def split_by_context(examples: list[QAExample], fraction: float, seed: int) -> tuple[list[QAExample], list[QAExample]]:
    """A seeded (train, held-out) split of whole paragraphs: questions on one context never straddle it.

    Paragraphs are drawn in a seeded order until the held-out side has about `fraction` of the questions (at
    least one paragraph; the training side keeps at least one)."""
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(e.context, []).append(i)
    if len(groups) < 2:
        raise UserError(f"{examples[0].source or 'the data'}: every question is on one paragraph, so no paragraph can be held out: pass --eval FILE")
    contexts = list(groups)
    target = fraction * len(examples)
    held: set[int] = set()
    for k in np.random.default_rng(seed).permutation(len(contexts)):
        if held and (len(held) >= target or len(held) + len(groups[contexts[k]]) >= len(examples)):
            break
        held.update(groups[contexts[k]])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


# --------------------------------------------------------------------------------------------- windowing


def pair_tokenizer(encoder: Any) -> Any:
    """A copy of `encoder` (a `tokenizers.Tokenizer`) without padding or truncation, to encode question/context pairs."""
    from tokenizers import Tokenizer

    paired = Tokenizer.from_str(encoder.to_str())
    paired.no_padding()
    paired.no_truncation()
    return paired


def encode_windows(examples: list[QAExample], encoder: Any, max_length: int, stride: int, with_answers: bool = True) -> list[dict]:
    """Question/context windows of at most `max_length` tokens, `stride` context tokens shared by neighbours.

    Each feature: input_ids, token_type_ids (list[int]), example (index into `examples`), context_start (the window's
    first context token), offsets ([start, end) chars of each context token, in order) and, `with_answers`,
    start_position/end_position of the first answer (0, the first token, when the window does not hold it;
    UNLABELED, −1, for a question without answers).
    A pair longer than `max_length` needs `stride` > 0 and smaller than the room the question leaves."""
    paired = pair_tokenizer(encoder)
    specials = paired.post_processor.num_special_tokens_to_add(True) if paired.post_processor is not None else 0
    questions = _cut_questions(paired, [e.question for e in examples])
    full = paired.encode_batch(list(zip(questions, [e.context for e in examples])))
    long = []
    for i, (e, enc) in enumerate(zip(examples, full)):
        n_question = sum(1 for s in enc.sequence_ids if s == 0)
        room = max_length - specials - n_question  # context tokens per window
        if room < 1:
            raise UserError(f"{e.where}: the question fills max_length {max_length} with no room for the context: raise model.max_length (--max-length)")
        if len(enc.ids) <= max_length:
            continue
        n_context = len(enc.ids) - specials - n_question
        if stride == 0:
            raise UserError(
                f"{e.where}: the context is {n_context} tokens, longer than the {room} that max_length {max_length} leaves, and the window "
                f"stride is 0: set model.stride (--stride, e.g. 128) to read it in windows, or raise --max-length"
            )
        if stride >= room:
            raise UserError(
                f"{e.where}: window stride {stride} must be smaller than the {room} context tokens a window of max_length {max_length} holds: "
                f"lower --stride or raise --max-length"
            )
        long.append(i)
    windows: dict[int, list] = {i: [enc] for i, enc in enumerate(full)}
    if long:
        paired.enable_truncation(max_length, stride=stride, strategy="only_second")
        cut = paired.encode_batch([(questions[i], examples[i].context) for i in long])
        for i, enc in zip(long, cut):
            windows[i] = [enc, *enc.overflowing]
    features = []
    for i, e in enumerate(examples):
        for enc in windows[i]:
            features.append(_window_feature(i, e, enc, with_answers))
    return features


def _cut_questions(paired: Any, questions: list[str]) -> list[str]:
    """The questions, each cut after `MAX_QUESTION_TOKENS` tokens."""
    encodings = paired.encode_batch(questions, add_special_tokens=False)
    return [q if len(enc.ids) <= MAX_QUESTION_TOKENS else q[: enc.offsets[MAX_QUESTION_TOKENS - 1][1]] for q, enc in zip(questions, encodings)]


def _window_feature(index: int, e: QAExample, enc: Any, with_answers: bool) -> dict:
    sequence_ids = enc.sequence_ids
    context_tokens = [k for k, s in enumerate(sequence_ids) if s == 1]
    if not context_tokens:
        raise UserError(f"{e.where}: the context has no tokens the model's tokenizer keeps: give the paragraph's text")
    first, last = context_tokens[0], context_tokens[-1]  # the context is contiguous in a pair encoding
    offsets = [tuple(o) for o in enc.offsets[first : last + 1]]
    feature = {"input_ids": list(enc.ids), "token_type_ids": list(enc.type_ids), "example": index, "context_start": first, "offsets": offsets}
    if with_answers:
        start, end = UNLABELED, UNLABELED  # a question without answers (distillation's unlabeled ones): no hard target
        if e.answers:
            start, end = 0, 0
            text, char_start = e.answers[0]
            span = _token_span(offsets, char_start, char_start + len(text))
            if span is not None:
                start, end = first + span[0], first + span[1]
        feature["start_position"], feature["end_position"] = start, end
    return feature


def _token_span(offsets: list[tuple[int, int]], char_start: int, char_end: int) -> tuple[int, int] | None:
    """Token indices (inclusive) covering chars [char_start, char_end) when these tokens hold all of it."""
    starts = np.array([o[0] for o in offsets])
    ends = np.array([o[1] for o in offsets])
    if starts[0] > char_start or ends[-1] < char_end:
        return None
    first = int(np.searchsorted(starts, char_start, side="right")) - 1  # last token starting at or before the answer
    last = int(np.searchsorted(ends, char_end, side="left"))  # first token ending at or after it
    if ends[first] <= char_start:  # the answer starts in whitespace after token `first`
        first += 1
    return (first, last) if first <= last else None


# -------------------------------------------------------------------------------------------- decoding


def best_spans(
    context: str,
    windows: list[tuple[np.ndarray, np.ndarray, int, list[tuple[int, int]]]],
    n_best: int = 1,
    max_answer_tokens: int = MAX_ANSWER_TOKENS,
) -> list[Answer]:
    """The `n_best` spans of a context from its windows' (start_logits, end_logits, context_start, offsets).

    A span starts and ends on context tokens of one window, start <= end, at most `max_answer_tokens` long;
    spans rank by start + end logit; the same character span from two windows is kept once (its best)."""
    found: dict[tuple[int, int], Answer] = {}
    for start_logits, end_logits, first, offsets in windows:
        n = len(offsets)
        s = np.asarray(start_logits, dtype=np.float64)[first : first + n]  # (n,) context tokens only
        e = np.asarray(end_logits, dtype=np.float64)[first : first + n]
        pair = s[:, None] + e[None, :]  # (n, n): span from token i to token j
        allowed = np.triu(np.ones((n, n), dtype=bool)) & ~np.triu(np.ones((n, n), dtype=bool), k=max_answer_tokens)
        pair[~allowed] = -np.inf
        log_z = _logsumexp(s) + _logsumexp(e)
        k = min(n_best, int(allowed.sum()))
        top = np.argpartition(-pair.ravel(), k - 1)[:k] if k < pair.size else np.arange(pair.size)
        for flat in top:
            i, j = divmod(int(flat), n)
            if not allowed[i, j]:
                continue
            start, end = offsets[i][0], offsets[j][1]
            logit = float(pair[i, j])
            if (start, end) not in found or found[(start, end)].logit < logit:
                found[(start, end)] = Answer(context[start:end], start, end, float(np.exp(logit - log_z)), logit)
    return sorted(found.values(), key=lambda a: -a.logit)[:n_best]


def _logsumexp(x: np.ndarray) -> float:
    top = float(x.max())
    return top + float(np.log(np.exp(x - top).sum()))


def decode_answers(examples: list[QAExample], features: list[dict], outputs: list[tuple[np.ndarray, np.ndarray]], n_best: int = 1) -> list[list[Answer]]:
    """The best spans per example from the (start_logits, end_logits) of every feature (window)."""
    by_example: list[list] = [[] for _ in examples]
    for f, (start_logits, end_logits) in zip(features, outputs):
        by_example[f["example"]].append((start_logits, end_logits, f["context_start"], f["offsets"]))
    return [best_spans(e.context, w, n_best) if w else [] for e, w in zip(examples, by_example)]


def answer_pairs(
    pairs: list[tuple[str, str]],
    encoder: Any,
    max_length: int,
    stride: int,
    window_logits: Callable[[list[dict]], list[tuple[np.ndarray, np.ndarray]]],
    n_best: int = 1,
) -> list[list[Answer]]:
    """The `n_best` answers of each (question, context) pair: windows, a model's logits per window, best spans.

    `window_logits(features)` runs the model (PyTorch or ONNX) and returns (start_logits, end_logits) per
    feature, in order; everything else is shared by every runtime."""
    examples = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise UserError(f"pair {i + 1}: expected (question, context), got {type(pair).__name__}")
        for name, text in zip(("question", "context"), pair):
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"pair {i + 1}: empty {name}: give every pair a question and a context")
        examples.append(QAExample(str(i), pair[0], pair[1], [], i + 1, f"pair {i + 1}"))
    if not examples:
        return []
    features = encode_windows(examples, encoder, max_length, stride, with_answers=False)
    return decode_answers(examples, features, window_logits(features), n_best=n_best)


# --------------------------------------------------------------------------------------------- metrics


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalization: lowercase, drop ASCII punctuation, drop the articles a/an/the, collapse spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_PUNCTUATION = frozenset(string.punctuation)


def exact_match(prediction: str, golds: list[str]) -> float:
    """1.0 when the normalized prediction equals some normalized gold answer."""
    target = normalize_answer(prediction)
    return float(any(target == normalize_answer(g) for g in golds))


def token_f1(prediction: str, golds: list[str]) -> float:
    """The best bag-of-tokens F1 between the normalized prediction and each normalized gold answer.

    As in SQuAD v1.1, no shared token gives 0 (so does an empty prediction, even against an empty gold)."""
    predicted = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        reference = normalize_answer(gold).split()
        shared = sum((Counter(predicted) & Counter(reference)).values())
        if shared:
            precision, recall = shared / len(predicted), shared / len(reference)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def squad_scores(predictions: list[str], golds: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-question exact match and F1 (each in [0, 1]), shape (n,)."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    em = np.array([exact_match(p, g) for p, g in zip(predictions, golds)], dtype=np.float64)
    f1 = np.array([token_f1(p, g) for p, g in zip(predictions, golds)], dtype=np.float64)
    return em, f1


def mean_ci(values: np.ndarray, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-question `values`."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_resamples, len(values)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


QUESTION_WORDS = ("what", "which", "who", "whom", "whose", "when", "where", "why", "how")


def question_type(question: str) -> str:
    """The first wh-word of the question ("how" for how many/much/...), else "other"."""
    words = re.findall(r"[a-z]+", question.lower())
    return next((w for w in words if w in QUESTION_WORDS), "other")


def qa_report(predictions: list[str], golds: list[list[str]], questions: list[str], n_resamples: int = 1000, seed: int = 0) -> dict:
    """EM and F1 (fractions in [0, 1]) with 95% bootstrap intervals over questions, and per question type."""
    em, f1 = squad_scores(predictions, golds)
    types = [question_type(q) for q in questions]
    per_type = {}
    for kind in sorted(set(types)):
        mask = np.array([t == kind for t in types])
        per_type[kind] = {"n": int(mask.sum()), "exact_match": float(em[mask].mean()), "f1": float(f1[mask].mean())}
    return {
        "n_examples": len(predictions),  # questions (the key every task's report shares)
        "exact_match": float(em.mean()),
        "exact_match_ci95": mean_ci(em, n_resamples, seed=seed),
        "f1": float(f1.mean()),
        "f1_ci95": mean_ci(f1, n_resamples, seed=seed),
        "per_question_type": per_type,
    }
