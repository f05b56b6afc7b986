"""The one decode loop of slmkit's causal language models: greedy, sampling and beam search over a `Stepper`.

A `Stepper` is one model behind the loop: `start(prompt_ids)` resets it, runs the prompt and returns the logits of the
next token; `step(token_id)` feeds one token (reusing the model's KV cache) and returns the logits of the one after.
PyTorch (`slmkit.lm.TorchStepper`) and ONNX Runtime (`slmkit.runtime`) both provide it, so the sampling rules, stop
strings and streaming below are written once and behave the same on both.

This module is torch-free (numpy and `tokenizers` only): the ONNX runtime and the server import it without torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from slmkit.config import _f  # torch-free: yaml and dataclasses only
from slmkit.errors import UserError


@dataclass
class GenerationConfig:
    """How to continue a prompt: how many tokens, how to pick each one, and where to stop."""

    max_new_tokens: int = _f(32, "Most tokens to generate after the prompt.")
    temperature: float = _f(1.0, "Sampling temperature; 0 picks the most likely token every step (greedy).")
    top_k: int = _f(0, "Sample among the k most likely tokens only; 0 turns it off.")
    top_p: float = _f(1.0, "Nucleus sampling: sample among the fewest tokens whose probabilities sum to at least top_p; 1 turns it off.")
    repetition_penalty: float = _f(1.0, "Penalize tokens already in the prompt or output (>1 discourages repeats; 1 turns it off).")
    stop: tuple[str, ...] = _f((), "Stop strings: generation ends before the first one produced (the text is cut before it).")
    num_beams: int = _f(1, "Beam search with this many beams when more than 1 (deterministic; the text comes at the end, not streamed).")
    seed: int | None = _f(None, "Seed of the sampling: the same seed, prompt and model give the same text; none: a fresh draw each time.")

    def validate(self) -> None:
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens", f"must be at least 1 (got {self.max_new_tokens})"),
            (self.temperature >= 0, "temperature", f"must be 0 or more (got {self.temperature})"),
            (self.top_k >= 0, "top_k", f"must be 0 or more (got {self.top_k})"),
            (0 < self.top_p <= 1, "top_p", f"must be in (0, 1] (got {self.top_p})"),
            (self.repetition_penalty > 0, "repetition_penalty", f"must be positive (got {self.repetition_penalty})"),
            (self.num_beams >= 1, "num_beams", f"must be at least 1 (got {self.num_beams})"),
            (all(isinstance(s, str) and s for s in self.stop), "stop", f"stop strings must be non-empty text (got {list(self.stop)!r})"),
        ]
        for ok, key, message in checks:
            if not ok:
                raise UserError(f"generation setting {key} {message}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Stepper(Protocol):
    """One causal LM behind the decode loop, holding its own KV cache between calls."""

    def start(self, prompt_ids: list[int]) -> np.ndarray:
        """Reset, run the prompt; the logits (vocab,) float32 of the next token."""
        ...

    def step(self, token_id: int) -> np.ndarray:
        """Feed one token; the logits (vocab,) float32 of the next."""
        ...


# ------------------------------------------------------------------------------------------ logits processors
# Pure functions over one row of logits (vocab,); each returns a new array.


def apply_repetition_penalty(logits: np.ndarray, previous_ids: Sequence[int], penalty: float) -> np.ndarray:
    """The CTRL rule (as in Hugging Face): a seen token's positive logit is divided by `penalty`, a negative one multiplied."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if penalty == 1.0 or len(previous_ids) == 0:
        return out
    seen = np.unique(np.asarray(previous_ids, dtype=np.int64))
    seen = seen[(seen >= 0) & (seen < out.shape[-1])]
    values = out[seen]
    out[seen] = np.where(values > 0, values / penalty, values * penalty)
    return out


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Divide by the temperature (>0): below 1 sharpens the distribution, above 1 flattens it."""
    if temperature <= 0:
        raise ValueError("temperature must be positive (0 means greedy, handled before sampling)")
    return np.asarray(logits, dtype=np.float32) / np.float32(temperature)


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits (ties at the k-th value kept too), the rest -inf; k <= 0 or >= vocab keeps all."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if k <= 0 or k >= out.shape[-1]:
        return out
    kth = np.partition(out, -k)[-k]
    out[out < kth] = -np.inf
    return out


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the fewest most-likely tokens whose probabilities sum to at least p (always at least one), the rest -inf."""
    out = np.array(logits, dtype=np.float32, copy=True)
    if p >= 1.0:
        return out
    order = np.argsort(-out, kind="stable")
    probs = softmax(out[order])
    before = np.cumsum(probs) - probs  # mass of the tokens ranked above each one
    drop = order[before >= p]
    out[drop] = -np.inf
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - np.max(x)
    e = np.exp(x)
    return e / e.sum()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - np.max(x)
    return x - np.log(np.exp(x).sum())


def next_token(logits: np.ndarray, history: Sequence[int], cfg: GenerationConfig, rng: np.random.Generator) -> int:
    """Pick the next token id: repetition penalty, then greedy (temperature 0) or temperature, top-k, top-p and a draw."""
    scores = apply_repetition_penalty(logits, history, cfg.repetition_penalty)
    if cfg.greedy:
        return int(np.argmax(scores))
    scores = top_p_filter(top_k_filter(apply_temperature(scores, cfg.temperature), cfg.top_k), cfg.top_p)
    probs = softmax(scores)
    return int(rng.choice(probs.shape[-1], p=probs))


# ------------------------------------------------------------------------------------------ the loop


def generate_ids(stepper: Stepper, prompt_ids: Sequence[int], cfg: GenerationConfig, eos_ids: Sequence[int] = ()) -> Iterator[int]:
    """Stream the new token ids after `prompt_ids` (greedy or sampled; beam search yields its best sequence at the end).

    Ends after `cfg.max_new_tokens` tokens, at an end-of-sequence id (not yielded), or when the stepper's
    `context_length` (when it has one) is full. The consumer may stop early (a stop string): nothing runs ahead.
    """
    cfg.validate()
    prompt_ids = [int(t) for t in prompt_ids]
    if not prompt_ids:
        raise UserError("empty prompt: give some text (or a model whose tokenizer adds a beginning-of-sequence token)")
    eos = {int(t) for t in eos_ids}
    limit = getattr(stepper, "context_length", None)
    budget = cfg.max_new_tokens if limit is None else min(cfg.max_new_tokens, int(limit) - len(prompt_ids))
    if budget <= 0:
        return
    if cfg.num_beams > 1:
        yield from beam_search(stepper, prompt_ids, cfg, eos, budget)
        return
    rng = np.random.default_rng(cfg.seed)
    history = list(prompt_ids)
    logits = stepper.start(prompt_ids)
    for i in range(budget):
        token = next_token(logits, history, cfg, rng)
        if token in eos:
            return
        yield token
        history.append(token)
        if i + 1 < budget:  # the last token needs no forward pass of its own
            logits = stepper.step(token)


def beam_search(stepper: Stepper, prompt_ids: list[int], cfg: GenerationConfig, eos: set[int], budget: int) -> list[int]:
    """The most likely continuation among `cfg.num_beams` beams (log-probabilities, repetition penalty applied).

    Each step keeps the `num_beams` best of all beam x token extensions; a beam that picks an end-of-sequence id
    is finished. The best finished or surviving beam by mean log-probability per token wins (length penalty 1, as in
    Hugging Face). Beams are scored with `start` on their whole prefix, so any stepper works without forking its
    cache (num_beams full passes a token: meant for short completions).
    """
    width = cfg.num_beams
    beams: list[tuple[float, list[int]]] = [(0.0, [])]
    finished: list[tuple[float, list[int]]] = []

    def normalized(score: float, tokens: list[int], ended: bool) -> float:
        return score / max(1, len(tokens) + int(ended))

    for _ in range(budget):
        candidates: list[tuple[float, list[int], int]] = []
        for score, tokens in beams:
            logits = stepper.start(prompt_ids + tokens)
            logp = log_softmax(apply_repetition_penalty(logits, prompt_ids + tokens, cfg.repetition_penalty))
            best = np.argsort(-logp, kind="stable")[: 2 * width]
            candidates.extend((score + float(logp[t]), tokens, int(t)) for t in best)
        candidates.sort(key=lambda c: -c[0])
        beams = []
        for rank, (score, tokens, token) in enumerate(candidates):
            if token in eos:
                if rank < width:  # only an end among the top `width` counts (as in Hugging Face)
                    finished.append((score, tokens))
                continue
            beams.append((score, tokens + [token]))
            if len(beams) == width:
                break
        if not beams:  # every candidate ended
            break
        if len(finished) >= width:
            best_running = max(normalized(s, t, False) for s, t in beams)
            if max(normalized(s, t, True) for s, t in finished) >= best_running:
                break
    pool = [(normalized(s, t, True), t) for s, t in finished] + [(normalized(s, t, False), t) for s, t in beams]
    return max(pool, key=lambda p: p[0])[1] if pool else []


# ------------------------------------------------------------------------------------------ text


class _Detokenizer:
    """Incremental decoding: each new token's text, once it forms whole characters.

    Decodes a short window of the ids (a few tokens before the new ones, for tokenizers whose pieces depend on their
    left neighbour, such as SentencePiece's leading spaces) and emits what the window added; a window ending in an
    incomplete UTF-8 sequence (U+FFFD) waits for the next token.
    """

    def __init__(self, tokenizer: Any, prompt_ids: list[int]):
        self.tokenizer = tokenizer
        self.ids = list(prompt_ids)
        self.prefix = max(0, len(self.ids) - 5)
        self.read = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """What is still held at the end (bytes of an unfinished character decode to U+FFFD, as in `decode`)."""
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before) :] if len(after) > len(before) else ""


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string."""
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest


def generate_text(
    stepper: Stepper,
    tokenizer: Any,
    prompt: str | Sequence[int],
    cfg: GenerationConfig,
    *,
    eos_ids: Sequence[int] = (),
    bos_id: int | None = None,
    info: dict | None = None,
) -> Iterator[str]:
    """Stream the continuation of `prompt` as text pieces (a `tokenizers.Tokenizer`, or anything with encode/decode).

    `prompt` is text (encoded with the tokenizer's own special tokens, as Hugging Face does) or token ids. The text
    ends before the first stop string, even one split across pieces: text that might begin a stop string is held
    back until it is known not to. `eos_ids` end it too (`special_ids(directory)` reads them); an empty encoded
    prompt starts from `bos_id`. When given, `info` receives `finish_reason` ("stop" or "length"), `prompt_tokens`
    and `completion_tokens`.
    """
    cfg.validate()
    if isinstance(prompt, str):
        encoded = tokenizer.encode(prompt)
        prompt_ids = list(getattr(encoded, "ids", encoded))
    else:
        prompt_ids = [int(t) for t in prompt]
    if not prompt_ids and bos_id is not None:
        prompt_ids = [int(bos_id)]
    info = {} if info is None else info
    info.update(finish_reason="length", prompt_tokens=len(prompt_ids), completion_tokens=0)
    detok = _Detokenizer(tokenizer, prompt_ids)
    eos = [int(t) for t in eos_ids]
    held = ""  # emitted by the tokenizer, not yet yielded: it may be the start of a stop string
    produced = 0
    tokens = generate_ids(stepper, prompt_ids, cfg, eos)
    try:
        for token in tokens:
            produced += 1
            info["completion_tokens"] = produced
            held += detok.add(token)
            if not held:
                continue
            hits = [i for i in (held.find(s) for s in cfg.stop) if i >= 0]
            if hits:
                info["finish_reason"] = "stop"
                if min(hits) > 0:
                    yield held[: min(hits)]
                return
            keep = _held_back(held, cfg.stop)
            if keep < len(held):
                yield held[: len(held) - keep]
                held = held[len(held) - keep :]
        limit = getattr(stepper, "context_length", None)
        budget = cfg.max_new_tokens if limit is None else min(cfg.max_new_tokens, int(limit) - len(prompt_ids))
        if produced < budget:
            info["finish_reason"] = "stop"  # an end-of-sequence token; a full context window stays "length"
        held += detok.flush()
        hits = [i for i in (held.find(s) for s in cfg.stop) if i >= 0]
        if hits:
            info["finish_reason"] = "stop"
            held = held[: min(hits)]
        if held:
            yield held
    finally:
        tokens.close()


def special_ids(directory: str | Path) -> dict:
    """`bos_id` and `eos_ids` of a Hugging Face causal-LM directory (config.json, generation_config.json and the
    tokenizer config), as keyword arguments for `generate_text`."""
    directory = Path(directory)
    eos: list[int] = []
    bos = None
    for name in ("generation_config.json", "config.json"):
        path = directory / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        value = data.get("eos_token_id")
        for t in value if isinstance(value, list) else [value]:
            if isinstance(t, int) and t not in eos:
                eos.append(t)
        if bos is None and isinstance(data.get("bos_token_id"), int):
            bos = data["bos_token_id"]
    return {"bos_id": bos, "eos_ids": tuple(eos)}


def truncate_prompt(prompt_ids: Sequence[int], context_length: int | None, max_new_tokens: int, strict: bool = False) -> tuple[list[int], int]:
    """Fit a prompt into the context window, leaving room for `max_new_tokens` (or at least one token):
    (the prompt ids kept, how many were dropped from the left). `strict` refuses to drop any."""
    ids = list(prompt_ids)
    if context_length is None:
        return ids, 0
    room = max(1, context_length - min(max_new_tokens, context_length // 2))
    if len(ids) <= room:
        return ids, 0
    if strict:
        raise UserError(
            f"prompt is {len(ids)} tokens but the model's context window is {context_length} "
            f"(room for {room} with {max_new_tokens} new tokens): shorten the prompt, lower --max-tokens, or drop --strict to cut it from the left"
        )
    return ids[len(ids) - room :], len(ids) - room


# ------------------------------------------------------------------------------------------ opening a model


@dataclass
class OpenLM:
    """A causal LM ready for the decode loop: its stepper, its `tokenizers.Tokenizer` and what generation needs."""

    stepper: Stepper
    tokenizer: Any  # tokenizers.Tokenizer
    bos_id: int | None
    eos_ids: tuple[int, ...]
    context_length: int | None
    chat_template: str | None
    backend: str  # "torch" or "onnx"

    def encode(self, prompt: str, chat: bool = False) -> list[int]:
        """A prompt's ids: as the tokenizer encodes a text (with its own <s>), or (`chat`) the chat template applied
        to one user message with the assistant's turn opened."""
        if not chat:
            return list(self.tokenizer.encode(prompt).ids)
        if not self.chat_template:
            raise UserError("--chat: this model has no chat template (chat_template.jinja or tokenizer_config.json): drop --chat")
        text = render_chat(self.chat_template, [{"role": "user", "content": prompt}], self._specials())
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def _specials(self) -> dict:
        token = lambda i: self.tokenizer.id_to_token(i) if i is not None else ""  # noqa: E731
        return {"bos_token": token(self.bos_id), "eos_token": token(self.eos_ids[0] if self.eos_ids else None)}


def open_lm(directory: str | Path, threads: int | None = None) -> OpenLM:
    """Open a causal-LM directory for generation: an exported ONNX model (model.onnx present; slmkit.runtime,
    without torch) or a Hugging Face PyTorch one (slmkit.lm)."""
    from tokenizers import Tokenizer

    d = Path(directory)
    if (d / "model.onnx").is_file():
        from slmkit.runtime import OnnxStepper  # the ONNX export of a causal LM with its KV cache

        # one thread unless asked: a small model's one-token step is overhead-bound (see OnnxStepper)
        stepper, backend = (OnnxStepper(d, threads=threads) if threads else OnnxStepper(d)), "onnx"
    else:
        from slmkit.lm import TorchStepper, load_causal_lm

        if threads:
            import torch

            torch.set_num_threads(threads)
        model, _ = load_causal_lm(d)
        stepper, backend = TorchStepper(model), "torch"
    if not (d / "tokenizer.json").is_file():
        raise UserError(f"--model {directory}: no tokenizer.json: the directory needs the model's fast tokenizer")
    tokenizer = Tokenizer.from_file(str(d / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    specials = special_ids(d)
    manifest = getattr(stepper, "manifest", None) or {}  # an export records its special ids in its manifest
    if "eos_ids" in manifest:
        specials = {"bos_id": manifest.get("bos_id"), "eos_ids": tuple(manifest.get("eos_ids") or ())}
    return OpenLM(
        stepper=stepper,
        tokenizer=tokenizer,
        context_length=getattr(stepper, "context_length", None),
        chat_template=chat_template(d),
        backend=backend,
        **specials,
    )


def chat_template(directory: Path) -> str | None:
    """The model's chat template: chat_template.jinja, else tokenizer_config.json's `chat_template`."""
    path = Path(directory) / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    config = Path(directory) / "tokenizer_config.json"
    if config.is_file():
        value = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        return value if isinstance(value, str) else None
    return None


def render_chat(template: str, messages: list[dict], specials: dict, add_generation_prompt: bool = True) -> str:
    """A chat template applied to `messages`, in Jinja's sandbox as transformers does (trim_blocks, lstrip_blocks,
    `raise_exception`), without transformers."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **specials)
    except TemplateError as e:
        raise UserError(f"the model's chat template refused the messages: {e}") from None
