"""What the quality modules know about texts: sentence embeddings from an encoder, and a trained model's class
probabilities.

`embed_texts` gives the features for active learning's diversity term and for the label-error probe: the mean of
the encoder's last hidden states over real (non-padding) tokens, L2-normalized — all-MiniLM-L6-v2's own pooling,
so cosine similarity is a dot product. `model_probs` asks the model attached to a labeling project.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slmkit import artifacts
from slmkit.errors import UserError

MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on at most 256 tokens; labeling items are rarely longer


def embed_texts(texts: list[str], model_dir: str | Path | None = None, batch_size: int = 64) -> np.ndarray:
    """(n_texts, hidden) float32 unit vectors, in input order.

    `model_dir`: None for the packaged all-MiniLM-L6-v2; a local Hugging Face encoder directory; or an
    `slm train` output, whose fine-tuned encoder is used (its classification head is not). Safetensors only.
    Texts are sorted by length so each batch pads little, then put back in input order."""
    import torch

    encoder, tokenizer = _load_encoder(Path(model_dir) if model_dir is not None else None)
    limit = min(MAX_TOKENS, getattr(encoder.config, "max_position_embeddings", MAX_TOKENS), tokenizer.model_max_length)
    keep_types = getattr(encoder.config, "type_vocab_size", 0) > 0
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")  # characters: a cheap proxy for token count
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=limit, return_tensors="pt")
            if not keep_types:
                batch.pop("token_type_ids", None)
            hidden = encoder(**batch).last_hidden_state  # (batch, seq, hidden)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).float().numpy()
    return out


def model_probs(texts: list[str], model_dir: str | Path) -> tuple[np.ndarray, list[str]]:
    """The attached model's class probabilities (n_texts, n_labels) and its label names (column order).

    An exported directory (model.onnx) runs on the torch-free `slmkit.runtime`; an `slm train` output on PyTorch."""
    directory = Path(model_dir)
    if not directory.is_dir():
        raise UserError(f"{directory}: model directory not found: attach the --out directory of slm train or slm export")
    if (directory / artifacts.ONNX_MODEL).is_file():
        from slmkit.runtime import Predictor

        predictor = Predictor(directory)
        return predictor.predict_proba(list(texts)), list(predictor.labels)
    from slmkit.predict import predict_probs

    return predict_probs(directory, list(texts))


def _load_encoder(directory: Path | None):
    """The encoder (eval mode) and its tokenizer."""
    import transformers
    from transformers import AutoModel, AutoTokenizer

    from slmkit.base import packaged_minilm_dir

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    directory = directory or packaged_minilm_dir()
    if not directory.is_dir():
        raise UserError(f"{directory}: encoder directory not found: pass a Hugging Face model directory or an slm train output")
    if (directory / artifacts.CONFIG).is_file():  # an slm train output: its fine-tuned encoder
        model, tokenizer = artifacts.load_model(directory)
        encoder = model.base_model if model.base_model is not model else None  # a CNN/BiLSTM student has no encoder
    else:
        artifacts.refuse_pickle(directory, artifacts.WEIGHTS)
        if not list(directory.glob("*.safetensors")):
            raise UserError(f"{directory}: no .safetensors weights: re-save the model with save_pretrained(..., safe_serialization=True)")
        encoder, tokenizer = AutoModel.from_pretrained(directory, use_safetensors=True), AutoTokenizer.from_pretrained(directory)
    if encoder is None or not hasattr(encoder.config, "hidden_size"):
        raise UserError(f"{directory}: not a transformer encoder: pass a BERT-family model directory")
    return encoder.eval(), tokenizer
