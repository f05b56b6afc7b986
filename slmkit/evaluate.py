"""`slm evaluate`: score a trained model on labeled data, with confidence intervals.

Writes `metrics.json` and `config.yaml` to `<model>/eval/<data name>/` unless `--out` says otherwise. The
report is the task's: for classification accuracy and macro-F1 with 95% bootstrap intervals, per-class
precision/recall/F1/support, confusion matrix and expected calibration error; for NER entity-level
precision/recall/F1 per type; for QA exact match and F1; for a causal language model (the output of
`slm train --task lm`, or any local Hugging Face causal LM) the perplexity of held-out text with a 95% bootstrap
interval over its documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slmkit import artifacts
from slmkit.config import EvalConfig, save_config
from slmkit.data import check_known_labels, read_examples
from slmkit.predict import predict_probs
from slmkit.runtime import load_manifest
from slmkit.tasks import get_task


@dataclass
class EvalResult:
    out: Path
    metrics: dict


def evaluate(cfg: EvalConfig) -> EvalResult:
    """Predict every example of `cfg.data` with `cfg.model` and write the metrics."""
    cfg.validate()
    model_dir, data_path = Path(cfg.model), Path(cfg.data.eval)
    if _is_causal_lm(model_dir):
        report = {"model": str(model_dir), "data": str(data_path), **_lm_report(cfg, model_dir, data_path)}
        return _write(cfg, model_dir, data_path, report)
    if (model_dir / artifacts.ONNX_MODEL).is_file():
        load_manifest(model_dir)  # an exported or quantized model, served by the torch-free runtime
    else:
        artifacts.check_model_dir(model_dir)
    d = cfg.data
    if artifacts.model_task(model_dir) != "classification":
        report = {"model": str(model_dir), "data": str(data_path), **_task_report(cfg, model_dir, data_path)}
        return _write(cfg, model_dir, data_path, report)
    examples = read_examples(data_path, d.text_col, d.label_col, d.encoding, d.drop_empty)
    labels = artifacts.model_labels(model_dir)
    check_known_labels(examples, data_path, labels, "is not one the model knows", "fix the label or retrain with it")
    index = {label: i for i, label in enumerate(labels)}
    probs, _ = predict_probs(model_dir, [e.text for e in examples], cfg.batch_size)
    y_true = np.array([index[e.label] for e in examples])
    task = get_task(artifacts.model_task(model_dir))
    report = {"model": str(model_dir), "data": str(data_path), **task.metrics(y_true, probs, labels, cfg.bootstrap, cfg.seed)}
    return _write(cfg, model_dir, data_path, report)


def _task_report(cfg: EvalConfig, model_dir: Path, data_path: Path) -> dict:
    """NER and QA: the task reads the file, runs the model over its features and scores the outputs."""
    from slmkit.predict import open_task_model

    runner = open_task_model(model_dir, batch_size=cfg.batch_size, data=cfg.data)
    examples = runner.task.read(data_path, cfg.data)
    features, outputs = runner.run(examples)
    return runner.task.score(examples, features, outputs, runner.labels, full=True, seed=cfg.seed, n_resamples=cfg.bootstrap)


def _is_causal_lm(model_dir: Path) -> bool:
    """A PyTorch causal-LM directory: trained by `slm train --task lm`, or any *ForCausalLM saved by transformers."""
    if not (model_dir / artifacts.WEIGHTS).is_file() or not (model_dir / artifacts.HF_CONFIG).is_file():
        return False
    if artifacts.model_task(model_dir) == "lm":
        return True
    archs = artifacts.read_json(model_dir / artifacts.HF_CONFIG).get("architectures") or []
    return any(str(a).endswith("ForCausalLM") for a in archs)


def _lm_report(cfg: EvalConfig, model_dir: Path, data_path: Path) -> dict:
    """Perplexity of the documents of `data_path` (.txt or .jsonl), each scored on its own, in windows of the
    context length the model was trained with."""
    from functools import partial

    import yaml

    from slmkit.encoding import make_encoder
    from slmkit.lm import load_causal_lm
    from slmkit.tasks.lm import LMTask, context_of

    model, tokenizer = load_causal_lm(model_dir)
    saved = model_dir / artifacts.CONFIG
    trained = (yaml.safe_load(saved.read_text(encoding="utf-8")) or {}).get("model", {}).get("max_length") if saved.is_file() else None
    context = context_of(model.config, trained)
    task = LMTask()
    task.use_tokenizer(tokenizer)
    docs = task.read(data_path, cfg.data)
    features = task.encode_eval(docs, make_encoder(tokenizer, context), None, context)
    outputs = task.predict_logits(model, features, partial(task.collate, pad_id=tokenizer.pad_token_id or 0), cfg.batch_size)
    return {"context": context, **task.score(docs, features, outputs, [], full=True, seed=cfg.seed, n_resamples=cfg.bootstrap)}


def _write(cfg: EvalConfig, model_dir: Path, data_path: Path, report: dict) -> EvalResult:
    out = Path(cfg.out) if cfg.out else artifacts.eval_dir(model_dir, data_path)
    staging = artifacts.begin(out, overwrite=False)
    save_config(cfg, staging / artifacts.CONFIG)
    artifacts.write_json(staging / artifacts.METRICS, report)
    artifacts.commit(staging, out)
    return EvalResult(out, report)
