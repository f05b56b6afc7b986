"""Token classification (NER, slot filling) without torch: sentences, tag schemes, sub-token alignment, entities, metrics.

- Readers turn CoNLL files, SNIPS/ATIS parallel files (`seq.in`/`seq.out`) and JSONL with character spans (the
  labeling app's export) into `Sentence`s whose tags are BIO (IOB2), the one scheme used inside slmkit.
- Tag schemes IOB1, BIO and BIOES are read (`auto` detects them, see `detect_scheme`) and written (`from_bio`).
  A broken BIO tag (I-X that starts an entity) is repaired to B-X with a counted warning, or refused with `strict`.
- Alignment: a word's tag goes on its first sub-token; other pieces and special tokens get -100 (ignored by the
  loss). Decoding reads each word's tag from its first sub-token and groups words into entity spans with
  character offsets into the sentence text.
- Metrics: entity precision/recall/F1 in seqeval's strict IOB2 mode, per type, token (word) accuracy, and 95%
  bootstrap intervals over sentences.

This module is used by the torch-free runtime: it imports numpy, `tokenizers` objects passed in, and seqeval
(inside the metric functions) only.
"""

from __future__ import annotations

import bisect
import json
import os
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from slmkit import metrics
from slmkit.data import _decode, json_lines
from slmkit.errors import UserError

SCHEMES = ("auto", "iob1", "bio", "bioes")
PREFIXES = {"iob1": "BI", "bio": "BI", "bioes": "BIES"}
IGNORE = -100  # label of sub-tokens the loss skips (transformers' and torch's ignore_index)
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARALLEL_IN, PARALLEL_OUT = "seq.in", "seq.out"

Warn = Callable[[str], None]


def warn_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


@dataclass(frozen=True)
class Sentence:
    """A sentence (or a JSONL text) as words with their BIO tags (None for unlabeled input)."""

    words: list[str]
    tags: list[str] | None
    line: int  # 1-based line of the file where the sentence starts
    text: str  # CoNLL / seq.in: the words joined by one space; JSONL: the row's text
    offsets: list[tuple[int, int]]  # each word's [start, end) in `text`


# ------------------------------------------------------------------------------------------ readers


def read_sentences(
    path: str | Path, scheme: str = "auto", tag_col: int = -1, strict: bool = False, encoding: str = "utf-8", warn: Warn = warn_stderr
) -> list[Sentence]:
    """Sentences from a CoNLL file, a folder holding seq.in/seq.out (or the seq.in file), or a .jsonl of spans."""
    path = Path(path)
    if scheme not in SCHEMES:
        raise UserError(f"data.scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    if path.is_dir() or path.name == PARALLEL_IN:
        sentences = read_parallel(path, scheme, strict, encoding, warn)
    elif not path.is_file():
        raise UserError(f"{path}: file not found: check the path")
    elif path.suffix.lower() in JSONL_SUFFIXES:
        sentences = read_spans_jsonl(path, strict, encoding, warn)
    else:
        sentences = read_conll(path, scheme, tag_col, strict, encoding, warn)
    if not sentences:
        raise UserError(f"{path}: no sentences: the file holds no words")
    return sentences


def read_conll(
    path: Path, scheme: str = "auto", tag_col: int = -1, strict: bool = False, encoding: str = "utf-8", warn: Warn = warn_stderr
) -> list[Sentence]:
    """One token per line, whitespace-separated columns (word first, tag in `tag_col`), blank lines between
    sentences, `-DOCSTART-` lines ignored. Every token line must have as many columns as the first one; a file
    of one column holds words without tags."""
    path = Path(path)
    groups: list[tuple[list[str], list[str], list[int]]] = []  # (words, tags, line of each word)
    words, tags, lines = [], [], []
    n_cols = first = None
    for number, raw in enumerate(_decode(path, encoding).splitlines(), start=1):
        cols = raw.split()
        if not cols or cols[0] == "-DOCSTART-":
            if words:
                groups.append((words, tags, lines))
                words, tags, lines = [], [], []
            continue
        if n_cols is None:
            n_cols, first = len(cols), number
            if n_cols > 1 and not (-n_cols <= tag_col < n_cols and tag_col % n_cols != 0):
                raise UserError(f"{path} line {number}: data.tag_col {tag_col} is not a tag column of this file's {n_cols} columns (1 to {n_cols - 1}, or -1 for the last)")
        if len(cols) != n_cols:
            raise UserError(
                f"{path} line {number}: {len(cols)} columns where the first token line (line {first}) has {n_cols}: "
                "one token per line, columns separated by whitespace, a blank line between sentences"
            )
        words.append(cols[0])
        tags.append(cols[tag_col] if n_cols > 1 else "")
        lines.append(number)
    if words:
        groups.append((words, tags, lines))
    labeled = n_cols is not None and n_cols > 1
    bio = to_bio([g[1] for g in groups], [g[2] for g in groups], scheme, strict, path, warn) if labeled else [None] * len(groups)
    return [_joined(g[0], t, g[2][0]) for g, t in zip(groups, bio)]


def read_parallel(path: Path, scheme: str = "auto", strict: bool = False, encoding: str = "utf-8", warn: Warn = warn_stderr) -> list[Sentence]:
    """SNIPS/ATIS-style files: `seq.in` holds a sentence of whitespace-separated words per line, `seq.out` their
    tags, line for line. `path` is their folder or the seq.in file; without a seq.out the words are unlabeled."""
    path = Path(path)
    seq_in = path / PARALLEL_IN if path.is_dir() else path
    seq_out = seq_in.with_name(PARALLEL_OUT)
    if not seq_in.is_file():
        raise UserError(f"{seq_in}: file not found: a parallel-files folder holds {PARALLEL_IN} and {PARALLEL_OUT}")
    in_lines = _decode(seq_in, encoding).splitlines()
    if not seq_out.is_file():
        return [_joined(line.split(), None, n) for n, line in enumerate(in_lines, start=1) if line.strip()]
    out_lines = _decode(seq_out, encoding).splitlines()
    if len(in_lines) != len(out_lines):
        raise UserError(f"{seq_out}: {len(out_lines)} lines where {seq_in} has {len(in_lines)}: the files must be parallel, one sentence per line")
    groups = []
    for number, (words, tags) in enumerate(zip(in_lines, out_lines), start=1):
        words, tags = words.split(), tags.split()
        if len(words) != len(tags):
            raise UserError(f"{seq_out} line {number}: {len(tags)} tags for the {len(words)} words of {seq_in} line {number}: give one tag per word")
        if words:
            groups.append((words, tags, number))
    bio = to_bio([g[1] for g in groups], [[g[2]] * len(g[1]) for g in groups], scheme, strict, seq_out, warn)
    return [_joined(g[0], t, g[2]) for g, t in zip(groups, bio)]


def read_spans_jsonl(path: Path, strict: bool = False, encoding: str = "utf-8", warn: Warn = warn_stderr) -> list[Sentence]:
    """JSONL rows `{"text", "spans": [{"start", "end", "label"}]}` (end exclusive, offsets in characters), as the
    labeling app exports them (its `jsonl` and `spacy` formats). The text is split into words (`split_words`) and
    the words covered by a span are tagged B-/I-label.

    A span edge inside a word is snapped outward to the word's edge (the whole word is tagged) and counted in a
    warning; with `strict` it is an error. A row whose `spans` is null (an item nobody labeled, in the app's jsonl
    export) is skipped and counted; a file with no `spans` key at all is unlabeled input (tags None)."""
    path = Path(path)
    sentences, skipped, snapped, first_snap = [], 0, 0, None
    rows = list(json_lines(path, _decode(path, encoding)))
    labeled = any(isinstance(obj, dict) and "spans" in obj for _, obj in rows)
    for line, obj in rows:
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise UserError(f'{path} line {line}: expected a JSON object like {{"text": "...", "spans": [{{"start": 0, "end": 5, "label": "PER"}}]}}')
        text = obj["text"]
        offsets = split_words(text)
        if not offsets:
            raise UserError(f"{path} line {line}: empty text: fill it in or remove the row")
        words = [text[s:e] for s, e in offsets]
        if not labeled:
            sentences.append(Sentence(words, None, line, text, offsets))
            continue
        if obj.get("spans") is None:
            skipped += 1
            continue
        tags, n_snapped = _tag_spans(path, line, text, offsets, obj["spans"], strict)
        if n_snapped and first_snap is None:
            first_snap = line
        snapped += n_snapped
        sentences.append(Sentence(words, tags, line, text, offsets))
    if skipped:
        warn(f"{path}: {skipped} row(s) without spans (unlabeled) skipped")
    if snapped:
        warn(f"{path}: {snapped} span edge(s) inside a word (first at line {first_snap}) widened to whole words; pass strict to refuse them")
    return sentences


def split_words(text: str) -> list[tuple[int, int]]:
    """[start, end) of each word of `text`: a run of letters, digits, underscores and combining marks, or a single
    other non-space character (punctuation and symbols are words of their own). "Zürich, 5km!" gives Zürich , 5km !"""
    offsets, i, n = [], 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        j = i + 1
        if _wordish(text[i]):
            while j < n and _wordish(text[j]):
                j += 1
        offsets.append((i, j))
        i = j
    return offsets


def text_sentence(text: str, line: int = 0) -> Sentence:
    """An unlabeled sentence of raw text (prediction input), split into words by `split_words`."""
    offsets = split_words(text)
    return Sentence([text[a:b] for a, b in offsets], None, line, text, offsets)


def _wordish(char: str) -> bool:
    return char.isalnum() or char == "_" or unicodedata.category(char).startswith("M")


def _tag_spans(path: Path, line: int, text: str, offsets: list[tuple[int, int]], spans, strict: bool) -> tuple[list[str], int]:
    """BIO tags of the words covered by `spans`, and how many span edges were snapped to word edges."""
    if not isinstance(spans, list):
        raise UserError(f'{path} line {line}: "spans" must be a list of {{"start", "end", "label"}} objects')
    tags, owner, snapped = ["O"] * len(offsets), [None] * len(offsets), 0
    starts, ends = [s for s, _ in offsets], [e for _, e in offsets]
    for span in spans:
        if not isinstance(span, dict) or not {"start", "end", "label"} <= set(span):
            raise UserError(f'{path} line {line}: each span needs "start", "end" and "label" (got {json.dumps(span)[:80]})')
        start, end, label = span["start"], span["end"], span["label"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)) or not 0 <= start < end <= len(text):
            raise UserError(f"{path} line {line}: span [{start}, {end}) does not fit the text (0 to {len(text)} characters, end exclusive): fix its offsets")
        if "text" in span and span["text"] != text[start:end]:
            raise UserError(f"{path} line {line}: span [{start}, {end}) says {span['text']!r} but the text there is {text[start:end]!r}: fix its offsets")
        if not isinstance(label, str) or not label.strip() or any(c.isspace() for c in label):
            raise UserError(f"{path} line {line}: span label {label!r} must be a non-empty name without spaces")
        covered = range(bisect.bisect_right(ends, start), bisect.bisect_left(starts, end))  # words that overlap [start, end)
        if not covered:
            raise UserError(f"{path} line {line}: span [{start}, {end}) covers no word (only spaces): remove it")
        cuts = [i for i in (covered[0], covered[-1]) if offsets[i][0] < start < offsets[i][1] or offsets[i][0] < end < offsets[i][1]]
        if cuts:
            if strict:
                s, e = offsets[cuts[0]]
                raise UserError(f"{path} line {line}: span [{start}, {end}) {text[start:end]!r} cuts through the word {text[s:e]!r}: move its edges to word edges")
            snapped += (offsets[covered[0]][0] < start) + (end < offsets[covered[-1]][1])
        for k, i in enumerate(covered):
            if owner[i] is not None:
                other = owner[i]
                raise UserError(f"{path} line {line}: spans [{other[0]}, {other[1]}) and [{start}, {end}) overlap (on the word {text[offsets[i][0]:offsets[i][1]]!r}): NER needs non-overlapping spans")
            owner[i] = (start, end)
            tags[i] = ("B-" if k == 0 else "I-") + label
    return tags, snapped


def _joined(words: list[str], tags: list[str] | None, line: int) -> Sentence:
    """A sentence whose text is its words joined by single spaces."""
    offsets, pos = [], 0
    for w in words:
        offsets.append((pos, pos + len(w)))
        pos += len(w) + 1
    return Sentence(list(words), tags, line, " ".join(words), offsets)


# ------------------------------------------------------------------------------------------ tag schemes


def _split_tag(tag: str) -> tuple[str, str]:
    """("O", "") or (prefix, type) of a tag like B-PER."""
    if tag == "O":
        return "O", ""
    return tag[0], tag[2:]


def _valid_tag(tag: str) -> bool:
    return tag == "O" or (len(tag) > 2 and tag[0] in "BIES" and tag[1] == "-")


def detect_scheme(sequences: list[list[str]]) -> str:
    """The scheme of valid tags: `bioes` if any E- or S- tag occurs; else `iob1` if more entities start with I-
    than with B- (an entity starts after O, at the sentence start, or after another type; in IOB1 entities start
    with I- and B- only separates two adjacent entities of the same type, as in CoNLL-2003, whose training file
    also has two B-MISC after O); else `bio` (where an I-X that starts an entity is a broken tag)."""
    i_starts = b_starts = 0
    for tags in sequences:
        prev = ("O", "")
        for tag in tags:
            prefix, kind = _split_tag(tag)
            if prefix in "ES":
                return "bioes"
            starts = prev[0] == "O" or prev[1] != kind
            i_starts += prefix == "I" and starts
            b_starts += prefix == "B" and starts
            prev = (prefix, kind)
    return "iob1" if i_starts > b_starts else "bio"


def to_bio(
    sequences: list[list[str]], lines: list[list[int]], scheme: str, strict: bool, path: Path | str, warn: Warn = warn_stderr
) -> list[list[str]]:
    """`sequences` (tags in `scheme`, `auto` detected) as BIO. `lines[i][j]` is the file line of tag j of sentence i,
    for errors. Broken tags (an I-X, or BIOES E-X, that starts an entity) become B-X with one counted warning; with
    `strict` the first one is an error, as is any other tag the scheme does not allow."""
    for tags, tag_lines in zip(sequences, lines):
        for tag, line in zip(tags, tag_lines):
            if not _valid_tag(tag):
                raise UserError(f"{path} line {line}: tag {tag!r} is not O or B-/I-/E-/S- followed by a type (such as B-PER)")
    if scheme == "auto":
        scheme = detect_scheme(sequences)
    allowed = PREFIXES[scheme]
    bioes_strict = scheme == "bioes" and strict
    out, repaired, first = [], 0, None
    for tags, tag_lines in zip(sequences, lines):
        bio, prev, open_ = [], ("O", ""), False  # prev: the BIO tag just written; open_: a BIOES B-/I- not yet closed by E-
        for tag, line in zip(tags, tag_lines):
            prefix, kind = _split_tag(tag)
            if prefix not in allowed + "O":
                raise UserError(f"{path} line {line}: tag {tag!r} is not {scheme.upper()}: pass data.scheme=bioes (or auto) for BIOES files")
            if bioes_strict and open_ and prefix in "OBS":
                raise UserError(f"{path} line {line}: tag {tag!r} follows an entity that no E- tag closed, which BIOES does not allow")
            if prefix in "IE":
                continues = prev[0] in "BI" and prev[1] == kind and (open_ or scheme != "bioes")
                if not continues and scheme != "iob1":  # IOB1: an I-X after O or another type starts an entity
                    if strict:
                        after = "O" if prev[0] == "O" else f"{prev[0]}-{prev[1]}"
                        raise UserError(
                            f"{path} line {line}: tag {tag!r} starts an entity (after {after}), which {scheme.upper()} does not allow: "
                            f"fix it to {'B' if scheme == 'bio' else 'B or S'}-{kind}, or leave out strict to repair such tags"
                        )
                    repaired += 1
                    first = first or line
                prev = ("I" if continues else "B", kind)
            else:
                prev = ("B", kind) if prefix in "BS" else ("O", "")
            open_ = prefix in "BI"
            bio.append("O" if prev[0] == "O" else f"{prev[0]}-{kind}")
        if bioes_strict and open_:
            raise UserError(f"{path} line {tag_lines[-1]}: the sentence ends inside an entity: BIOES closes every entity with E- or S-")
        out.append(bio)
    if repaired:
        warn(f"{path}: {repaired} tag(s) I-X that start an entity (first at line {first}) read as B-X; pass strict to refuse them")
    return out


def from_bio(tags: list[str], scheme: str) -> list[str]:
    """BIO tags in `scheme` (bio, iob1 or bioes). IOB1 keeps B- only where an entity follows one of the same type."""
    if scheme == "bio":
        return list(tags)
    if scheme not in ("iob1", "bioes"):
        raise UserError(f"scheme {scheme!r}: write bio, iob1 or bioes")
    out = []
    for i, tag in enumerate(tags):
        prefix, kind = _split_tag(tag)
        if prefix == "O":
            out.append("O")
            continue
        if scheme == "iob1":
            prev = _split_tag(tags[i - 1]) if i else ("O", "")
            adjacent = prefix == "B" and prev[0] in "BI" and prev[1] == kind
            out.append(f"{'B' if adjacent else 'I'}-{kind}")
            continue
        nxt = _split_tag(tags[i + 1]) if i + 1 < len(tags) else ("O", "")
        last = not (nxt[0] == "I" and nxt[1] == kind)
        out.append(f"{('S' if last else 'B') if prefix == 'B' else ('E' if last else 'I')}-{kind}")
    return out


def write_conll(path: str | Path, sentences: list[Sentence], tags: list[list[str]], scheme: str = "bio") -> Path:
    """`word tag` lines in `scheme`, a blank line between sentences; written to a temporary file, then renamed."""
    path = Path(path)
    lines = []
    for sentence, sentence_tags in zip(sentences, tags):
        lines += [f"{w} {t}" for w, t in zip(sentence.words, from_bio(sentence_tags, scheme))] + [""]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------ alignment


@dataclass
class Alignment:
    """Sub-token features of a sentence: token ids, per-token label ids (-100 off first pieces) and where each word starts."""

    input_ids: list[int]
    labels: list[int]
    word_starts: list[int]  # token position of each word's first piece; -1: the word got no token
    truncated: int  # words cut off by max_length
    empty: int  # words the tokenizer turns into no token at all (e.g. a lone zero-width space)


def align(encoder, sentences: list[Sentence], label2id: dict[str, int] | None) -> list[Alignment]:
    """Encode the sentences' words (pre-tokenized) and put each word's label on its first sub-token.

    `encoder` is a `tokenizers.Tokenizer` (truncating at the model's max length, no padding). Words without a token
    get no label here and the tag O when decoded; `truncated` and `empty` count them."""
    encodings = encoder.encode_batch([s.words for s in sentences], is_pretokenized=True)
    out = []
    for sentence, enc in zip(sentences, encodings):
        starts = [-1] * len(sentence.words)
        labels = [IGNORE] * len(enc.ids)
        for pos, word in enumerate(enc.word_ids):
            if word is not None and starts[word] < 0:
                starts[word] = pos
                if label2id is not None and sentence.tags is not None:
                    labels[pos] = label2id[sentence.tags[word]]
        last = max((w for w in enc.word_ids if w is not None), default=-1)
        cut = len(enc.overflowing) > 0
        truncated = sum(1 for i, s in enumerate(starts) if s < 0 and cut and i > last)
        empty = sum(1 for s in starts if s < 0) - truncated
        out.append(Alignment(list(enc.ids), labels, starts, truncated, empty))
    return out


def word_probs(token_logits: np.ndarray, word_starts: list[int]) -> np.ndarray:
    """(n_words, n_labels) softmax probabilities read at each word's first sub-token; a word without one gets the
    first label (O) with probability 1."""
    token_logits = np.asarray(token_logits, dtype=np.float64)
    probs = np.zeros((len(word_starts), token_logits.shape[-1]))
    probs[:, 0] = 1.0
    starts = np.asarray(word_starts, dtype=np.int64)
    present = starts >= 0
    if present.any():
        rows = token_logits[starts[present]]
        rows = np.exp(rows - rows.max(axis=1, keepdims=True))
        probs[present] = rows / rows.sum(axis=1, keepdims=True)
    return probs


def decode_tags(probs: np.ndarray, labels: list[str]) -> tuple[list[str], np.ndarray]:
    """Each word's argmax tag, made valid BIO (an I-X that starts an entity reads as B-X), and its probability."""
    best = probs.argmax(axis=1)
    tags, prev = [], "O"
    for i in best:
        tag = labels[i]
        if tag.startswith("I-") and prev[2:] != tag[2:]:
            tag = "B-" + tag[2:]
        tags.append(tag)
        prev = tag
    return tags, probs[np.arange(len(best)), best]


def entities(sentence: Sentence, tags: list[str], scores: np.ndarray) -> list[dict]:
    """Entity spans of BIO `tags`: label, score (the mean probability of its words' tags), start, end (characters,
    end exclusive, in `sentence.text`) and text."""
    found, current = [], None  # current: [label, first word, last word]
    for i, tag in enumerate(list(tags) + ["O"]):
        if current is not None and not (tag.startswith("I-") and tag[2:] == current[0]):
            label, a, b = current
            start, end = sentence.offsets[a][0], sentence.offsets[b][1]
            found.append({"label": label, "score": float(np.mean(scores[a : b + 1])), "start": start, "end": end, "text": sentence.text[start:end]})
            current = None
        if tag.startswith(("B-", "I-")) and current is None:
            current = [tag[2:], i, i]
        elif current is not None:
            current[2] = i
    return found


def predicted_entities(sentence: Sentence, token_logits: np.ndarray, word_starts: list[int], labels: list[str]) -> list[dict]:
    """A sentence's entities from its tokens' logits (n_tokens, n_labels): `word_probs`, `decode_tags`, `entities`."""
    return entities(sentence, *decode_tags(word_probs(token_logits, word_starts), labels))


# ------------------------------------------------------------------------------------------ metrics


def _seqeval():
    """seqeval's `metrics` and `scheme` modules, with an install hint when it is missing."""
    try:
        from seqeval import metrics as seq_metrics, scheme as seq_scheme
    except ImportError:
        raise UserError("NER metrics need seqeval: pip install 'slmkit[ner]' (or pip install seqeval)") from None
    return seq_metrics, seq_scheme


def _entity_sets(sequences: list[list[str]]) -> list[set[tuple[str, int, int]]]:
    """Each sentence's entities (type, start word, end word) as seqeval's strict IOB2 mode reads them."""
    _, scheme = _seqeval()
    found = scheme.Entities([list(t) for t in sequences], scheme.IOB2).entities
    return [{(e.tag, e.start, e.end) for e in sentence} for sentence in found]


def _prf(counts: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall, F1 of summed (true positives, predicted, gold) counts; 0 where undefined."""
    tp, pred, gold = (float(x) for x in counts)
    p = tp / pred if pred else 0.0
    r = tp / gold if gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def sentence_counts(true: list[list[str]], pred: list[list[str]]) -> np.ndarray:
    """(n_sentences, 5): entity true positives, predicted entities, gold entities, correct words, words."""
    counts = np.zeros((len(true), 5), dtype=np.int64)
    for i, (t, p, ts, ps) in enumerate(zip(_entity_sets(true), _entity_sets(pred), true, pred)):
        counts[i] = (len(t & p), len(p), len(t), sum(a == b for a, b in zip(ts, ps)), len(ts))
    return counts


def quick_scores(true: list[list[str]], pred: list[list[str]]) -> dict:
    """The per-epoch numbers: entity F1, precision, recall (seqeval strict IOB2, micro) and token accuracy."""
    total = sentence_counts(true, pred).sum(axis=0)
    p, r, f1 = _prf(total[:3])
    return {"f1": f1, "precision": p, "recall": r, "token_accuracy": float(total[3] / max(total[4], 1))}


def ner_report(true: list[list[str]], pred: list[list[str]], n_resamples: int = 1000, seed: int = 0) -> dict:
    """Entity-level scores (seqeval strict IOB2: an entity counts when type and both edges match), per type, token
    accuracy, and 95% percentile-bootstrap intervals over sentences resampled with replacement."""
    seq_metrics, scheme = _seqeval()
    counts = sentence_counts(true, pred)
    p, r, f1 = _prf(counts.sum(axis=0)[:3])
    ci = {}
    for name, index in (("precision", 0), ("recall", 1), ("f1", 2)):
        ci[name] = metrics.bootstrap_ci(lambda c, _, k=index: _prf(c.sum(axis=0)[:3])[k], counts, counts, n_resamples, seed=seed)
    token_acc = lambda c, _: float(c[:, 3].sum() / max(c[:, 4].sum(), 1))  # noqa: E731 - a two-argument metric
    per_class = {}  # per entity type
    if counts[:, 1:3].sum():
        report = seq_metrics.classification_report(true, pred, mode="strict", scheme=scheme.IOB2, output_dict=True, zero_division=0)
        per_class = {
            kind: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]), "support": int(v["support"])}
            for kind, v in report.items()
            if not kind.endswith(" avg")
        }
    return {
        "n_examples": len(true),  # sentences (JSONL: texts)
        "n_entities": int(counts[:, 2].sum()),
        "n_predicted": int(counts[:, 1].sum()),
        "f1": f1,
        "f1_ci95": ci["f1"],
        "precision": p,
        "precision_ci95": ci["precision"],
        "recall": r,
        "recall_ci95": ci["recall"],
        "token_accuracy": token_acc(counts, None),
        "token_accuracy_ci95": metrics.bootstrap_ci(token_acc, counts, counts, n_resamples, seed=seed),
        "per_class": per_class,
        "scoring": "seqeval strict IOB2 (micro over entities); intervals: percentile bootstrap over sentences",
    }
