"""From texts to batches: the tokenizer setup and the length-aware batching every stage shares.

Tokenization uses the `tokenizers` library directly (fast, no torch), with padding off and truncation at
the model's maximum length; batches are padded only to their own longest member. Training batches that are
not packed (slmkit.packing) are length-bucketed (sorted within shuffled pools) so that little compute is spent
on padding.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

MAX_LENGTH_CAP = 128
POOL_BATCHES = 50  # bucketing pool: this many batches are sorted by length together


def make_encoder(hf_tokenizer, max_length: int):
    """A `tokenizers.Tokenizer` that adds special tokens, truncates to `max_length` and never pads.

    Read from the directory's tokenizer.json where there is one: serializing the loaded tokenizer would drop a
    trimmed vocabulary's aliases (see slmkit.trim)."""
    from pathlib import Path

    from tokenizers import Tokenizer

    source = Path(hf_tokenizer.name_or_path or "") / "tokenizer.json"
    encoder = Tokenizer.from_file(str(source)) if source.is_file() else Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    encoder.no_padding()
    encoder.enable_truncation(max_length)
    return encoder


def pad_batch(features: list[dict], pad_id: int, token_types: bool, per_token: dict[str, int] | None = None) -> dict:
    """A batch's tensors padded to its longest member: input_ids (with `pad_id`), attention_mask, token_type_ids
    when the model takes them (the features' own, as QA's question/context segments, else zeros), and each
    per-token key of `per_token` (NER's labels) padded with its value."""
    import torch

    lengths = torch.tensor([len(f["input_ids"]) for f in features])
    width = int(lengths.max())

    def padded(key: str, fill: int):
        out = torch.full((len(features), width), fill, dtype=torch.long)
        for row, f in enumerate(features):
            out[row, : len(f[key])] = torch.tensor(f[key])
        return out

    batch = {"input_ids": padded("input_ids", pad_id), "attention_mask": (torch.arange(width)[None, :] < lengths[:, None]).long()}
    if token_types:
        batch["token_type_ids"] = padded("token_type_ids", 0) if "token_type_ids" in features[0] else torch.zeros_like(batch["input_ids"])
    for key, fill in (per_token or {}).items():
        batch[key] = padded(key, fill)
    return batch


def uses_token_types(model, hf_tokenizer) -> bool:
    """Whether the model takes token_type_ids (BERT does; DistilBERT and RoBERTa-style models do not need them)."""
    return getattr(model.config, "type_vocab_size", 0) > 0 and "token_type_ids" in hf_tokenizer.model_input_names


def derive_max_length(hf_tokenizer, texts: list[str], cap: int = MAX_LENGTH_CAP) -> int:
    """The 99th percentile of token counts (special tokens included), rounded up to a multiple of 8, capped."""
    encoder = make_encoder(hf_tokenizer, 512)
    lengths = [len(e.ids) for e in encoder.encode_batch(texts)]
    p99 = int(np.ceil(np.percentile(lengths, 99)))
    return int(min(cap, max(16, -(-p99 // 8) * 8)))


def bucketed_order(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool_batches: int = POOL_BATCHES) -> list[np.ndarray]:
    """Training batches as index arrays: shuffle, sort pools of `pool_batches` batches by length, shuffle batches.

    `pool_batches=1` gives plain random batches."""
    order = rng.permutation(len(lengths))
    pool = batch_size * pool_batches
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def sorted_order(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Inference batches as index arrays, sorted by length (callers restore the input order)."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def iterate(features: list[dict], index_batches: list[np.ndarray], collate) -> Iterator[dict]:
    for idx in index_batches:
        yield collate([features[i] for i in idx])
