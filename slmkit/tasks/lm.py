"""Causal language modelling (`slm train --task lm`): a decoder that predicts the next token of plain text.

Data is a corpus of documents: a .txt file (one per line; blank lines skipped), .jsonl (one object a line, the
text under `--text-col`) or .csv/.tsv (the `--text-col` column; the other columns are ignored). Each document is
tokenized as the tokenizer does for a prompt (a trained-from-scratch tokenizer adds <s>) and ends with </s>. Training packs the documents into windows of the context length (a window
may span documents, <s> marks where each starts); evaluation runs each document on its own (a long one in windows
that overlap by a token), so the loss of every document is known and the perplexity interval resamples documents.

From scratch (no `--base`) a byte-level BPE tokenizer is trained on the training documents with the `tokenizers`
library and a Llama-style decoder of `--shape` is initialized; with `--base DIR` a local causal LM (any family)
continues training with its own tokenizer. Either way the output is a standard Hugging Face causal-LM directory.

`build_causal_lm` is the one place a language model is built for training: LoRA and other wrappers hook there.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from slmkit import losses, metrics
from slmkit.base import DEFAULT_BASE, SCRATCH_PREFIX, Base
from slmkit.config import LM_DEFAULT_SHAPE, LM_DEFAULT_VOCAB, LM_MIN_VOCAB
from slmkit.encoding import iterate, pad_batch, sorted_order
from slmkit.errors import UserError

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2 of a trained-from-scratch tokenizer
SHAPE_KEYS = {
    "layers": "num_hidden_layers",
    "hidden": "hidden_size",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "ffn": "intermediate_size",
    "context": "max_position_embeddings",
}
BASE_CONTEXT_CAP = 512  # a --base model trains on windows of at most this many tokens unless model.max_length says more
TEXT_SUFFIXES = (".txt", ".text", ".md", "")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
IGNORE = -100  # a label the loss skips (padding; later, prompt tokens of instruction data)


# ------------------------------------------------------------------------------------------ corpus


def read_documents(path: Path, text_col: str = "text", encoding: str = "utf-8") -> list[str]:
    """The documents of a corpus file: .txt (one per line, blank lines skipped), .jsonl (`text_col` of each object)
    or .csv/.tsv (the `text_col` column). An empty or binary file is refused with the line to fix."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: corpus file not found: pass a .txt, .jsonl or .csv file")
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES + JSONL_SUFFIXES + tuple(TABLE_SUFFIXES):
        raise UserError(f"{path}: a corpus must be .txt (one document per line), .jsonl (one object per line with a {text_col!r} field) or .csv/.tsv (a {text_col!r} column)")
    raw = path.read_bytes()
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise UserError(f"{path}: a binary file (NUL byte at line {line}, byte offset {nul}): pass a text corpus")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path} line {line}: not {encoding} text (byte offset {e.start}): convert the file, or pass --encoding (for example latin-1)") from None
    except LookupError:
        raise UserError(f"--encoding {encoding}: unknown text encoding") from None
    lines = text.lstrip("\ufeff").splitlines()
    docs: list[str] = []
    if suffix in JSONL_SUFFIXES:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {number}: not valid JSON ({e.msg}): one JSON object per line") from None
            if not isinstance(row, dict) or not isinstance(row.get(text_col), str):
                keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                raise UserError(f"{path} line {number}: no text field {text_col!r} (found {keys}): pass --text-col with the key that holds the text")
            if row[text_col].strip():
                docs.append(row[text_col].strip())
    elif suffix in TABLE_SUFFIXES:
        import csv

        reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")), delimiter=TABLE_SUFFIXES[suffix])
        if text_col not in (reader.fieldnames or []):
            raise UserError(f"{path}: no column {text_col!r} (the header has {', '.join(reader.fieldnames or [])}): pass --text-col with the text's column")
        docs = [row[text_col].strip() for row in reader if (row.get(text_col) or "").strip()]
    else:
        docs = [line.strip() for line in lines if line.strip()]
    if not docs:
        raise UserError(f"{path}: no text (the corpus is empty or only blank lines): pass a corpus with one document per line")
    return docs


# ------------------------------------------------------------------------------------------ tokenizer and shape


def parse_shape(spec: str) -> dict[str, int]:
    """`layers=4,hidden=256,...` as LlamaConfig arguments; unknown keys and bad values are refused."""
    example = LM_DEFAULT_SHAPE
    shape = dict(_shape_items(example))
    for key, value in _shape_items(spec):
        if key not in SHAPE_KEYS:
            raise UserError(f"--shape {spec}: unknown key {key!r}: valid keys are {', '.join(SHAPE_KEYS)} (e.g. {example})")
        shape[key] = value
    heads, kv = shape["heads"], shape.get("kv_heads", shape["heads"])
    if shape["hidden"] % heads:
        raise UserError(f"--shape {spec}: hidden ({shape['hidden']}) must be a multiple of heads ({heads})")
    if heads % kv:
        raise UserError(f"--shape {spec}: heads ({heads}) must be a multiple of kv_heads ({kv})")
    if not 8 <= shape["context"] <= 4096:
        raise UserError(f"--shape {spec}: context must be in [8, 4096] tokens (got {shape['context']})")
    return {SHAPE_KEYS[k]: v for k, v in shape.items()}


def _shape_items(spec: str) -> list[tuple[str, int]]:
    items = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, _, value = part.partition("=")
        if not value.strip().isdigit() or int(value) < 1:
            raise UserError(f"--shape {spec}: bad part {part!r}: write key=positive integer, e.g. {LM_DEFAULT_SHAPE}")
        items.append((key.strip(), int(value)))
    return items


def train_tokenizer(docs: list[str], vocab_size: int, source: Path, context: int) -> Any:
    """A byte-level BPE tokenizer of `vocab_size` tokens (<pad>=0 <s>=1 </s>=2) trained on `docs`, adding <s>
    before every text it encodes, as a transformers fast tokenizer. A corpus with too little text for the
    vocabulary is refused with the largest vocabulary it supports."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(docs, trainer)
    if tok.get_vocab_size() < vocab_size:
        raise UserError(
            f"{source}: too little text for a vocabulary of {vocab_size} tokens: it supports at most {tok.get_vocab_size()} "
            f"(pass --vocab-size {tok.get_vocab_size()} or less, at least {LM_MIN_VOCAB}, or a larger corpus)"
        )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=context, clean_up_tokenization_spaces=False
    )


def is_scratch(spec: str) -> bool:
    """Whether a `--base` value asks for a language model from scratch (the default, or 'scratch')."""
    return spec in (DEFAULT_BASE, "scratch") or spec.startswith(SCRATCH_PREFIX)


def resolve_lm_base(
    spec: str, shape: str, vocab_size: int, train_docs: list[str], source: Path, dropout: float | None, tokenizer_from: Path | None = None
) -> Base:
    """The starting point of an LM: a local causal LM (`spec` a directory) or, from scratch, a Llama config of
    `shape` over a tokenizer trained on `train_docs` (or the tokenizer of `tokenizer_from`, a causal-LM directory:
    a distilled student then shares its teacher's vocabulary)."""
    from transformers import AutoConfig, LlamaConfig

    from slmkit.lm import check_causal_lm_dir, load_causal_lm_tokenizer

    if not is_scratch(spec):
        if shape != LM_DEFAULT_SHAPE or vocab_size != LM_DEFAULT_VOCAB:
            raise UserError(f"--base {spec}: --shape and --vocab-size describe a model trained from scratch; a --base model keeps its own: drop them")
        directory = check_causal_lm_dir(spec, "--base")
        config = AutoConfig.from_pretrained(directory)
        if dropout is not None and hasattr(config, "attention_dropout"):
            config.attention_dropout = dropout
        return Base(spec, directory, config, load_causal_lm_tokenizer(directory, "--base"))
    if spec.startswith(SCRATCH_PREFIX):  # scratch:layers=2,... is the encoder spelling; for an LM it is --shape
        shape = spec[len(SCRATCH_PREFIX):]
    dims = parse_shape(shape)
    if tokenizer_from is not None:
        tokenizer = load_causal_lm_tokenizer(tokenizer_from, "--teacher")
        tokenizer.model_max_length = dims["max_position_embeddings"]
    else:
        tokenizer = train_tokenizer(train_docs, vocab_size, source, dims["max_position_embeddings"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,  # the input embedding doubles as the output layer: a quarter fewer parameters at this size
        attention_dropout=dropout or 0.0,
        **{"num_key_value_heads": dims["num_attention_heads"], **dims},
    )
    return Base("scratch", None, config, tokenizer)


def build_causal_lm(base: Base, dropout: float | None = None) -> Any:
    """The model `slm train --task lm` trains: `base.config` freshly initialized (scratch) or the base's weights,
    with `dropout` on its hidden states while it trains (`add_hidden_dropout`)."""
    from transformers import AutoModelForCausalLM

    if base.directory is None:
        model = AutoModelForCausalLM.from_config(base.config)
    else:
        model = AutoModelForCausalLM.from_pretrained(base.directory, config=base.config, use_safetensors=True)
    if dropout:
        add_hidden_dropout(model, dropout)
    return model


HIDDEN_DROPOUT_AT = ("embed_tokens", "self_attn", "mlp")  # the modules whose outputs join the residual stream
OWN_HIDDEN_DROPOUT = ("embed_dropout", "resid_dropout")  # a family's own (Phi's) embedding and residual dropout


def add_hidden_dropout(model: Any, p: float) -> int:
    """GPT-2's embedding and residual dropout for decoders whose families have none (Llama, Mistral, Qwen2, Gemma
    drop only attention weights): forward hooks drop `p` of the token embeddings and of each attention and MLP
    block's output before it joins the residual stream, in training mode only. A family with its own (Phi's
    `embed_dropout`, `resid_dropout`) gets `p` there instead. Nothing of this is saved: the saved model is the
    family's own, identical in evaluation. Returns the number of places that now drop."""
    import torch.nn.functional as F

    own = [module for name, module in model.named_modules() if name.rsplit(".", 1)[-1] in OWN_HIDDEN_DROPOUT]
    for module in own:
        module.p = p
    if own:
        return len(own)

    def drop(module: Any, inputs: Any, output: Any) -> Any:
        if not module.training:
            return output
        if isinstance(output, tuple):  # attention: (output, weights)
            return (F.dropout(output[0], p, True), *output[1:])
        return F.dropout(output, p, True)

    hooked = 0
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in HIDDEN_DROPOUT_AT:
            module.register_forward_hook(drop)
            hooked += 1
    return hooked


def context_of(config: Any, max_length: int | None) -> int:
    """Tokens a training/evaluation window holds."""
    from slmkit.lm import context_length

    limit = context_length(config) or BASE_CONTEXT_CAP
    return min(limit, max_length) if max_length else min(limit, BASE_CONTEXT_CAP)


# ------------------------------------------------------------------------------------------ the task


class LMTask:
    name = "lm"
    metric_names = ("perplexity",)
    auto_class = "AutoModelForCausalLM"
    outputs = ("logits",)
    per_token = True

    def __init__(
        self,
        shape: str = LM_DEFAULT_SHAPE,
        vocab_size: int = LM_DEFAULT_VOCAB,
        base: str = DEFAULT_BASE,
        tokenizer_from: Path | None = None,
        teacher: Any = None,
        kd: float = 0.0,
        kd_temperature: float = 1.0,
        lora: str | None = None,
        merge: bool = False,
    ):
        """`tokenizer_from`: a from-scratch model takes this causal-LM directory's tokenizer instead of training one;
        `teacher`: a PyTorch causal LM over the same vocabulary whose next-token distributions the model also learns
        (token-level distillation, weight `kd`: loss = (1 - kd) · CE + kd · KL(teacher || model) at `kd_temperature`);
        `lora`: a --lora spec (slmkit.lora): adapters on the --base model, merged into it at the end with `merge`."""
        self.shape, self.vocab_size, self.base_spec = shape, vocab_size, base
        self.tokenizer_from, self.teacher, self.kd, self.kd_temperature = tokenizer_from, teacher, kd, kd_temperature
        self.eos_id: int | None = None
        self.context: int | None = None
        # a decoder trained from scratch learns at 1e-3; continuing a pretrained causal LM (or LoRA on it) at 1e-4
        self.default_lr = 1e-3 if is_scratch(base) else 1e-4
        # --lora: adapters on a --base causal LM (slmkit.lora), merged into it at the end with --merge
        self.lora, self.merge, self.base_dir, self.hf_tokenizer = lora, merge, None, None
        if lora:
            from slmkit.lora import parse_lora

            parse_lora(lora)  # bad specs fail before any work
            if is_scratch(base):
                raise UserError("--lora adapts an existing causal LM: pass --base DIR (a local Hugging Face causal-LM directory)")

    # ------------------------------------------------------------------------------------------ data
    def read(self, path: Path, d: Any) -> list:
        from slmkit import chat

        if chat.is_chat_file(path, d.encoding):  # instruction/chat JSONL: conversations, the loss on the replies only
            if is_scratch(self.base_spec):
                raise UserError(f"{path}: chat/instruction data needs a model with a chat template: pass --base DIR")
            return chat.read_conversations(Path(path), d.encoding)
        return read_documents(path, d.text_col, d.encoding)

    def split(self, docs: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
        """(train, eval): a seeded random split of the documents (at least one each)."""
        if len(docs) < 2:
            raise UserError("the corpus has one document: give more lines, or a separate --eval file")
        order = np.random.default_rng(seed).permutation(len(docs))
        n_eval = min(len(docs) - 1, max(1, round(fraction * len(docs))))
        return [docs[i] for i in sorted(order[n_eval:])], [docs[i] for i in sorted(order[:n_eval])]

    def labels(self, train_ex: list[str], train_path: Path, eval_ex: list[str], eval_path: Path) -> list[str]:
        return []  # the vocabulary is the output space

    def resolve_base(self, spec: str, train_docs: list[str], source: Path, dropout: float | None) -> Base:
        base = resolve_lm_base(spec, self.shape, self.vocab_size, train_docs, source, dropout, self.tokenizer_from)
        self.use_tokenizer(base.hf_tokenizer)
        self.base_dir = base.directory
        if self.lora:  # before anything is written
            from slmkit.lora import check_targets_for_config, parse_lora

            check_targets_for_config(base.config, parse_lora(self.lora))
        return base

    def use_tokenizer(self, hf_tokenizer: Any) -> None:
        """Remember the end-of-document id (a trained LM's tokenizer, at evaluation time) and the tokenizer (chat data)."""
        self.eos_id = hf_tokenizer.eos_token_id
        self.hf_tokenizer = hf_tokenizer

    def default_max_length(self, hf_tokenizer: Any, docs: list[str], config: Any = None, max_length: int | None = None) -> int:
        return context_of(config, max_length)

    # ------------------------------------------------------------------------------------------ head
    def build_model(self, base: Base, labels: list[str], dropout: float | None) -> Any:
        from slmkit import lora

        model = build_causal_lm(base, dropout)
        return lora.attach(model, lora.parse_lora(self.lora)) if self.lora else model

    # with --lora the artifact is the adapter (or, with --merge, the base with it merged in at the end)
    def save_model(self, model: Any, hf_tokenizer: Any, directory: Path) -> None:
        from slmkit import artifacts, lora

        if self.lora:
            lora.save_adapter(model, hf_tokenizer, directory, self.base_dir)
        else:
            artifacts.save_model(model, hf_tokenizer, directory)

    def load_weights(self, model: Any, directory: Path) -> None:
        from slmkit import artifacts, lora

        (lora.load_adapter_weights if self.lora else artifacts.load_weights)(model, directory)

    def finish(self, model: Any, hf_tokenizer: Any, directory: Path) -> dict:
        from slmkit import lora

        return lora.finish(model, hf_tokenizer, directory, self.lora, self.merge) if self.lora else {}

    # -------------------------------------------------------------------------------------- features
    def _context(self, encoder: Any, context: int | None) -> int:
        """The window length: given, else the encoder's truncation length (train.py's encoder truncates there)."""
        if context is None and encoder.truncation:
            self.context = encoder.truncation["max_length"]
        return context or self.context

    def _documents(self, docs: list[str], encoder: Any) -> list[list[int]]:
        """Each document's ids as the tokenizer encodes a prompt (its own <s>, if any), then </s>."""
        encoder.no_truncation()
        out = []
        for enc in encoder.encode_batch(docs):
            ids = list(enc.ids)
            if self.eos_id is not None and (not ids or ids[-1] != self.eos_id):
                ids.append(self.eos_id)
            out.append(ids)
        return out

    def encode(self, docs: list[str], encoder: Any, label2id: Any = None, context: int | None = None) -> list[dict]:
        """Training windows: the documents' tokens end to end, cut into windows of the context length that share
        one token (the last of one window is the first, unpredicted, of the next)."""
        context = self._context(encoder, context)
        if docs and isinstance(docs[0], list):  # conversations: one example each, the loss on the replies
            from slmkit.chat import encode_conversations

            return encode_conversations(docs, self.hf_tokenizer, context, "the training data")
        stream = [t for ids in self._documents(docs, encoder) for t in ids]
        stride = context - 1
        windows = [stream[i : i + context] for i in range(0, max(1, len(stream) - 1), stride)]
        return [{"input_ids": w, "labels": list(w)} for w in windows if len(w) >= 2]

    def encode_eval(self, docs: list[str], encoder: Any, label2id: Any = None, context: int | None = None) -> list[dict]:
        """Evaluation windows: each document on its own (a long one in windows sharing a token), tagged with its
        index so the loss adds up per document."""
        context = self._context(encoder, context)
        if docs and isinstance(docs[0], list):  # conversations: the perplexity of the replies
            from slmkit.chat import encode_conversations

            return encode_conversations(docs, self.hf_tokenizer, context, "the eval data", tag_docs=True)
        features = []
        for doc, ids in enumerate(self._documents(docs, encoder)):
            for i in range(0, max(1, len(ids) - 1), context - 1):
                window = ids[i : i + context]
                features.append({"input_ids": window, "labels": list(window), "doc": doc})
        return features

    def collate(self, features: list[dict], pad_id: int, token_types: bool = False) -> dict:
        """input_ids / attention_mask / labels (batch, seq), padded on the right; padding is labelled -100."""
        return pad_batch(features, pad_id, False, {"labels": IGNORE})

    # ------------------------------------------------------------------------------------------ loss
    def loss(self, model: Any, batch: dict, class_weights: Any = None, label_smoothing: float = 0.0) -> Any:
        """Mean next-token cross-entropy over the labelled tokens (-100 skipped); with a teacher, mixed with the
        KL divergence from the teacher's next-token distributions at the same positions."""
        import torch
        import torch.nn.functional as F

        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits  # (batch, seq, vocab)
        targets = batch["labels"][:, 1:]
        ce = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, label_smoothing=label_smoothing)
        if self.teacher is None or self.kd == 0:
            return ce
        with torch.no_grad():
            teacher = self.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        vocab = logits.shape[-1]  # a teacher's embedding may have spare rows past the tokenizer's vocabulary
        keep = targets != IGNORE  # (batch, seq-1): the positions that predict a real token
        kd = losses.kd_loss(logits[:, :-1][keep], teacher[:, :-1, :vocab][keep], self.kd_temperature)
        return (1 - self.kd) * ce + self.kd * kd

    # ---------------------------------------------------------------------------------- predictions
    def predict_logits(self, model: Any, features: list[dict], collate: Callable[[list[dict]], dict], batch_size: int) -> np.ndarray:
        """Per feature: (summed next-token negative log-likelihood in nats, tokens predicted), shape (n, 2)."""
        import torch
        import torch.nn.functional as F

        batches = sorted_order(np.array([len(f["input_ids"]) for f in features]), batch_size)
        rows = []
        model.eval()
        with torch.inference_mode():
            for batch in iterate(features, batches, collate):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
                targets = batch["labels"][:, 1:]
                nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")  # (batch, seq-1)
                rows.append(torch.stack([nll.sum(1).double(), (targets != IGNORE).sum(1).double()], dim=1).cpu().numpy())
        out = np.empty((len(features), 2), dtype=np.float64)
        out[np.concatenate(batches)] = np.concatenate(rows)
        return out

    def score(self, docs: list[str], features: list[dict], outputs: np.ndarray, labels: list[str], full: bool, seed: int = 0, n_resamples: int = 1000) -> dict:
        """Perplexity over the documents; `full` adds its bootstrap interval (documents resampled), the token count
        and the mean loss."""
        doc = np.array([f.get("doc", 0) for f in features])
        nll = np.bincount(doc, weights=outputs[:, 0], minlength=len(docs))
        tokens = np.bincount(doc, weights=outputs[:, 1], minlength=len(docs))
        if full:
            return metrics.perplexity_report(nll, tokens, n_resamples, seed)
        return {"perplexity": metrics.perplexity(nll, tokens)}
