"""`slm trim-vocab`: keep only the vocabulary the user's data uses, rewriting tokenizer and embeddings together.

Read top to bottom: `trim_vocab(cfg)` checks the model and reads every input first (the texts that decide the
kept tokens, the coverage margin of `--extra-text`, the eval set), counts the token ids those texts produce
with the model's own tokenizer, and keeps the ids seen at least `min_count` times plus every special or added
token. Kept ids are renumbered in their old order. Then it rewrites `tokenizer.json` (the WordPiece vocabulary,
the added tokens, the post-processor's and the padding's special-token ids) and `tokenizer_config.json`'s
added-token ids, slices the rows of the word-embedding matrix to match, and saves a Hugging Face model
directory.

Why this is exact: WordPiece segments each word longest-match-first, and trimming only removes entries. At
every position the piece the old vocabulary chose is still there and no longer match was added, so a word whose
pieces are all kept is segmented identically, each id is mapped old → new, and its embedding row is the same
row: the trimmed model's outputs equal the original's on such text. BPE and Unigram merges have no such
guarantee, so only WordPiece is supported.

A removed piece still occurs in new text. `fallback` decides what it becomes. `nearest` (the default) and `unk`
keep every removed piece in the WordPiece vocabulary as an alias: an entry whose id is that of a kept token, so
every word is segmented exactly as before and only the removed pieces' embeddings change. `nearest` points the
alias at the kept piece of the same kind (word start or ##continuation) whose original embedding is closest by
cosine; `unk` points it at [UNK]. With `none`, the vocabulary holds the kept pieces only: WordPiece segments the
word again with the pieces that are left, or makes the whole word [UNK]. Aliases live in tokenizer.json (the
tokenizers library and transformers encode with them); their number is in metrics.json.

The parity proof goes into `metrics.json`: on the eval set, accuracy before and after, the fraction of
identical predictions, the largest probability change on texts whose tokens are all kept (0 up to float
rounding), and the OOV rate.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from slmkit import artifacts
from slmkit.config import TrimConfig, save_config
from slmkit.data import check_known_labels, read_texts
from slmkit.errors import UserError
from slmkit.lineage import examples_from, recorded_examples
from slmkit.metrics import accuracy
from slmkit.predict import predict_probs

UNUSED = re.compile(r"^\[unused\d+\]$")  # BERT's reserved placeholder entries
SPECIAL_TOKENS_MAP = "special_tokens_map.json"  # older transformers save one; it names tokens, never ids
TOKENIZER_CONFIG_TOKEN_KEYS = ("unk_token", "pad_token", "cls_token", "sep_token", "mask_token", "bos_token", "eos_token")


@dataclass
class TrimResult:
    out: Path
    metrics: dict  # the metrics.json written into `out`


def trim_vocab(cfg: TrimConfig, overwrite: bool = False) -> TrimResult:
    """Shrink `cfg.model`'s vocabulary to the tokens `cfg.data` (+ `cfg.extra_text`) uses; write `cfg.out`."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    cfg.validate()
    model_dir, out = Path(cfg.model), Path(cfg.out)
    artifacts.check_model_dir(model_dir)
    if artifacts.model_task(model_dir) != "classification":
        raise UserError(f"{model_dir}: a {artifacts.model_task(model_dir)} model: slm trim-vocab works on classification models only; shrink NER and QA models with slm quantize (dynamic, static or qat)")
    if out.resolve() == model_dir.resolve():
        raise UserError(f"{out}: --out is the --model directory: write the trimmed model to a new directory")
    artifacts.check_output(out, overwrite)
    tokenizer_path = model_dir / artifacts.TOKENIZER
    tokenizer_json = artifacts.read_json(tokenizer_path)
    tokenizer_config_path = model_dir / artifacts.TOKENIZER_CONFIG
    tokenizer_config = artifacts.read_json(tokenizer_config_path) if tokenizer_config_path.is_file() else {}
    _check_wordpiece(tokenizer_json, tokenizer_path)

    # texts: those that decide the kept tokens, the coverage margin, and the labeled eval set
    if cfg.data:
        texts = [t for path in cfg.data for t in read_texts(path, cfg.text_col)]
        data_source = list(cfg.data)
    else:
        train_ex, train_path = recorded_examples(model_dir, "train", "--data")
        texts, data_source = [e.text for e in train_ex], [str(train_path)]
    extra = [t for path in cfg.extra_text for t in read_texts(path, cfg.text_col)]
    eval_ex, eval_path = examples_from(cfg.eval, model_dir, "eval", "--eval", text_col=cfg.text_col, label_col=cfg.label_col)
    labels = artifacts.model_labels(model_dir)
    check_known_labels(eval_ex, eval_path, labels, "is not a label of the model", "fix the label or pass another --eval file")

    # the kept ids: seen often enough in the data, seen at all in the margin, or needed by the tokenizer
    old_encoder = _encoder(tokenizer_json)
    old_vocab = old_encoder.get_vocab(with_added_tokens=True)  # token -> old id
    size = max(old_vocab.values()) + 1
    keep_mask = _count_ids(old_encoder, texts, size) >= cfg.min_count
    keep_mask |= _count_ids(old_encoder, extra, size) > 0
    if cfg.keep_top:  # the most frequent pieces first (placeholder [unusedN] entries are not pieces)
        ranked = [i for token, i in sorted(old_vocab.items(), key=lambda item: item[1]) if not UNUSED.match(token)]
        keep_mask[ranked[: cfg.keep_top]] = True
    for token in _required_tokens(tokenizer_json, tokenizer_config) & old_vocab.keys():
        keep_mask[old_vocab[token]] = True
    keep = np.flatnonzero(keep_mask)  # (new_vocab,) old ids, ascending: the new id of keep[i] is i
    old_to_new = {int(old): new for new, old in enumerate(keep)}

    model, _ = artifacts.load_model(model_dir)
    old_embeddings = model.get_input_embeddings()  # (old_vocab, hidden)
    if size > old_embeddings.num_embeddings:
        raise UserError(
            f"{tokenizer_path}: token ids reach {size - 1} but the model has {old_embeddings.num_embeddings} embedding rows: "
            "the tokenizer does not belong to this model"
        )
    parameters_before = sum(p.numel() for p in model.parameters())
    special = _required_tokens(tokenizer_json, tokenizer_config)
    aliases = _aliases(tokenizer_json["model"], keep_mask, old_to_new, special, old_embeddings.weight.detach(), cfg.fallback)

    with artifacts.staged(out, overwrite) as staging:  # only now: bad input above leaves nothing behind
        # the tokenizer: edit the JSON, load it with transformers (which checks it), let save_model rewrite it
        new_tokenizer_json = _remap_tokenizer(tokenizer_json, old_to_new, aliases)
        new_vocab = _encoder(new_tokenizer_json).get_vocab(with_added_tokens=True)  # token -> new id
        artifacts.write_json(staging / artifacts.TOKENIZER, new_tokenizer_json)
        artifacts.write_json(staging / artifacts.TOKENIZER_CONFIG, _remap_tokenizer_config(tokenizer_config, new_vocab))
        if (model_dir / SPECIAL_TOKENS_MAP).is_file():
            shutil.copy(model_dir / SPECIAL_TOKENS_MAP, staging / SPECIAL_TOKENS_MAP)
        hf_tokenizer = transformers.AutoTokenizer.from_pretrained(staging)

        # the embeddings: the kept rows, in the kept order
        pad_id = new_vocab.get(hf_tokenizer.pad_token) if hf_tokenizer.pad_token is not None else None
        embeddings = torch.nn.Embedding(len(keep), old_embeddings.embedding_dim, padding_idx=pad_id, dtype=old_embeddings.weight.dtype)
        with torch.no_grad():
            embeddings.weight.copy_(old_embeddings.weight[torch.as_tensor(keep)])  # (new_vocab, hidden)
        model.set_input_embeddings(embeddings)
        model.config.vocab_size = len(keep)
        if getattr(model.config, "pad_token_id", None) is not None:
            model.config.pad_token_id = pad_id
        artifacts.save_model(model, hf_tokenizer, staging)  # keeps the aliases of the tokenizer.json written above
        save_config(replace(cfg, model=str(Path(cfg.model).resolve())), staging / artifacts.CONFIG)  # absolute: the lineage to the data
        saved_vocab = _encoder(artifacts.read_json(staging / artifacts.TOKENIZER)).get_vocab(with_added_tokens=True)
        if saved_vocab != new_vocab or len(set(new_vocab.values())) != len(keep):  # a bug, not bad input
            raise RuntimeError(f"the saved tokenizer ({len(saved_vocab)} tokens) does not match the {len(keep)} embedding rows")

        # the parity proof on the eval set
        eval_texts = [e.text for e in eval_ex]
        y_true = np.array([labels.index(e.label) for e in eval_ex])
        probs_before, _ = predict_probs(model_dir, eval_texts)
        probs_after, _ = predict_probs(staging, eval_texts)
        new_encoder = _encoder(new_tokenizer_json)
        lost = _newly_unknown(old_encoder, new_encoder, tokenizer_json["model"]["unk_token"], eval_texts)  # (n_eval,)
        n_tokens = sum(len(e.ids) - sum(e.special_tokens_mask) for e in new_encoder.encode_batch(eval_texts))
        old_encodings = old_encoder.encode_batch(eval_texts)
        kept_texts = np.array([keep_mask[e.ids].all() for e in old_encodings])  # (n_eval,)
        removed_tokens = np.array([(~keep_mask[e.ids]).sum() if aliases else 0 for e in old_encodings])  # (n_eval,)
        prob_diff = np.abs(probs_after - probs_before).max(axis=1)  # (n_eval,)
        bytes_before, bytes_after = (d / artifacts.WEIGHTS for d in (model_dir, staging))
        result = {
            "model": str(model_dir),
            "data": data_source,
            "extra_text": list(cfg.extra_text),
            "min_count": cfg.min_count,
            "keep_top": cfg.keep_top,
            "n_texts": len(texts),
            "n_extra_texts": len(extra),
            "vocab_before": len(old_vocab),
            "vocab_after": len(keep),
            "fallback": cfg.fallback,
            "aliases": len(aliases),
            # tokens (special ones excluded) of removed pieces, now an alias of a kept piece or [UNK]
            "aliased_token_rate": float(removed_tokens.sum() / max(n_tokens, 1)),
            "aliased_text_rate": float(np.mean(removed_tokens > 0)),
            "parameters_before": parameters_before,
            "parameters_after": sum(p.numel() for p in model.parameters()),
            "model_bytes_before": bytes_before.stat().st_size,
            "model_bytes_after": bytes_after.stat().st_size,
            "size_ratio": bytes_after.stat().st_size / bytes_before.stat().st_size,
            "eval_source": str(eval_path),
            "n_eval": len(eval_ex),
            # tokens (special ones excluded) that are [UNK] after trimming and were not before
            "oov_token_rate": float(lost.sum() / max(n_tokens, 1)),
            "oov_text_rate": float(np.mean(lost > 0)),
            "accuracy_before": accuracy(y_true, probs_before.argmax(axis=1)),
            "accuracy_after": accuracy(y_true, probs_after.argmax(axis=1)),
            "identical_predictions": float(np.mean(probs_before.argmax(axis=1) == probs_after.argmax(axis=1))),
            # texts whose tokens are all kept must score the same: the exactness claim, measured
            "n_kept_texts": int(kept_texts.sum()),
            "max_prob_diff_kept_texts": float(prob_diff[kept_texts].max()) if kept_texts.any() else 0.0,
        }
        artifacts.write_json(staging / artifacts.METRICS, result)
    return TrimResult(out, result)


# ------------------------------------------------------------------------------------------ counting


def _check_wordpiece(tokenizer_json: dict, path: Path) -> None:
    kind = (tokenizer_json.get("model") or {}).get("type")
    if kind != "WordPiece":
        raise UserError(
            f"{path}: a {kind or 'unknown'} tokenizer: trim-vocab supports WordPiece vocabularies only "
            "(BERT, MiniLM, DistilBERT); skip this stage for this model"
        )
    unk = tokenizer_json["model"].get("unk_token")
    if unk not in tokenizer_json["model"]["vocab"]:
        raise UserError(f"{path}: the WordPiece unknown token {unk!r} is not in the vocabulary: re-save the tokenizer from its base model")


def _encoder(tokenizer_json: dict):
    """A `tokenizers.Tokenizer` that adds special tokens and never pads or truncates."""
    from tokenizers import Tokenizer

    encoder = Tokenizer.from_str(json.dumps(tokenizer_json))
    encoder.no_padding()
    encoder.no_truncation()
    return encoder


def _count_ids(encoder, texts: list[str], size: int) -> np.ndarray:
    """How often each token id occurs in `texts`: (size,) counts."""
    counts = np.zeros(size, dtype=np.int64)
    for encoding in encoder.encode_batch(texts):
        np.add.at(counts, np.asarray(encoding.ids, dtype=np.int64), 1)
    return counts


def _required_tokens(tokenizer_json: dict, tokenizer_config: dict) -> set[str]:
    """Tokens kept whatever the data: added/special tokens, the unknown token, and the special tokens that
    the post-processor, the padding and tokenizer_config.json name (transformers would re-add missing ones)."""
    tokens = {a["content"] for a in tokenizer_json.get("added_tokens") or []}
    tokens.add(tokenizer_json["model"]["unk_token"])
    tokens |= set(_post_processor_tokens(tokenizer_json.get("post_processor")))
    if tokenizer_json.get("padding"):
        tokens.add(tokenizer_json["padding"]["pad_token"])
    named = [tokenizer_config.get(key) for key in TOKENIZER_CONFIG_TOKEN_KEYS]
    named += list(tokenizer_config.get("additional_special_tokens") or [])
    named += list((tokenizer_config.get("added_tokens_decoder") or {}).values())
    named = [t["content"] if isinstance(t, dict) else t for t in named]
    tokens |= {t for t in named if isinstance(t, str)}
    return tokens


def _post_processor_tokens(processor: dict | None) -> list[str]:
    if not processor:
        return []
    kind = processor["type"]
    if kind == "TemplateProcessing":
        return [t for special in processor["special_tokens"].values() for t in special["tokens"]]
    if kind in ("BertProcessing", "RobertaProcessing"):
        return [processor["sep"][0], processor["cls"][0]]
    if kind == "Sequence":
        return [t for p in processor["processors"] for t in _post_processor_tokens(p)]
    return []


def _newly_unknown(old_encoder, new_encoder, unk: str, texts: list[str]) -> np.ndarray:
    """Per text, the tokens that are `unk` after trimming but were not before: (n_texts,) counts.

    WordPiece maps a whole pre-tokenized word to [UNK], so the same character span identifies the word in both."""
    old_unk, new_unk = old_encoder.token_to_id(unk), new_encoder.token_to_id(unk)
    lost = np.zeros(len(texts), dtype=np.int64)
    for i, (old, new) in enumerate(zip(old_encoder.encode_batch(texts), new_encoder.encode_batch(texts))):
        was_unknown = {span for span, token in zip(old.offsets, old.ids) if token == old_unk}
        lost[i] = sum(
            1 for span, token, special in zip(new.offsets, new.ids, new.special_tokens_mask)
            if token == new_unk and not special and span not in was_unknown
        )
    return lost


# ------------------------------------------------------------------------------------------ rewriting


def _aliases(wordpiece: dict, keep_mask: np.ndarray, old_to_new: dict[int, int], special: set[str], embeddings, fallback: str) -> dict[str, int]:
    """The removed WordPiece pieces (placeholders aside) → the new id each one stands for: the kept piece of the
    same kind (word start or ##continuation, special tokens excluded) with the closest embedding by cosine
    (`nearest`), or [UNK] (`unk`); none for `none`."""
    import torch

    if fallback == "none":
        return {}
    vocab, unk = wordpiece["vocab"], wordpiece["unk_token"]
    prefix = wordpiece.get("continuing_subword_prefix", "##")
    removed = [(t, i) for t, i in vocab.items() if not keep_mask[i] and not UNUSED.match(t)]
    if fallback == "unk":
        return {t: old_to_new[vocab[unk]] for t, _ in removed}
    unit = torch.nn.functional.normalize(embeddings.float(), dim=1)  # (old_vocab, hidden)
    aliases = {}
    for continuing in (False, True):
        kind = lambda t: t.startswith(prefix) == continuing  # noqa: E731
        kept = np.array([i for t, i in vocab.items() if keep_mask[i] and kind(t) and t not in special], dtype=np.int64)
        todo = [(t, i) for t, i in removed if kind(t)]
        if not len(kept):
            aliases.update({t: old_to_new[vocab[unk]] for t, _ in todo})
            continue
        for start in range(0, len(todo), 2048):  # (chunk, kept) similarities, a few MB at a time
            chunk = todo[start : start + 2048]
            nearest = (unit[[i for _, i in chunk]] @ unit[kept].T).argmax(dim=1).numpy()
            aliases.update({t: old_to_new[int(kept[j])] for (t, _), j in zip(chunk, nearest)})
    return aliases


def _remap_tokenizer(tokenizer_json: dict, old_to_new: dict[int, int], aliases: dict[str, int]) -> dict:
    """A copy of tokenizer.json over the kept ids: vocabulary (plus the aliases), added tokens, post-processor
    and padding ids."""
    t = json.loads(json.dumps(tokenizer_json))
    t["model"]["vocab"] = {token: old_to_new[i] for token, i in t["model"]["vocab"].items() if i in old_to_new} | aliases
    for added in t.get("added_tokens") or []:
        added["id"] = old_to_new[added["id"]]
    ids = {**t["model"]["vocab"], **{a["content"]: a["id"] for a in t.get("added_tokens") or []}}
    _remap_post_processor(t.get("post_processor"), ids)
    if t.get("padding"):
        t["padding"]["pad_id"] = ids[t["padding"]["pad_token"]]
    return t


def _remap_post_processor(processor: dict | None, ids: dict[str, int]) -> None:
    if not processor:
        return
    kind = processor["type"]
    if kind == "TemplateProcessing":
        for special in processor["special_tokens"].values():
            special["ids"] = [ids[token] for token in special["tokens"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            processor[key] = [processor[key][0], ids[processor[key][0]]]
    elif kind == "Sequence":
        for p in processor["processors"]:
            _remap_post_processor(p, ids)


def _remap_tokenizer_config(tokenizer_config: dict, ids: dict[str, int]) -> dict:
    """tokenizer_config.json with its added-token ids (the keys of added_tokens_decoder) renumbered by content."""
    config = dict(tokenizer_config)
    if "added_tokens_decoder" in config:
        config["added_tokens_decoder"] = {str(ids[v["content"]]): v for v in config["added_tokens_decoder"].values()}
    return config
