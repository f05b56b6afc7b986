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
from slmkit.data import Example, read_examples
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


def recorded_examples(model_dir: Path, split: str, flag: str) -> tuple[list, Path]:
    """The training ('train') or held-out ('eval') examples `model_dir` was made with, and the file they are from.

    They are read by the model's task (classification rows, NER sentences, QA questions). `flag` names the
    option that overrides the recorded data, for the error message when there is none."""
    if not (training_config(model_dir).get("data") or {}).get("train"):
        raise UserError(f"{model_dir}: no training data is recorded for this model: pass {flag} FILE")
    cfg = recorded_train_config(model_dir)
    task, d = recorded_task(model_dir), cfg.data
    train_path = Path(d.train)
    if split == "eval" and d.eval:
        path = Path(d.eval)
        if not path.exists():  # a file, or a seq.in/seq.out folder (NER)
            raise UserError(f"{path}: the eval file recorded for {model_dir} is gone: pass {flag} FILE")
        return task.read(path, d), path
    if not train_path.exists():  # a file, or a seq.in/seq.out folder (NER)
        raise UserError(f"{train_path}: the training file recorded for {model_dir} is gone: pass {flag} FILE")
    examples = task.read(train_path, d)
    if d.eval:
        return examples, train_path
    train_ex, eval_ex = task.split(examples, d.eval_split, cfg.train.seed)
    return (train_ex if split == "train" else eval_ex), train_path


def examples_from(path: str | Path | None, model_dir: Path, split: str, flag: str, text_col: str = "text", label_col: str = "label") -> tuple[list[Example], Path]:
    """Examples from `path` when given, else the model's recorded `split`."""
    if path:
        return read_examples(Path(path), text_col, label_col), Path(path)
    return recorded_examples(model_dir, split, flag)


def task_examples(path: str | Path | None, model_dir: Path, split: str, flag: str) -> tuple[list, Path]:
    """The model's task's examples from `path` (read with the recorded data settings: NER columns and scheme)
    when given, else the model's recorded `split`."""
    if not path:
        return recorded_examples(model_dir, split, flag)
    return recorded_task(model_dir).read(Path(path), recorded_train_config(model_dir).data), Path(path)


def recorded_train_config(model_dir: Path):
    """The `slm train` settings at the root of `model_dir`'s lineage, as a TrainConfig (defaults where nothing
    is recorded)."""
    from slmkit.config import TrainConfig, from_dict

    recorded = training_config(model_dir)
    values = {k: v for k, v in recorded.items() if k in ("task", "data", "model", "train")}
    if recorded.get("teacher") and recorded.get("stride") is not None:  # a distilled QA student: its windows
        values["model"] = {"stride": recorded["stride"]}
    return from_dict(TrainConfig, values)


def recorded_task(model_dir: Path, data=None):
    """The model's task with the settings it was trained with (NER scheme, QA stride); `data` (a DataConfig)
    overrides the NER reading settings for a new file."""
    from dataclasses import replace

    from slmkit.tasks import get_task, task_options

    cfg = recorded_train_config(model_dir)
    if data is not None:
        cfg = replace(cfg, data=replace(cfg.data, scheme=data.scheme, strict=data.strict, tag_col=data.tag_col))
    return get_task(artifacts.model_task(Path(model_dir)), **task_options(cfg))
