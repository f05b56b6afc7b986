"""Autocomplete: word suggestions from a causal LM or from a word n-gram baseline, and what they save the typist.

A *suggester* answers `suggest(context, partial, k)`: the k most likely whole words that start with `partial`
(what the user has typed of the current word) after `context` (the text before it). Words are maximal runs of
non-space characters, so punctuation stays attached ("card?") the same way for every suggester.

- `LMSuggester` completes words with any causal LM behind the one decode loop's `Stepper` (PyTorch or ONNX
  Runtime, `slmkit.generate`): it runs the context once, then a beam over the tokens consistent with the typed
  prefix gives each word its probability (the word's tokens, then any token that starts the next word); the k
  most probable words are the suggestions. A stepper that cannot copy its cache gets greedy completions of the
  k most likely first tokens instead.
- `KneserNey` is the baseline: an interpolated Kneser-Ney word n-gram model (4-gram by default). It computes
  exactly the probabilities of NLTK's `nltk.lm.KneserNeyInterpolated` (tests/test_autocomplete.py checks them
  against NLTK) from precomputed counts, so scoring is a few dictionary reads; NLTK recounts the continuation
  counts over every n-gram on each call, far too slow to suggest at every keystroke.

The metrics are pure functions of a suggester and texts:
- `next_word_accuracy`: at every word of every text, is the word among the k suggestions made from the words
  before it (nothing typed of it yet)?
- `keystroke_savings`: the user types each word one character at a time while the top suggestion shows as
  ghost text; once it is the word, one keystroke (Tab) accepts it. Spaces are typed. Savings = 1 - keystrokes
  with suggestions / characters of the text.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Iterable, Protocol

import numpy as np

WORD = re.compile(r"\S+")
BOS, EOS = "<s>", "</s>"


class Suggester(Protocol):
    def suggest(self, context: str, partial: str, k: int) -> list[str]: ...


def words(text: str) -> list[str]:
    return WORD.findall(text)


# ---------------------------------------------------------------------------------------------------- metrics
@dataclass
class AutocompleteScores:
    next_word_accuracy: float  # fraction of word positions whose word is among the k suggestions
    keystroke_savings: float  # 1 - keystrokes with ghost-text suggestions / characters typed without
    words: int
    characters: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def next_word_hits(suggester: Suggester, texts: Iterable[str], k: int = 3) -> np.ndarray:
    """1/0 per word position of every text: the word is among the k suggestions made from the words before it."""
    hits = []
    for text in texts:
        ws = words(text)
        for i, word in enumerate(ws):
            hits.append(word in suggester.suggest(" ".join(ws[:i]), "", k))
    return np.array(hits, dtype=np.float64)


def word_keystrokes(suggester: Suggester, context: str, word: str) -> int:
    """Keystrokes to enter `word` after `context` with the top suggestion shown as ghost text (Tab accepts)."""
    for typed in range(len(word) - 1):  # accepting at len(word) - 1 or later saves nothing
        if suggester.suggest(context, word[:typed], 1)[:1] == [word]:
            return typed + 1
    return len(word)


def text_keystrokes(suggester: Suggester, text: str) -> tuple[int, int]:
    """(keystrokes with suggestions, characters without) for one text, words joined by single spaces."""
    ws = words(text)
    with_suggestions = sum(word_keystrokes(suggester, " ".join(ws[:i]), w) for i, w in enumerate(ws))
    spaces = max(len(ws) - 1, 0)
    return with_suggestions + spaces, sum(map(len, ws)) + spaces


def autocomplete_scores(suggester: Suggester, texts: list[str], k: int = 3) -> AutocompleteScores:
    """Next-word accuracy@k and keystroke savings of `suggester` over `texts`."""
    hits = next_word_hits(suggester, texts, k)
    pressed = typed = 0
    for text in texts:
        a, b = text_keystrokes(suggester, text)
        pressed, typed = pressed + a, typed + b
    return AutocompleteScores(float(hits.mean()) if len(hits) else 0.0, 1.0 - pressed / max(typed, 1), len(hits), typed)


# ---------------------------------------------------------------------------------------------------- baseline
class KneserNey:
    """Interpolated Kneser-Ney word n-gram model, the formulation of NLTK's `KneserNeyInterpolated`.

    Sentences are padded with order-1 `<s>` on the left and `</s>` on the right, as NLTK's
    `padded_everygram_pipeline` does. The highest order uses raw counts, the lower orders continuation counts
    (how many distinct words precede the n-gram), the unigram level the continuation share of each word.
    """

    def __init__(self, sentences: Iterable[list[str]], order: int = 4, discount: float = 0.75):
        if order < 2:
            raise ValueError("order must be at least 2")
        self.order, self.discount = order, discount
        raw: dict[tuple, Counter] = defaultdict(Counter)  # context (1..order-1 words) -> next-word counts
        for sentence in sentences:
            padded = [BOS] * (order - 1) + list(sentence) + [EOS] * (order - 1)
            for n in range(2, order + 1):
                for i in range(len(padded) - n + 1):
                    raw[tuple(padded[i : i + n - 1])][padded[i + n - 1]] += 1
        self.raw = dict(raw)
        # continuation counts: cont[ctx][w] = distinct x with (x, *ctx, w) seen; ctx may be () (the unigram level)
        cont: dict[tuple, Counter] = defaultdict(Counter)
        for context, followers in self.raw.items():
            for word in followers:
                cont[context[1:]][word] += 1
        self.cont = dict(cont)
        self.cont_total = {context: sum(c.values()) for context, c in self.cont.items()}
        unigram = self.cont.get((), Counter())
        total = max(self.cont_total.get((), 0), 1)
        self.unigram = {w: c / total for w, c in unigram.items()}
        # the words a suggestion may offer, most likely first under the unigram level; and by typed prefix
        ranked = sorted((w for w in self.unigram if w not in (BOS, EOS)), key=lambda w: (-self.unigram[w], w))
        self._by_prefix: dict[str, list[str]] = defaultdict(list)
        for w in ranked:
            for j in range(len(w) + 1):
                bucket = self._by_prefix[w[:j]]
                if len(bucket) < 16:
                    bucket.append(w)

    def score(self, word: str, context: tuple = ()) -> float:
        """P(word | context), context cut to the last order-1 words."""
        context = tuple(context)[-(self.order - 1) :] if context else ()
        if not context:
            return self.unigram.get(word, 0.0)
        followers = self.raw.get(context)
        if not followers:
            alpha, gamma = 0.0, 1.0
        elif len(context) + 1 == self.order:
            total = sum(followers.values())
            alpha = max(followers[word] - self.discount, 0.0) / total
            gamma = self.discount * len(followers) / total
        else:
            total = self.cont_total.get(context, 0)
            if total == 0:
                alpha, gamma = 0.0, 1.0
            else:
                alpha = max(self.cont[context][word] - self.discount, 0.0) / total
                gamma = self.discount * len(followers) / total
        return alpha + gamma * self.score(word, context[1:])

    def suggest(self, context: str, partial: str, k: int) -> list[str]:
        """The k most probable words starting with `partial` after `context` (exact: a word seen after no
        suffix of the context scores the unigram level times the same weights, so the unigram ranking decides)."""
        history = tuple([BOS] * (self.order - 1) + words(context))[-(self.order - 1) :]
        candidates = set(self._by_prefix.get(partial, [])[: max(k, 1)])
        for n in range(1, self.order):
            for w in self.raw.get(history[-n:], ()):
                if w.startswith(partial) and w not in (BOS, EOS):
                    candidates.add(w)
        return sorted(candidates, key=lambda w: (-self.score(w, history), w))[:k]

    def perplexity(self, sentences: Iterable[list[str]]) -> float:
        """Per-word perplexity (the end of each sentence counted as one word); unseen words at a floor of 1e-12."""
        logp, n = 0.0, 0
        for sentence in sentences:
            padded = [BOS] * (self.order - 1) + list(sentence) + [EOS]
            for i in range(self.order - 1, len(padded)):
                logp += math.log(max(self.score(padded[i], tuple(padded[i - self.order + 1 : i])), 1e-12))
                n += 1
        return math.exp(-logp / max(n, 1))


# --------------------------------------------------------------------------------------------------- LM words
class LMSuggester:
    """Word completions from a causal LM behind a `Stepper` (`start(ids) -> logits`, `step(id) -> logits`).

    `encode(text) -> ids` and `token_texts[id]` (each token's decoded text) come from the model's tokenizer;
    `bos_id` goes before every context. The model continues the context with " " + the typed prefix + the rest
    of the word, at most `max_tokens` tokens of it: `beam_words` (the default, `beam` hypotheses, for steppers
    with `snapshot`/`restore`) or `greedy_words` (`beam=0`). While typed characters remain to match, every
    token that starts with the next one is a candidate; after them, the `scan` most likely tokens.
    """

    def __init__(self, stepper, encode, token_texts: list[str], bos_id: int | None, end_ids: Iterable[int] = (), max_tokens: int = 8, scan: int = 64, beam: int = 4):
        self.stepper, self.encode, self.texts = stepper, encode, token_texts
        self.bos = [bos_id] if bos_id is not None else []
        self.end = set(end_ids)
        self.max_tokens, self.scan, self.beam = max_tokens, scan, beam
        # the tokens that end a word before them: those starting with a space, and the end ids
        self._boundary = np.array([i for i, t in enumerate(token_texts) if t[:1].isspace() or i in self.end], dtype=np.int64)
        by_first: dict[str, list[int]] = defaultdict(list)  # tokens by their first character: what can match a typed prefix
        for i, text in enumerate(token_texts):
            if text:
                by_first[text[0]].append(i)
        self._by_first = {ch: np.array(ids) for ch, ids in by_first.items()}

    @classmethod
    def from_lm(cls, lm, **options) -> "LMSuggester":
        """From `slmkit.generate.open_lm(directory)`: a PyTorch or an exported ONNX causal LM."""
        tok = lm.tokenizer
        texts = [tok.decode([i], skip_special_tokens=True) for i in range(tok.get_vocab_size())]
        encode = lambda text: tok.encode(text, add_special_tokens=False).ids  # noqa: E731
        return cls(lm.stepper, encode, texts, lm.bos_id, lm.eos_ids, **options)

    def _options(self, logits: np.ndarray, produced: str, lead: str, required: str) -> list[tuple[int, str]]:
        """The tokens, most likely first, that keep the text after the context consistent with `required`."""
        out = []
        need = required[len(produced) :]
        if need:  # only tokens that start with the next required character can follow
            ids = self._by_first.get(need[0], np.zeros(0, dtype=np.int64))
            order = ids[np.argsort(-logits[ids], kind="stable")]
        else:
            order = np.argsort(-logits)[: self.scan]
        for t in order:
            t = int(t)
            if t in self.end:
                if len(produced) >= len(required) and len(produced) > len(lead):
                    out.append((t, ""))
                continue
            text = produced + self.texts[t]
            if text == produced or not (text.startswith(required) or required.startswith(text)):
                continue
            if len(text) > len(lead) and text[len(lead)].isspace():
                continue  # the word starts right after the one space
            out.append((t, text))
        return out

    def _complete(self, token: int, text: str, lead: str, required: str) -> tuple[str | None, list[int] | None]:
        """Follow `token` (the text after the context so far: `text`) greedily to the end of the word: (the word,
        its tokens; None where a token also holds the next word's start)."""
        path = [token]
        for _ in range(self.max_tokens):
            if token in self.end:
                return self._word(text, lead, final=True), path[:-1]
            word = self._word(text, lead, final=False) if len(text) >= len(required) else None
            if word:
                return word, (path[:-1] if self.texts[token][:1].isspace() else None)
            options = self._options(self.stepper.step(token), text, lead, required)
            if not options:
                return None, None
            token, text = options[0][0], options[0][1] or text
            path.append(token)
        return self._word(text, lead, final=True), path

    @staticmethod
    def _word(text: str, lead: str, final: bool) -> str | None:
        body = text[len(lead) :]
        if any(ch.isspace() for ch in body):
            return body.split()[0]
        return (body or None) if final else None

    def suggest(self, context: str, partial: str, k: int) -> list[str]:
        """The k most probable words (a beam over tokens, where the stepper can `snapshot`), else `greedy_words`."""
        if self.beam and hasattr(self.stepper, "snapshot"):
            return self.beam_words(context, partial, k)
        return self.greedy_words(context, partial, k)

    def beam_words(self, context: str, partial: str, k: int) -> list[str]:
        """Word probabilities by a beam over tokens: a hypothesis that has covered the typed prefix and then meets
        a token starting with a space (or an end id) finishes its word with the probability of all those tokens
        together; the `beam` most probable unfinished hypotheses go on, at most `max_tokens` deep. The k words of
        highest probability, found once no unfinished hypothesis can beat the k-th."""
        context = " ".join(words(context))
        prompt = self.bos + (list(self.encode(context)) if context else [])
        lead = " " if context else ""
        required = lead + partial
        logits = self.stepper.start(prompt)
        beams = [(0.0, "", self.stepper.snapshot(), logits)]
        found: dict[str, float] = {}
        for _ in range(self.max_tokens):
            grown = []
            for score, text, state, logits in beams:
                logp = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
                if len(text) > len(required):  # the word may end here (it adds to what was typed)
                    end = logp[self._boundary]
                    word = text[len(lead) :]
                    total = score + float(end.max() + np.log(np.exp(end - end.max()).sum()))
                    found[word] = np.logaddexp(found[word], total) if word in found else total
                for token, new_text in self._options(logits, text, lead, required)[: self.beam]:
                    if token not in self.end and not any(ch.isspace() for ch in new_text[len(lead) :]):
                        grown.append((score + float(logp[token]), new_text, state, token))
            grown.sort(key=lambda g: -g[0])
            best = sorted(found.values(), reverse=True)
            if not grown or (len(best) >= k and grown[0][0] <= best[k - 1]):
                break  # no unfinished word can still enter the top k
            beams = []
            for score, text, state, token in grown[: self.beam]:
                self.stepper.restore(state)
                logits = self.stepper.step(token)
                beams.append((score, text, self.stepper.snapshot(), logits))
        ranked = sorted(found.items(), key=lambda item: -item[1])
        return [w for w, _ in ranked if w.startswith(partial)][:k]

    def greedy_words(self, context: str, partial: str, k: int) -> list[str]:
        """The i-th suggestion: the i-th most likely consistent first token, completed greedily (one sequence
        at a time: any stepper)."""
        context = " ".join(words(context))
        prompt = self.bos + (list(self.encode(context)) if context else [])
        lead = " " if context else ""
        required = lead + partial
        context_ids = list(self.encode(context)) if context else []
        options = self._options(self.stepper.start(prompt), "", lead, required)
        found: list[str] = []
        for i, (token, text) in enumerate(options[: 2 * k]):  # each try costs a pass over the context
            if len(found) >= k:
                break
            if token in self.end:
                continue
            if i > 0:
                self.stepper.start(prompt)  # the stepper holds one sequence: run the context again
            word, path = self._complete(token, text, lead, required)
            if not word or not word.startswith(partial) or word == partial or word in found:
                continue
            # a path the tokenizer would never produce (" " then "p" where " p" is one token) is one the model
            # never saw in training: its continuation is noise
            if path is not None and list(self.encode(context + lead + word))[len(context_ids) :] != path:
                continue
            found.append(word)
        return found
