"""Instruction and chat data for fine-tuning a causal LM: read it, apply the model's chat template, mask the prompt.

Two kinds of training file:

- a text file (.txt): one training text per non-empty line; the loss covers every token;
- an instruction/chat JSONL (.jsonl): one conversation per line, either
  `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}` or
  `{"instruction": "...", "input": "..." (optional), "response": "..."}` (`output` is taken for `response`,
  as in Alpaca-style files); the instruction (and input) become the user turn, the response the assistant's.

A conversation is rendered with the model's own chat template (`tokenizer.apply_chat_template`; the template
lives in the model directory's tokenizer files) and the loss covers only the assistant turns: each assistant
turn's span is the text between the conversation up to it rendered *with* the generation prompt and the
conversation through it (so the template's end-of-turn marker after the reply is learnt too: the model learns to
stop). Every other token — system and user turns, role headers, the template's markup — gets label -100.
"""

from __future__ import annotations

import bisect
from pathlib import Path

from slmkit.data import _decode, json_lines
from slmkit.errors import UserError

IGNORE = -100  # the label cross-entropy skips (PyTorch's ignore_index)
ROLES = ("system", "user", "assistant")
ACCEPTED = (
    'a "messages" list of {"role", "content"} objects, or "instruction" (with optional "input") and "response" '
    '(or "output") fields'
)

Conversation = list[dict]  # [{"role": ..., "content": ...}, ...]


def read_training_data(path: str | Path, encoding: str = "utf-8") -> list[str] | list[Conversation]:
    """A .txt file's non-empty lines (plain texts), or a .jsonl file's conversations (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found: check the --data path")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        texts = [line for line in _decode(path, encoding).splitlines() if line.strip()]
        if not texts:
            raise UserError(f"{path}: no text: the file is empty; put one training text per line")
        return texts
    if suffix not in (".jsonl", ".ndjson"):
        raise UserError(f"{path}: unknown file type {path.suffix!r}: use a .txt file (one text per line) or a chat .jsonl ({ACCEPTED})")
    return read_conversations(path, encoding)


def read_conversations(path: Path, encoding: str = "utf-8") -> list[Conversation]:
    """The conversations of an instruction/chat JSONL file, each checked (errors name the file and line)."""
    conversations = []
    for line, row in json_lines(path, _decode(path, encoding)):
        where = f"{path} line {line}"
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object with {ACCEPTED}")
        conversations.append(_conversation(row, where))
    if not conversations:
        raise UserError(f"{path}: no conversations: the file is empty; write one JSON object per line with {ACCEPTED}")
    return conversations


def _conversation(row: dict, where: str) -> Conversation:
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise UserError(f"{where}: \"messages\" must be a non-empty list of {{\"role\", \"content\"}} objects")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise UserError(f"{where}: messages[{i}] must be an object with \"role\" and \"content\"")
            if m["role"] not in ROLES:
                raise UserError(f"{where}: messages[{i}] has role {m['role']!r}: use one of {', '.join(ROLES)}")
            if not isinstance(m["content"], str):
                raise UserError(f"{where}: messages[{i}].content must be a string (got {type(m['content']).__name__})")
        if not any(m["role"] == "assistant" for m in messages):
            raise UserError(f"{where}: no assistant message: the loss is on the assistant's replies, so add at least one")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    response_key = "response" if "response" in row else "output" if "output" in row else None
    if "instruction" in row and response_key:
        values = {k: row.get(k) for k in ("instruction", "input", response_key)}
        for key, value in values.items():
            if value is not None and not isinstance(value, str):
                raise UserError(f"{where}: \"{key}\" must be a string (got {type(value).__name__})")
        if not (values[response_key] or "").strip():
            raise UserError(f"{where}: empty \"{response_key}\": the loss is on the response, so fill it in or remove the row")
        prompt = values["instruction"] + (f"\n\n{values['input']}" if (values["input"] or "").strip() else "")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": values[response_key]}]
    keys = ", ".join(repr(k) for k in row) or "none"
    raise UserError(f"{where}: expected {ACCEPTED} (its keys: {keys})")


def is_chat_file(path: str | Path, encoding: str = "utf-8") -> bool:
    """A .jsonl file whose first row is a conversation ("messages") or an instruction ("instruction")."""
    import json

    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".ndjson") or not path.is_file():
        return False
    with open(path, encoding=encoding, errors="replace") as f:
        for raw in f:
            if raw.strip():
                try:
                    row = json.loads(raw)
                except json.JSONDecodeError:
                    return False
                return isinstance(row, dict) and ("messages" in row or "instruction" in row)
    return False


# ---------------------------------------------------------------------------------------------- features


def check_chat_template(hf_tokenizer, model_dir: str | Path) -> None:
    if not getattr(hf_tokenizer, "chat_template", None):
        raise UserError(
            f"{model_dir}: the tokenizer has no chat template, needed for a chat/instruction JSONL: use the model's "
            f"instruct variant (its tokenizer_config.json or chat_template.jinja has one), or train on a .txt file"
        )


def encode_conversation(conversation: Conversation, hf_tokenizer, max_length: int) -> dict:
    """{"input_ids", "labels"} of one conversation rendered with the chat template: labels are the ids on the
    assistant turns and -100 elsewhere; both truncated to `max_length` tokens (the start is kept)."""
    text = hf_tokenizer.apply_chat_template(conversation, tokenize=False)
    spans = []  # [start, end) character spans of the assistant turns in `text`
    for i, message in enumerate(conversation):
        if message["role"] != "assistant":
            continue
        before = hf_tokenizer.apply_chat_template(conversation[:i], tokenize=False, add_generation_prompt=True) if i else ""
        through = hf_tokenizer.apply_chat_template(conversation[: i + 1], tokenize=False)
        if not (text.startswith(through) and through.startswith(before)):
            raise UserError(
                "the model's chat template renders a conversation differently from its beginning (turn "
                f"{i}), so the assistant's tokens cannot be located: use a template that renders turns in order"
            )
        spans.append((len(before), len(through)))
    encoded = hf_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    starts = [s for s, _ in spans]
    labels = []
    for token, (start, end) in zip(ids, offsets):
        k = bisect.bisect_right(starts, start) - 1  # the last assistant span starting at or before this token
        labels.append(token if k >= 0 and start < spans[k][1] and end > start else IGNORE)
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


def encode_text(text: str, hf_tokenizer, max_length: int) -> dict:
    """{"input_ids", "labels"} of a plain text (the tokenizer's own special tokens added): the loss covers it all."""
    ids = hf_tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
    if hf_tokenizer.eos_token_id is not None and len(ids) < max_length and (not ids or ids[-1] != hf_tokenizer.eos_token_id):
        ids = ids + [hf_tokenizer.eos_token_id]  # the text ends here: learn to stop
    return {"input_ids": ids, "labels": list(ids)}


def encode_training_data(items: list[str] | list[Conversation], hf_tokenizer, max_length: int, source: str | Path) -> tuple[list[dict], int]:
    """The features of texts or conversations, and how many were dropped because truncation left no token to learn."""
    if items and isinstance(items[0], list):
        check_chat_template(hf_tokenizer, getattr(hf_tokenizer, "name_or_path", "the model"))
        features = [encode_conversation(c, hf_tokenizer, max_length) for c in items]
    else:
        features = [encode_text(t, hf_tokenizer, max_length) for t in items]
    # a causal LM predicts token t from the ones before it: a label at position 0 teaches nothing
    kept = [f for f in features if any(label != IGNORE for label in f["labels"][1:])]
    if not kept:
        raise UserError(f"{source}: no example has a response token within {max_length} tokens: raise --max-length or shorten the prompts")
    return kept, len(features) - len(kept)


def encode_conversations(conversations: list[Conversation], hf_tokenizer, max_length: int, source: str | Path, tag_docs: bool = False) -> list[dict]:
    """Training (or, with `tag_docs`, evaluation: each tagged with its conversation's index as "doc") features of
    conversations; those with no reply token left after truncation are dropped (an error if none is left)."""
    check_chat_template(hf_tokenizer, getattr(hf_tokenizer, "name_or_path", "the model"))
    features = []
    for i, conversation in enumerate(conversations):
        f = encode_conversation(conversation, hf_tokenizer, max_length)
        if any(label != IGNORE for label in f["labels"][1:]):
            features.append({**f, "doc": i} if tag_docs else f)
    if not features:
        raise UserError(f"{source}: no conversation has a reply token within {max_length} tokens: raise --max-length or shorten the prompts")
    return features


def collate(rows: list[dict], pad_id: int) -> dict:
    """Right-padded tensors: input_ids (pad_id), attention_mask, labels (-100 on padding)."""
    from slmkit.encoding import pad_batch

    return pad_batch(rows, pad_id, False, {"labels": IGNORE})


def causal_lm_loss(model, batch: dict):
    """Mean next-token cross-entropy over the labelled positions (HF causal LMs shift the labels themselves)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
