"""Where a model's data came from: later stages (export, quantize, prune, trim-vocab) reuse the training and
eval examples of the model they transform, unless the user passes other files.

Every output records the stage config that made it (`config.yaml`). A trained model's config names its data;
a derived model's config names the model it came from (`model:`), and an exported ONNX directory's manifest
names its PyTorch source. Following that chain back to `slm train` finds the files, and repeating the
training run's seeded split reproduces its held-out eval set exactly.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from slmkit import artifacts
from slmkit.data import Example, read_examples, stratified_split
from slmkit.errors import UserError


def training_config(model_dir: Path) -> dict:
    """The `slm train` config at the root of `model_dir`'s lineage (empty when none is recorded)."""
    seen = set()
    current = Path(model_dir)
    while current.resolve() not in seen:
        seen.add(current.resolve())
        manifest = current / artifacts.MANIFEST
        if manifest.is_file():
            source = artifacts.read_json(manifest).get("source")
            if not source:
                return {}
            current = Path(source)
            continue
        path = current / artifacts.CONFIG
        if not path.is_file():
            return {}
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if isinstance(cfg.get("data"), dict) and cfg["data"].get("train"):
            return cfg
        if not cfg.get("model"):
            return {}
        current = Path(cfg["model"])
    return {}


def recorded_examples(model_dir: Path, split: str, flag: str) -> tuple[list[Example], Path]:
    """The training ('train') or held-out ('eval') examples `model_dir` was made with, and the file they are from.

    `flag` names the option that overrides the recorded data, for the error message when there is none."""
    cfg = training_config(model_dir)
    data = cfg.get("data") or {}
    if not data.get("train"):
        raise UserError(f"{model_dir}: no training data is recorded for this model: pass {flag} FILE")
    text_col, label_col = str(data.get("text_col", "text")), str(data.get("label_col", "label"))
    encoding, drop_empty = data.get("encoding", "utf-8"), bool(data.get("drop_empty", False))
    train_path = Path(data["train"])
    if split == "eval" and data.get("eval"):
        path = Path(data["eval"])
        if not path.is_file():
            raise UserError(f"{path}: the eval file recorded for {model_dir} is gone: pass {flag} FILE")
        return read_examples(path, text_col, label_col, encoding, drop_empty), path
    if not train_path.is_file():
        raise UserError(f"{train_path}: the training file recorded for {model_dir} is gone: pass {flag} FILE")
    examples = read_examples(train_path, text_col, label_col, encoding, drop_empty)
    if data.get("eval"):
        return examples, train_path
    seed = int((cfg.get("train") or {}).get("seed", 42))
    train_ex, eval_ex = stratified_split(examples, float(data.get("eval_split", 0.1)), seed)
    return (train_ex if split == "train" else eval_ex), train_path


def examples_from(path: str | Path | None, model_dir: Path, split: str, flag: str, text_col: str = "text", label_col: str = "label") -> tuple[list[Example], Path]:
    """Examples from `path` when given, else the model's recorded `split`."""
    if path:
        return read_examples(Path(path), text_col, label_col), Path(path)
    return recorded_examples(model_dir, split, flag)
