"""Causal language models in PyTorch: loading a local Hugging Face causal-LM directory, and the `TorchStepper`
that runs one behind slmkit's decode loop (`slmkit.generate`) with its KV cache.

Any local causal LM of the Llama, Mistral, Phi, Gemma or Qwen2 families (and the tiny LM `slm train --task lm`
writes) loads here; weights come from safetensors only and nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from slmkit.errors import UserError


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:160]


def check_causal_lm_dir(directory: str | Path, flag: str = "--model") -> Path:
    """`directory` as a Path when it holds a Hugging Face causal LM with safetensors weights, else a one-line UserError
    naming the directory and what was found there."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"{flag} {directory}: no such directory: pass a local Hugging Face causal-LM directory")
    if not (d / "config.json").is_file():
        found = ", ".join(sorted(p.name for p in d.iterdir())[:6]) or "nothing"
        raise UserError(f"{flag} {directory}: not a Hugging Face model directory (no config.json; found {found}): pass a causal LM saved with save_pretrained")
    try:
        config = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{flag} {directory}: config.json cannot be read ({_first_line(e)})") from None
    archs = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    model_type = config.get("model_type")
    causal = any(a.endswith("ForCausalLM") for a in archs) if archs else model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if not causal:
        what = ", ".join(archs) or f"model_type {model_type!r}"
        raise UserError(f"{flag} {directory}: not a causal language model (config.json says {what}): pass a *ForCausalLM directory such as the output of slm train --task lm")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(f"{flag} {directory}: model_type {model_type!r} is not a causal LM this transformers version knows")
    if not list(d.glob("*.safetensors")):
        raise UserError(f"{flag} {directory}: no .safetensors weights (slmkit never loads pickled .bin files): re-save the model with safe_serialization=True")
    return d


def load_causal_lm(directory: str | Path, flag: str = "--model") -> tuple[Any, Any]:
    """(model in eval mode, its Hugging Face fast tokenizer) from a local causal-LM directory."""
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar in the terminal
    from slmkit import lora, wquant

    if lora.is_adapter_dir(Path(directory)):  # a LoRA adapter kept apart: its recorded base, the adapter merged in
        return lora.load_adapter(Path(directory), lambda base: load_causal_lm(base, flag))
    d = check_causal_lm_dir(directory, flag)
    if wquant.is_quantized_dir(d):  # an slm quantize --method int8-weight|int4-weight output
        return wquant.load_quantized(d)
    tokenizer = load_causal_lm_tokenizer(d, flag)
    try:
        model = AutoModelForCausalLM.from_pretrained(d, use_safetensors=True)
    except Exception as e:
        raise UserError(f"{flag} {directory}: the model cannot be loaded ({_first_line(e)})") from None
    model.eval()
    return model, tokenizer


def load_causal_lm_tokenizer(directory: str | Path, flag: str = "--model") -> Any:
    """The Hugging Face fast tokenizer of a causal-LM directory (tokenizer.json), with a pad token (its end token
    when it has none: padding is masked anyway)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except Exception as e:
        raise UserError(f"{flag} {directory}: no usable tokenizer ({_first_line(e)}): the directory needs tokenizer.json") from None
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise UserError(f"{flag} {directory}: only fast (tokenizer.json) tokenizers are supported")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def context_length(config: Any) -> int | None:
    """The longest sequence (prompt + output) the model's positions cover, when its config says so."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class TorchStepper:
    """A Hugging Face causal LM behind `slmkit.generate`: the prompt runs once, then each token is one forward pass
    over the KV cache (a transformers `DynamicCache`, passed as `cache`, formerly `past_key_values`)."""

    def __init__(self, model: Any):
        import inspect

        self.model = model.eval()
        self.context_length = context_length(model.config)
        self._cache = None
        # transformers 5.x renamed forward's `past_key_values` to `cache` (the old name warns, then goes in 5.40)
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}  # only the last position's logits

    def _forward(self, ids: list[int]) -> np.ndarray:
        import torch

        device = next(self.model.parameters()).device
        with torch.inference_mode():
            input_ids = torch.tensor([ids], dtype=torch.long, device=device)  # (1, new tokens)
            out = self.model(input_ids=input_ids, use_cache=True, **{self._cache_arg: self._cache}, **self._extra)
        cache = getattr(out, "cache", None)
        self._cache = cache if cache is not None else getattr(out, "past_key_values", self._cache)
        return out.logits[0, -1].float().cpu().numpy()  # (vocab,)

    def start(self, prompt_ids: list[int]) -> np.ndarray:
        from transformers import DynamicCache

        self._cache = DynamicCache(config=self.model.config)
        return self._forward([int(t) for t in prompt_ids])

    def snapshot(self) -> Any:
        """The KV cache so far, to `restore` later (a copy: the model extends its cache in place)."""
        import copy

        return copy.deepcopy(self._cache)

    def restore(self, state: Any) -> None:
        import copy

        self._cache = copy.deepcopy(state)

    def step(self, token_id: int) -> np.ndarray:
        if self._cache is None:
            raise RuntimeError("TorchStepper.step before start")
        return self._forward([int(token_id)])
