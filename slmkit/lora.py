"""LoRA fine-tuning of a bring-your-own causal LM with PEFT: the `--lora` spec, adapters on, merge or keep them.

`parse_lora("r=16,alpha=32,targets=q_proj,v_proj,dropout=0.05")` gives a typed `LoraSpec`; `attach(model, spec)`
freezes the base and wraps the named linear layers with PEFT's low-rank adapters (a target the model lacks is
refused with the names it has). Training goes through slmkit's one loop (`slmkit.train.run_epochs`): only the
adapter weights require gradients, so the optimizer only ever sees them and the base stays bit-identical.

After training, either
- `save_merged`: the adapters folded into the base weights (W + alpha/r * B A), saved as a plain Hugging Face
  causal-LM directory (safetensors) that every other stage loads unchanged; or
- `save_adapter`: adapter_model.safetensors + adapter_config.json only (kilobytes to megabytes), with the base
  directory's absolute path recorded; `load_adapter` puts base and adapter back together (merged in memory).

`enable_gradient_checkpointing` recomputes each decoder layer's activations in the backward pass (less memory,
about a third more compute); it is the non-reentrant variant, which needs no gradient on the frozen inputs.
bf16 autocast is the loop's own (`train.bf16`); everything here also runs on a GPU (the model is moved whole).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from slmkit.errors import UserError

ADAPTER_CONFIG = "adapter_config.json"  # what PEFT writes and reads: an adapter directory
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LORA_KEYS = ("r", "alpha", "targets", "dropout")
LORA_EXAMPLE = "--lora r=16,alpha=32,targets=q_proj,v_proj"


@dataclass(frozen=True)
class LoraSpec:
    """One `--lora` setting."""

    r: int = 16  # rank of the update B A (B: out x r, A: r x in)
    alpha: float = 32.0  # the update is scaled by alpha / r
    targets: tuple[str, ...] = ("q_proj", "v_proj")  # names of the linear layers that get adapters
    dropout: float = 0.05  # dropout on the adapter's input during training

    def to_text(self) -> str:
        return f"r={self.r},alpha={self.alpha:g},targets={','.join(self.targets)},dropout={self.dropout:g}"


def parse_lora(text: str) -> LoraSpec:
    """`r=16,alpha=32,targets=q_proj,v_proj[,dropout=0.05]` → LoraSpec. After `targets=`, items without `=`
    are more target names. Errors name the flag and the fix."""
    values: dict[str, str | list[str]] = {}
    key = None
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if "=" in item:
            key, value = (s.strip() for s in item.split("=", 1))
            if key not in LORA_KEYS:
                raise UserError(f"--lora: unknown key {key!r}: valid keys are {', '.join(LORA_KEYS)} (e.g. {LORA_EXAMPLE})")
            if key in values:
                raise UserError(f"--lora: {key} is given twice: give it once")
            values[key] = [value] if key == "targets" else value
        elif key == "targets":
            values["targets"].append(item)
        else:
            raise UserError(f"--lora: {item!r} is not key=value: write it as {LORA_EXAMPLE}")
    spec = LoraSpec()
    try:
        r = int(values.get("r", spec.r))
        alpha = float(values.get("alpha", r * 2 if "r" in values else spec.alpha))
        dropout = float(values.get("dropout", spec.dropout))
    except ValueError as e:
        raise UserError(f"--lora: {e}: r is a whole number, alpha and dropout are numbers (e.g. {LORA_EXAMPLE},dropout=0.05)") from None
    targets = tuple(values.get("targets", spec.targets))
    if r < 1:
        raise UserError(f"--lora: r must be at least 1 (got {r})")
    if alpha <= 0:
        raise UserError(f"--lora: alpha must be positive (got {alpha:g})")
    if not 0 <= dropout < 1:
        raise UserError(f"--lora: dropout must be in [0, 1) (got {dropout:g})")
    if not targets or any(not t for t in targets):
        raise UserError(f"--lora: targets needs module names, e.g. {LORA_EXAMPLE}")
    return LoraSpec(r=r, alpha=alpha, targets=targets, dropout=dropout)


def linear_names(model) -> list[str]:
    """The short names of the model's linear layers (q_proj, k_proj, ..., lm_head), in first-seen order."""
    import torch

    names: dict[str, None] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            names[name.rsplit(".", 1)[-1]] = None
    return list(names)


def check_targets(model, spec: LoraSpec) -> None:
    """Every target names linear layers of `model`; else a UserError listing the ones it has."""
    available = linear_names(model)
    missing = [t for t in spec.targets if t not in available]
    if missing:
        raise UserError(
            f"--lora targets: {', '.join(missing)} not in this {model.config.model_type} model: its linear layers are "
            f"{','.join(n for n in available if n != 'lm_head')} (e.g. targets=q_proj,v_proj)"
        )


def check_targets_for_config(config, spec: LoraSpec) -> None:
    """`check_targets` on the architecture of a transformers config, built without memory (meta device)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        check_targets(AutoModelForCausalLM.from_config(config), spec)


def attach(model, spec: LoraSpec):
    """The model with LoRA adapters on `spec.targets` (a PEFT model; the base weights frozen)."""
    from peft import LoraConfig, get_peft_model

    check_targets(model, spec)
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, target_modules=list(spec.targets), lora_dropout=spec.dropout, bias="none", task_type="CAUSAL_LM")
    with _quiet_peft():
        return get_peft_model(model, config)


@contextlib.contextmanager
def _quiet_peft():
    """PEFT 0.21 reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning on every call)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def enable_gradient_checkpointing(model) -> None:
    """Recompute activations in the backward pass (non-reentrant: frozen inputs need no gradient)."""
    hf_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(hf_model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
        hf_model.activation_checkpointing_enable({"use_reentrant": False})
    else:
        hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    hf_model.config.use_cache = False  # a KV cache is of no use in training, and checkpointing refuses it


def is_checkpointing(model) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def adapter_state(model) -> dict:
    """The trainable (adapter) tensors of a PEFT model, by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_adapter(model, hf_tokenizer, directory: Path, base: str | Path) -> None:
    """adapter_model.safetensors + adapter_config.json (with the base directory's absolute path) + the tokenizer."""
    model.peft_config["default"].base_model_name_or_path = str(Path(base).resolve())
    card = Path(directory) / "README.md"
    had_card = card.exists()
    model.save_pretrained(directory, safe_serialization=True)
    if not had_card:
        card.unlink(missing_ok=True)  # PEFT's empty model-card template
    hf_tokenizer.save_pretrained(directory)
    if (Path(base) / "generation_config.json").is_file():  # the end-of-sequence ids the decode loop stops at
        shutil.copy(Path(base) / "generation_config.json", Path(directory) / "generation_config.json")


def merge(model):
    """The base model with the adapters folded into its weights (a plain transformers model)."""
    merged = model.merge_and_unload()
    merged.config.use_cache = True
    if is_checkpointing(merged):
        (getattr(merged, "activation_checkpointing_disable", None) or merged.gradient_checkpointing_disable)()
    return merged


def save_merged(model, hf_tokenizer, directory: Path) -> None:
    """The adapters merged into the base, saved as a plain Hugging Face causal-LM directory (safetensors)."""
    merged = merge(model)
    merged.save_pretrained(directory, safe_serialization=True)
    hf_tokenizer.save_pretrained(directory)


def is_adapter_dir(directory: Path) -> bool:
    return (Path(directory) / ADAPTER_CONFIG).is_file()


def adapter_base(directory: Path) -> Path:
    """The base model directory an adapter was trained on (as recorded in its adapter_config.json)."""
    directory = Path(directory)
    try:
        recorded = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"{directory / ADAPTER_CONFIG}: unreadable or without base_model_name_or_path: save the adapter again with slm train --lora") from None
    base = Path(recorded or "")
    if not base.is_dir():
        raise UserError(f"{directory}: the adapter's base model {recorded} is gone: put it back, or fix base_model_name_or_path in {ADAPTER_CONFIG}")
    return base


def load_adapter(directory: Path, load_base, merged: bool = True):
    """(model, tokenizer) of an adapter directory: its recorded base loaded with `load_base(dir) -> (model,
    tokenizer)`, the adapter put on (safetensors only) and, with `merged`, folded in. Eval mode."""
    from peft import PeftModel

    from slmkit.lm import load_causal_lm_tokenizer

    directory = Path(directory)
    if not (directory / ADAPTER_WEIGHTS).is_file():
        raise UserError(f"{directory}: no {ADAPTER_WEIGHTS} (pickle adapters are never loaded): save the adapter with safetensors")
    model, tokenizer = load_base(adapter_base(directory))
    with _quiet_peft():
        model = PeftModel.from_pretrained(model, directory, use_safetensors=True)
    if merged:
        model = model.merge_and_unload()
    model.eval()
    if (directory / "tokenizer.json").is_file():
        tokenizer = load_causal_lm_tokenizer(directory)
    return model, tokenizer


# ------------------------------------------------------------------------------------------ slm train --task lm --lora


def load_adapter_weights(model, directory: Path) -> None:
    """Put the adapter weights saved in `directory` (a `save_adapter` output) back into the PEFT `model`."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(str(Path(directory) / ADAPTER_WEIGHTS)))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise RuntimeError(f"{directory / ADAPTER_WEIGHTS}: tensors the model has no place for: {unexpected[:3]}")


def finish(model, hf_tokenizer, directory: Path, spec_text: str, merge_adapters: bool) -> dict:
    """The end of a LoRA run whose best adapter is saved in `directory`: with `merge_adapters`, replace it by the base
    with the adapters folded in (a plain causal-LM directory). What was done, for metrics.json."""
    spec = parse_lora(spec_text)
    record = {
        "lora": {
            "spec": spec.to_text(),
            "trainable_parameters": sum(p.numel() for p in adapter_state(model).values()),
            "adapter": "merged into the base" if merge_adapters else f"kept apart ({ADAPTER_WEIGHTS}; base recorded in {ADAPTER_CONFIG})",
        }
    }
    if merge_adapters:
        (Path(directory) / ADAPTER_WEIGHTS).unlink()
        (Path(directory) / ADAPTER_CONFIG).unlink()
        save_merged(model, hf_tokenizer, Path(directory))
    return record
