"""Text augmentation for distillation: new in-domain texts the teacher labels with soft targets.

TinyBERT (Jiao et al. 2020) grows the training set ~20x by replacing words with similar ones and lets the
teacher label the new texts; it asks BERT's masked-LM head for replacements of single-piece words (GloVe
neighbours for the others). Our teachers (all-MiniLM-L6-v2, fine-tuned) ship no MLM head, so replacements come
from the teacher's own word-embedding matrix instead: the `NEIGHBOURS` whole-word vocabulary entries with the
highest cosine similarity. Only words that are one vocabulary entry are replaced; the rest are kept. On top of
replacements, each word is dropped with probability `P_DROP` and neighbouring words are swapped with
probability `P_SWAP` (local shuffles, as in EDA; Wei & Zou 2019).

Everything here is pure and seeded: text i's j-th variant draws from `numpy.random.default_rng([seed, i, j])`,
so the same inputs give the same texts whatever the order or number of texts generated.
"""

from __future__ import annotations

import re
from typing import Iterable

import numpy as np

NEIGHBOURS = 15  # candidates per word (TinyBERT's K)
P_REPLACE = 0.4  # probability of replacing a replaceable word (TinyBERT's p_t)
P_DROP = 0.1  # probability of dropping a word (never the last one left)
P_SWAP = 0.1  # probability of swapping a word with the next one
RETRIES = 3  # new draws when a variant came out identical to its source
CHUNK = 1024  # query words per similarity block: (CHUNK, vocabulary) floats at a time

_WORD = re.compile(r"^(\W*)(\w+)(\W*)$")  # leading punctuation, the word, trailing punctuation


def whole_words(vocab: dict[str, int]) -> dict[str, int]:
    """The vocabulary entries that are whole alphabetic words of 2+ letters (no '##' pieces, no [SPECIAL])."""
    return {token: i for token, i in vocab.items() if len(token) >= 2 and token.isalpha()}


def build_neighbours(vocab: dict[str, int], embeddings: np.ndarray, words: Iterable[str], k: int = NEIGHBOURS) -> dict[str, list[str]]:
    """For each of `words` that is a whole-word token (as is, or lower-cased), its `k` nearest whole-word tokens
    by cosine similarity of the rows of `embeddings` (vocabulary, width), best first, the word itself excluded.

    Keys are the vocabulary form of the word (lower case for an uncased vocabulary)."""
    candidates = {t: i for t, i in whole_words(vocab).items() if i < len(embeddings)}
    tokens = sorted(candidates, key=candidates.__getitem__)  # (n_candidates,) in id order: deterministic ties
    ids = np.array([candidates[t] for t in tokens], dtype=np.int64)
    unit = embeddings[ids].astype(np.float32)
    unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)  # (n_candidates, width)
    position = {t: i for i, t in enumerate(tokens)}
    queries = sorted({_vocab_form(w, candidates) for w in words} - {None})
    k = min(k, len(tokens) - 1)
    neighbours: dict[str, list[str]] = {}
    for start in range(0, len(queries), CHUNK):
        chunk = queries[start : start + CHUNK]
        rows = np.array([position[w] for w in chunk])
        similarity = unit[rows] @ unit.T  # (chunk, n_candidates)
        similarity[np.arange(len(chunk)), rows] = -np.inf  # never the word itself
        top = np.argpartition(-similarity, k, axis=1)[:, :k]  # (chunk, k) the k most similar, unordered
        for word, row, cols in zip(chunk, similarity, top):
            best = cols[np.lexsort((cols, -row[cols]))]  # most similar first; ties by id
            neighbours[word] = [tokens[c] for c in best]
    return neighbours


def augment_texts(texts: list[str], per_text: float, neighbours: dict[str, list[str]], seed: int) -> list[tuple[int, str]]:
    """`round(per_text · len(texts))` new texts as (source index, text), grouped by source in input order.

    Every text gets ⌊per_text⌋ variants; a seeded choice of texts gets one more for the fractional part."""
    n = len(texts)
    counts = np.full(n, int(per_text), dtype=np.int64)
    extra = round((per_text - int(per_text)) * n)
    if extra:
        counts[np.random.default_rng([seed, n]).choice(n, extra, replace=False)] += 1
    return [(i, augment_text(texts[i], neighbours, np.random.default_rng([seed, i, j]))) for i in range(n) for j in range(counts[i])]


def augment_text(text: str, neighbours: dict[str, list[str]], rng: np.random.Generator) -> str:
    """One variant of `text`: words replaced by embedding neighbours, dropped, and locally swapped.

    Retried up to `RETRIES` times while the variant equals the text (short texts often come out unchanged)."""
    words = text.split()
    for _ in range(RETRIES + 1):
        variant = _variant(words, neighbours, rng)
        if variant != words:
            break
    return " ".join(variant)


def _variant(words: list[str], neighbours: dict[str, list[str]], rng: np.random.Generator) -> list[str]:
    out = []
    for word in words:
        match = _WORD.match(word)
        lead, core, trail = match.groups() if match else ("", "", "")
        candidates = neighbours.get(core) or neighbours.get(core.lower())
        if candidates and rng.random() < P_REPLACE:
            new = candidates[rng.integers(len(candidates))]
            new = new.capitalize() if core[:1].isupper() and core[1:].islower() else new  # "Invoice" -> "Refund"
            word = lead + new + trail
        out.append(word)
    keep = rng.random(len(out)) >= P_DROP
    if keep.any():
        out = [w for w, kept in zip(out, keep) if kept]
    i = 0
    while i < len(out) - 1:
        if rng.random() < P_SWAP:
            out[i], out[i + 1] = out[i + 1], out[i]
            i += 1  # a word moves at most one place
        i += 1
    return out


def _vocab_form(word: str, candidates: dict[str, int]) -> str | None:
    match = _WORD.match(word)
    if not match:
        return None
    core = match.group(2)
    return core if core in candidates else core.lower() if core.lower() in candidates else None
