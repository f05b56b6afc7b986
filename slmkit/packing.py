"""Packed training batches: random batches at the cost of length-bucketed ones.

A random batch of short texts padded to its longest member spends most of its compute on padding; sorting
batches by length (bucketing) saves that compute but changes what the model sees in a step, and on data that
mixes single words with whole sentences (SST-2) it costs accuracy. Packing keeps the random batch and drops
the padding instead: the batch's texts share rows as long as its longest text (first-fit decreasing), each
text attends only to itself (a block-diagonal attention mask), its positions restart at 0, and a hook on the
encoder stack scatters the packed hidden states back to one padded row per text before the head. The head,
the loss and the labels see exactly the padded batch, so the training step computes the same function.

Which models this holds for is not assumed: `plan` checks it on training texts before training (packed
logits against padded ones, in eval mode) and otherwise says why it does not pack. It applies to tasks whose
loss reads nothing but the head's output and the labels (classification and NER).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

PARITY_TOLERANCE = 1e-4  # largest |logit difference| packed vs padded, fp32 eval mode
PROBE_TEXTS = 16  # training texts the parity check runs on


def pack(batch: dict, attn_implementation: str, position_offset: int = 0) -> dict:
    """The padded batch `batch` (input_ids, attention_mask (n, width), token_type_ids, labels...) as packed rows.

    Model inputs become input_ids/token_type_ids/position_ids (rows, width) and a 4-D attention mask
    (rows, 1, width, width): boolean for SDPA, additive for eager attention. Every other key (the labels) is
    left as it is; `unpack_index` (n, width) says where each text's tokens went in the flattened rows."""
    import torch

    mask = batch["attention_mask"]  # (n, width), 1 on real tokens
    n, width = mask.shape
    lengths = mask.sum(dim=1).tolist()
    # first-fit decreasing: the longest texts open rows, shorter ones fill the gaps
    row_of, start_of, used = [0] * n, [0] * n, []
    for i in sorted(range(n), key=lambda i: -lengths[i]):
        row = next((r for r, u in enumerate(used) if u + lengths[i] <= width), len(used))
        if row == len(used):
            used.append(0)
        row_of[i], start_of[i] = row, used[row]
        used[row] += lengths[i]
    rows = len(used)

    # where each real token goes in the flattened (rows * width) packed batch
    lengths_t = torch.tensor(lengths)
    offsets = torch.arange(width)[None, :]  # (1, width)
    starts = torch.tensor(row_of) * width + torch.tensor(start_of)  # (n,)
    real = offsets < lengths_t[:, None]  # (n, width)
    target = (starts[:, None] + offsets)[real]  # (tokens,)
    segment = torch.arange(n)[:, None].expand(n, width)[real]

    def scatter(values: torch.Tensor, fill: int) -> torch.Tensor:
        out = torch.full((rows * width,), fill, dtype=values.dtype)
        out[target] = values[real]
        return out.view(rows, width)

    packed = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "token_type_ids")}
    pad_id = int(batch["input_ids"][~mask.bool()][0]) if (mask == 0).any() else 0
    packed["input_ids"] = scatter(batch["input_ids"], pad_id)
    if "token_type_ids" in batch:
        packed["token_type_ids"] = scatter(batch["token_type_ids"], 0)
    packed["position_ids"] = scatter(offsets.expand(n, width) + position_offset, position_offset)
    seg = torch.full((rows * width,), -1, dtype=torch.long)
    seg[target] = segment
    seg = seg.view(rows, width)
    # a token sees the tokens of its own text; padding sees only itself (a row of nothing would give NaN)
    allowed = ((seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)) | torch.eye(width, dtype=torch.bool)
    if attn_implementation == "eager":
        packed["attention_mask"] = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]
    else:
        packed["attention_mask"] = allowed[:, None]
    packed["unpack_index"] = torch.where(real, starts[:, None] + offsets, starts[:, None])  # padding reads the text's first token
    return packed


def encoder_stack(model: Any) -> Any:
    """The module whose output is the encoder's last hidden states (BERT/RoBERTa: `encoder`; DistilBERT: `transformer`)."""
    base = model.base_model
    return getattr(base, "encoder", None) or getattr(base, "transformer", None)


@contextlib.contextmanager
def unpacked(model: Any, unpack_index: Any) -> Iterator[None]:
    """While inside, the encoder stack's output (rows, width, hidden) comes out as (n, width, hidden), one
    padded row per text, as the unpacked batch would have given it."""

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state  # (rows, width, hidden)
        flat = hidden.reshape(-1, hidden.shape[-1])
        texts = flat[unpack_index.reshape(-1)].view(*unpack_index.shape, hidden.shape[-1])  # (n, width, hidden)
        if isinstance(output, tuple):
            return (texts, *output[1:])
        output.last_hidden_state = texts
        return output

    handle = encoder_stack(model).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def packed_collate(to_packed: Callable[[dict], dict], collate: Callable[[list[dict]], dict]) -> Callable[[list[dict]], dict]:
    """`collate`, then `to_packed` (from `plan`)."""

    def packed(rows: list[dict]) -> dict:
        return to_packed(collate(rows))

    return packed


def packed_loss(loss_fn: Callable[[Any, dict], Any]) -> Callable[[Any, dict], Any]:
    """`loss_fn(model, batch)` for a packed batch: the task's loss, with the encoder's output unpacked."""

    def loss(model: Any, batch: dict) -> Any:
        with unpacked(model, batch["unpack_index"]):
            return loss_fn(model, {k: v for k, v in batch.items() if k != "unpack_index"})

    return loss


def plan(model: Any, features: list[dict], collate: Callable[[list[dict]], dict]) -> tuple[Callable[[dict], dict] | None, str]:
    """(pack a collated batch, "") when packing gives `model` the logits of padding on `features`, else (None, why)."""
    import torch

    if encoder_stack(model) is None:
        return None, f"no encoder stack found in {type(model).__name__}"
    attn = getattr(model.config, "_attn_implementation", None) or "eager"
    # RoBERTa-style embeddings number positions from padding_idx + 1
    embeddings = getattr(model.base_model, "embeddings", None)
    offset = embeddings.padding_idx + 1 if getattr(embeddings, "padding_idx", None) is not None else 0

    def to_packed(batch: dict) -> dict:
        return pack(batch, attn, offset)

    # texts of several lengths, so that rows really are shared
    probe = sorted(features[: 8 * PROBE_TEXTS], key=lambda f: len(f["input_ids"]))[:: 8][:PROBE_TEXTS]
    device = next(model.parameters()).device
    padded = {k: v.to(device) for k, v in collate(probe).items()}
    packed = {k: v.to(device) for k, v in to_packed(collate(probe)).items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(**_inputs(padded)).logits.float()
            with unpacked(model, packed["unpack_index"]):
                got = model(**_inputs(packed)).logits.float()
    except Exception as e:  # a model that takes no position_ids or 4-D masks
        return None, f"{type(model).__name__} does not take packed inputs ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    finally:
        model.train(was_training)
    if got.shape != expected.shape:
        return None, f"packed logits have shape {tuple(got.shape)}, padded {tuple(expected.shape)}"
    diff = (got - expected).abs()  # (n, classes), or per token (n, width, tags): compared at real tokens only
    gap = (diff if diff.dim() == 2 else diff[padded["attention_mask"].bool()]).max().item()
    if not gap <= PARITY_TOLERANCE:
        return None, f"packed logits differ from padded ones by {gap:.2g} (> {PARITY_TOLERANCE:g})"
    return to_packed, ""


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids", "position_ids")}
