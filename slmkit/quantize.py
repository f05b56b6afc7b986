"""`slm quantize`: an exported ONNX model to int8, measured against the fp32 model it came from.

Read top to bottom: `quantize(cfg)` checks the input is an exported directory, then makes one int8 model:

- dynamic: weights int8 ahead of time, activations quantized per batch at run time (ONNX Runtime);
- static: weights and activations int8 in QDQ format, activation ranges calibrated on `calib_size` of the
  model's training texts (min-max, entropy or percentile);
- qat: fake-quantization fine-tuning of the PyTorch source (the same int8 rounding that dynamic quantization
  applies, simulated in the forward pass, gradients passed straight through), exported again and quantized
  dynamically — for when post-training quantization loses more than the budget.

With `max_drop` (accuracy-aware mode) it scores each candidate on the eval set and backs off while the drop of
the task metric exceeds the budget: first the head stays fp32, then also the embedding lookups, then whole
encoder layers from the top down, and finally the fp32 model itself. `metrics.json` records every step tried.
Operators named in `exclude` always stay fp32.

Every task goes through the same ladder. The metric is the task's own (`task.metric_names[0]`): accuracy for
classification, entity F1 for NER, SQuAD F1 for QA, all in points. NER and QA candidates are served by the
torch-free `TaskSession` and scored by the task's `score`; their static calibration feeds the task's own
features (NER sentences, QA question + context windows) drawn from the training data.

This CPU matters: without VNNI or AMX, int8 kernels can be no faster than fp32; the metrics say which.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from slmkit import artifacts
from slmkit.config import ExportConfig, QuantizeConfig, save_config
from slmkit.data import read_texts
from slmkit.errors import UserError
from slmkit.hardware import int8_speedup_expected
from slmkit.lineage import examples_from, task_examples
from slmkit.runtime import Predictor, TaskSession, load_manifest, pad_features

WEIGHT_MATMULS_PER_LAYER = 6  # query, key, value, attention output, FFN in, FFN out


@dataclass
class QuantizeResult:
    out: Path
    metrics: dict


@dataclass
class TaskEvaluation:
    """The eval set of an NER or QA model: its examples (gold tags or answers inside), scored by the task."""

    examples: list
    metric: str  # the key of task.score's quick metrics that the budget is measured in


def quantize(cfg: QuantizeConfig, overwrite: bool = False, progress: bool = True) -> QuantizeResult:
    """Quantize the exported model `cfg.model` into `cfg.out` (see the module doc for the methods)."""
    cfg.validate()
    src, out = Path(cfg.model), Path(cfg.out)
    if cfg.method in ("int8-weight", "int4-weight") or is_causal_lm_dir(src):  # a PyTorch causal LM: weight-only
        from slmkit.wquant import quantize_lm as quantize_weights

        if cfg.method not in ("int8-weight", "int4-weight"):
            raise UserError(f"{src}: a PyTorch causal LM: pass --method int8-weight or int4-weight (or slm export it to ONNX first for {cfg.method})")
        result = quantize_weights(cfg, overwrite)
        return QuantizeResult(result.out, result.metrics)
    if src.is_dir() and not (src / artifacts.ONNX_MODEL).is_file() and (src / artifacts.WEIGHTS).is_file():
        raise UserError(f"{src}: a PyTorch model, not an ONNX export: run slm export --model {src} --out DIR first")
    manifest = load_manifest(src)
    if manifest.get("precision") != "fp32":
        raise UserError(f"{src}: already quantized ({manifest.get('precision')}): quantize the fp32 export instead")
    artifacts.check_output(out, overwrite)
    if manifest.get("task") == "lm":
        return quantize_lm(cfg, src, out, manifest, overwrite)
    if manifest.get("task", "classification") != "classification":
        calib, evaluation = task_data(cfg, src, manifest)
    else:
        calib, evaluation = classification_data(cfg, src, manifest)

    with artifacts.staged(out, overwrite) as staging:
        with tempfile.TemporaryDirectory(prefix=".slm-quantize-", dir=out.parent) as tmp:
            work = Path(tmp)
            fp32 = qat_export(cfg, manifest, work, progress) if cfg.method == "qat" else src
            metrics = run_ladder(cfg, src, fp32, staging, work, calib, evaluation)
        artifacts.copy_serving_files(src, staging)
        precision = "fp32" if metrics["fell_back_to_fp32"] else "int8"
        artifacts.write_json(staging / artifacts.MANIFEST, {**manifest, "precision": precision, "quantization": metrics["chosen"]})
        save_config(replace(cfg, model=str(Path(cfg.model).resolve())), staging / artifacts.CONFIG)  # absolute: the lineage to the data
        artifacts.write_json(staging / artifacts.METRICS, metrics)
    return QuantizeResult(out, metrics)


def is_causal_lm_dir(directory: Path) -> bool:
    """A PyTorch Hugging Face causal-LM directory (config.json says *ForCausalLM; no ONNX graph)."""
    config = directory / artifacts.HF_CONFIG
    if not config.is_file() or (directory / artifacts.ONNX_MODEL).is_file():
        return False
    try:
        architectures = artifacts.read_json(config).get("architectures") or []
    except ValueError:
        return False
    return any(str(a).endswith("ForCausalLM") for a in architectures)


def classification_data(cfg: QuantizeConfig, src: Path, manifest: dict) -> tuple[list[str] | None, tuple | None]:
    """Calibration texts (static) and the eval set (texts, class ids), when it is known."""
    calib = None
    if cfg.method == "static":
        if cfg.calib_data:
            source = Path(cfg.calib_data)
            texts = [t for t in read_texts(source, cfg.text_col) if t.strip()]
        else:
            examples, source = examples_from(None, src, "train", "--calib-data")
            texts = [e.text for e in examples if e.text.strip()]
        if not texts:
            raise UserError(f"{source}: no usable calibration texts (every row is empty): pass another --calib-data FILE")
        rng = np.random.default_rng(cfg.seed)
        calib = [texts[i] for i in rng.choice(len(texts), min(cfg.calib_size, len(texts)), replace=False)]
    evaluation = None
    try:  # always measured when the eval set is known; required for the accuracy budget
        examples, source = examples_from(cfg.eval_data, src, "eval", "--eval-data", cfg.text_col, cfg.label_col)
    except UserError:
        if cfg.max_drop is not None or cfg.eval_data:
            raise
        examples = None
    if examples is not None:
        unknown = sorted({e.label for e in examples} - set(manifest["labels"]))
        if unknown:
            raise UserError(f"{source}: labels the model does not know: {', '.join(unknown[:5])}: pass the eval file the model was trained for")
        evaluation = ([e.text for e in examples], np.array([manifest["labels"].index(e.label) for e in examples]))
    return calib, evaluation


def task_data(cfg: QuantizeConfig, src: Path, manifest: dict) -> tuple[list | None, TaskEvaluation | None]:
    """NER/QA: calibration examples (static; a seeded sample of the training data or `calib_data`, read by the
    task) and the eval examples (`eval_data`, else the model's recorded eval set), when they are known."""
    from slmkit.tasks import get_task

    calib = None
    if cfg.method == "static":
        examples, source = task_examples(cfg.calib_data, src, "train", "--calib-data")
        if not examples:
            raise UserError(f"{source}: no usable calibration examples: pass another --calib-data FILE")
        rng = np.random.default_rng(cfg.seed)
        calib = [examples[i] for i in sorted(rng.choice(len(examples), min(cfg.calib_size, len(examples)), replace=False))]
    try:  # always measured when the eval set is known; required for the accuracy budget
        examples, _ = task_examples(cfg.eval_data, src, "eval", "--eval-data")
    except UserError:
        if cfg.max_drop is not None or cfg.eval_data:
            raise
        return calib, None
    task = get_task(manifest["task"], **manifest.get("task_options", {}))
    return calib, TaskEvaluation(examples, task.metric_names[0])


# ---------------------------------------------------------------------------------------- the ladder


def run_ladder(cfg: QuantizeConfig, src: Path, fp32: Path, staging: Path, work: Path, calib, evaluation) -> dict:
    """Quantize with fewer and fewer int8 nodes until the accuracy budget holds (one try without a budget)."""
    import onnx

    graph = onnx.load(str(fp32 / artifacts.ONNX_MODEL)).graph
    quantized = DYNAMIC_OPS if cfg.method in ("dynamic", "qat") else QUANTIZED_OPS
    steps = backoff_steps(graph, cfg.exclude, quantized) if cfg.max_drop is not None else [("as asked", list(cfg.exclude))]
    ref_scores = measure_dir(src, evaluation) if evaluation else None
    tried = []
    for name, exclude in steps:
        candidate = work / f"try{len(tried)}"
        candidate.mkdir()
        shutil.copy(src / artifacts.MANIFEST, candidate / artifacts.MANIFEST)
        shutil.copy(src / artifacts.TOKENIZER, candidate / artifacts.TOKENIZER)
        quantize_file(cfg, fp32 / artifacts.ONNX_MODEL, candidate / artifacts.ONNX_MODEL, exclude, calib)
        record = {"step": name, "excluded_nodes": len(exclude), "bytes": (candidate / artifacts.ONNX_MODEL).stat().st_size}
        if evaluation:
            scores = measure_dir(candidate, evaluation, ref_scores["pred"])
            record.update(metric=scores["metric"], drop_points=100 * (ref_scores["metric"] - scores["metric"]), agreement=scores["agreement"])
        tried.append(record)
        if cfg.max_drop is None or record["drop_points"] <= cfg.max_drop + 1e-9:
            shutil.move(candidate / artifacts.ONNX_MODEL, staging / artifacts.ONNX_MODEL)
            return summary(cfg, src, staging, tried, ref_scores, exclude, fell_back=False, metric_name=metric_name(evaluation))
    shutil.copy(src / artifacts.ONNX_MODEL, staging / artifacts.ONNX_MODEL)  # nothing held the budget: keep fp32
    tried.append({"step": "fp32 (no int8 variant within the budget)", "excluded_nodes": None, "metric": ref_scores["metric"], "drop_points": 0.0, "agreement": 1.0})
    return summary(cfg, src, staging, tried, ref_scores, [], fell_back=True, metric_name=metric_name(evaluation))


QUANTIZED_OPS = ("MatMul", "Gather", "Gemm")  # what slm quantize asks ONNX Runtime's static (QDQ) int8 to quantize
# ... and its dynamic int8: no Gemm in that registry, but the LSTM of a BiLSTM student (DynamicQuantizeLSTM: int8
# weights, 4x smaller; a CoNLL BiLSTM tagger of 4.8M parameters went from 7.2 MB to 4.9 MB)
DYNAMIC_OPS = ("MatMul", "Gather", "LSTM")


def backoff_steps(graph, always: list[str], quantized: tuple[str, ...] = QUANTIZED_OPS) -> list[tuple[str, list[str]]]:
    """The accuracy-aware ladder: exclusion lists from none to everything but the encoder's lower layers. Only
    nodes of the `quantized` op types count (keeping an unquantized node fp32 changes nothing), and a step that
    would exclude nothing more than the one before it is left out: each step tries a different model."""
    nodes = list(graph.node)
    weights = {t.name for t in graph.initializer}
    head = [n.name for n in nodes if n.op_type == "Gemm" and "Gemm" in quantized]  # the pooler and classifier (nn.Linear on a 2-D input)
    recurrent = [n.name for n in nodes if n.op_type == "LSTM" and "LSTM" in quantized]  # a BiLSTM student's layers
    embeddings = [n.name for n in nodes if n.op_type == "Gather" and n.input and n.input[0] in weights]
    matmuls = [n.name for n in nodes if n.op_type == "MatMul" and any(i in weights for i in n.input)]
    # a per-token head (NER's classifier, QA's span layer) is nn.Linear on a 3-D input: a MatMul after the last layer's six
    n_layer_matmuls = len(matmuls) // WEIGHT_MATMULS_PER_LAYER * WEIGHT_MATMULS_PER_LAYER
    head += matmuls[n_layer_matmuls:]
    matmuls = matmuls[:n_layer_matmuls]
    layers = [matmuls[i : i + WEIGHT_MATMULS_PER_LAYER] for i in range(0, len(matmuls), WEIGHT_MATMULS_PER_LAYER)]
    head_lstm = head + recurrent
    steps = [("all int8", list(always)), ("head fp32", always + head), ("head and LSTM fp32", always + head_lstm),
             ("head and embeddings fp32", always + head_lstm + embeddings)]
    for k in range(1, len(layers)):
        top = [name for layer in layers[-k:] for name in layer]
        steps.append((f"head, embeddings and top {k} of {len(layers)} layers fp32", always + head_lstm + embeddings + top))
    return [step for i, step in enumerate(steps) if i == 0 or len(set(step[1])) > len(set(steps[i - 1][1]))]


def quantize_file(cfg: QuantizeConfig, src: Path, dst: Path, exclude: list[str], calib: list | None) -> None:
    """One ONNX Runtime quantization of `src` into `dst`, keeping the nodes (or op types) in `exclude` fp32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # ORT's "consider pre-processing" advice
    op_types = list(DYNAMIC_OPS if cfg.method in ("dynamic", "qat") else QUANTIZED_OPS)
    kept_types = {e for e in exclude if e in op_types}
    op_types = [t for t in op_types if t not in kept_types]
    nodes = [e for e in exclude if e not in kept_types]
    if cfg.method in ("dynamic", "qat"):
        quantize_dynamic(
            src, dst, per_channel=cfg.per_channel, reduce_range=cfg.reduce_range, weight_type=QuantType.QInt8,
            op_types_to_quantize=op_types, nodes_to_exclude=nodes,
        )
        return
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[cfg.calib_method]
    reader = CalibrationReader(src.parent, calib) if calib and isinstance(calib[0], str) else TaskCalibrationReader(src.parent, calib)
    quantize_static(
        src, dst, reader, quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=op_types,
        nodes_to_exclude=nodes, calibrate_method=method, extra_options={"CalibMaxIntermediateOutputs": 64},
    )


class CalibrationReader:
    """Feeds calibration texts to ONNX Runtime's calibrator in batches of 8, all padded to one width: the
    histogram calibrators (entropy, percentile) stack every batch's activations and need equal shapes."""

    BATCH = 8

    def __init__(self, model_dir: Path, texts: list[str]):
        predictor = Predictor(model_dir)
        ids = [e.ids for e in predictor.tokenizer.encode_batch(texts)]
        ids += ids[: -len(ids) % self.BATCH]  # fill the last batch with repeats
        width = max(map(len, ids))
        self.batches = iter([predictor.feed(ids[i : i + self.BATCH], width) for i in range(0, len(ids), self.BATCH)])

    def get_next(self):
        return next(self.batches, None)

    def rewind(self):  # the calibrator's interface; each reader is used once
        pass


class TaskCalibrationReader(CalibrationReader):
    """NER/QA calibration: the task's features of the calibration examples (sentences, question + context windows,
    with QA's token types) in batches of 8, all padded to one width."""

    def __init__(self, model_dir: Path, examples: list):
        session = TaskSession(model_dir)
        features = session.task.encode(examples, session.encoder, None)
        features += features[: -len(features) % self.BATCH]  # fill the last batch with repeats
        width = max(len(f["input_ids"]) for f in features)
        batches = []
        for i in range(0, len(features), self.BATCH):
            batch = pad_features(features[i : i + self.BATCH], session.inputs, session.pad_id)
            # pad_features pads to the batch's longest: widen every array to the calibration set's longest
            for name, array in batch.items():
                fill = session.pad_id if name == "input_ids" else 0
                batch[name] = np.pad(array, ((0, 0), (0, width - array.shape[1])), constant_values=fill)
            batches.append(batch)
        self.batches = iter(batches)


def metric_name(evaluation) -> str:
    return evaluation.metric if isinstance(evaluation, TaskEvaluation) else "accuracy"


def measure_dir(directory: Path, evaluation, reference_pred: np.ndarray | None = None) -> dict:
    """The eval metric of the exported model in `directory` (and its agreement with a reference's predictions)."""
    if isinstance(evaluation, TaskEvaluation):
        return score_task(TaskSession(directory), evaluation, reference_pred)
    return score(Predictor(directory), evaluation, reference_pred)


def score_task(session: TaskSession, evaluation: TaskEvaluation, reference_pred: np.ndarray | None = None) -> dict:
    """NER/QA: the task's metric on the eval examples, and agreement with a reference model's argmax: per token
    for NER's tag logits, per window for QA's start and end logits."""
    features, outputs = session.run(evaluation.examples)
    metric = float(session.task.score(evaluation.examples, features, outputs, session.labels, full=False)[evaluation.metric])
    parts = [np.atleast_1d(np.asarray(a).argmax(-1)) for out in outputs for a in (out if isinstance(out, tuple) else (out,))]
    pred = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    agreement = float((pred == reference_pred).mean()) if reference_pred is not None and len(pred) else 1.0
    return {"metric": metric, "pred": pred, "agreement": agreement}


def score(predictor: Predictor, evaluation: tuple[list[str], np.ndarray], reference_pred: np.ndarray | None = None) -> dict:
    """Accuracy on the eval set, and agreement of argmax with a reference model's predictions."""
    texts, y = evaluation
    pred = predictor.logits(texts).argmax(1)
    agreement = float((pred == reference_pred).mean()) if reference_pred is not None else 1.0
    return {"metric": float((pred == y).mean()), "pred": pred, "agreement": agreement}


def summary(cfg: QuantizeConfig, src: Path, staging: Path, tried: list[dict], ref_scores: dict | None, exclude: list[str], fell_back: bool, metric_name: str = "accuracy") -> dict:
    fp32_bytes = (src / artifacts.ONNX_MODEL).stat().st_size
    int8_bytes = (staging / artifacts.ONNX_MODEL).stat().st_size
    chosen = {"method": cfg.method, "per_channel": cfg.per_channel, "step": tried[-1]["step"], "excluded_nodes": exclude}
    if cfg.method == "static":
        chosen.update(calib_size=cfg.calib_size, calib_method=cfg.calib_method)
    return {
        "chosen": chosen,
        "fell_back_to_fp32": fell_back,
        "metric_name": metric_name,
        "fp32_metric": ref_scores["metric"] if ref_scores else None,
        "int8_metric": tried[-1].get("metric"),
        "drop_points": tried[-1].get("drop_points"),
        "agreement_with_fp32": tried[-1].get("agreement"),
        "max_drop": cfg.max_drop,
        "tried": tried,
        "fp32_bytes": fp32_bytes,
        "bytes": int8_bytes,
        "size_ratio": int8_bytes / fp32_bytes,
        "int8_instructions": int8_speedup_expected(),
        "note": None if int8_speedup_expected() else "this CPU has no VNNI/AMX int8 instructions: int8 may be no faster than fp32 here",
    }


# ------------------------------------------------------------------------------------------------- QAT


def qat_export(cfg: QuantizeConfig, manifest: dict, work: Path, progress: bool) -> Path:
    """Fine-tune the PyTorch source with simulated int8 (fake quantization), then export it to ONNX in `work`."""
    from slmkit.config import OptimConfig
    from slmkit.encoding import make_encoder, uses_token_types
    from slmkit.export import export
    from slmkit.progress import StepProgress
    from slmkit.tasks import get_task
    from slmkit.train import EpochEnd, make_optimizer, run_epochs

    source = Path(manifest.get("source") or "")
    if not (source / artifacts.WEIGHTS).is_file():
        raise UserError(f"{cfg.model}: QAT needs the PyTorch model this export came from ({source or 'not recorded'}): export it again from the slm train output")
    model, hf_tokenizer = artifacts.load_model(source)
    task = get_task(manifest.get("task", "classification"), **manifest.get("task_options", {}))
    examples, data_path = examples_from(None, source, "train", "--calib-data")
    label2id = {label: i for i, label in enumerate(manifest["labels"])}
    if task.name == "classification":
        examples = [e for e in examples if e.label in label2id]
    # NER sentences carry their tags and QA questions their answers: the task's encode makes the targets
    if cfg.qat_limit and len(examples) > cfg.qat_limit:
        rng = np.random.default_rng(cfg.seed)
        examples = [examples[i] for i in sorted(rng.choice(len(examples), cfg.qat_limit, replace=False))]
    features = task.encode(examples, make_encoder(hf_tokenizer, hf_tokenizer.model_max_length), label2id or None)
    collate = partial(task.collate, pad_id=hf_tokenizer.pad_token_id or 0, token_types=uses_token_types(model, hf_tokenizer))
    optim = OptimConfig(epochs=cfg.qat_epochs, lr=cfg.qat_lr, seed=cfg.seed, warmup=0.1)
    steps = -(-len(features) // optim.batch_size)
    optimizer, scheduler = make_optimizer(model, optim, steps * optim.epochs)
    restore = fake_quantize(model, cfg.reduce_range)
    with StepProgress(progress) as bar:
        bar.start(f"QAT epoch 1/{optim.epochs}", steps)
        for record in run_epochs(model, optimizer, scheduler, features, collate, task.loss, optim):
            if isinstance(record, EpochEnd):
                bar.log(f"QAT epoch {record.epoch}: loss {record.train_loss:.4f}")
                if record.epoch < optim.epochs:
                    bar.start(f"QAT epoch {record.epoch + 1}/{optim.epochs}", steps)
                continue
            bar.advance(record.loss, record.examples_per_s)
    restore()
    tuned = work / "qat-model"
    tuned.mkdir()
    model.eval()
    artifacts.save_model(model, hf_tokenizer, tuned)
    shutil.copy(source / artifacts.CONFIG, tuned / artifacts.CONFIG)  # keeps the lineage to the training data
    exported = work / "qat-onnx"
    export(ExportConfig(model=str(tuned), out=str(exported), probe_data=str(data_path)))
    return exported


def fake_quantize(model, reduce_range: bool = True):
    """Simulate dynamic int8 in every nn.Linear: weights symmetric per output channel (±64 with
    `reduce_range`, else ±127), inputs asymmetric per tensor with the batch's own range (what ONNX Runtime's
    dynamic quantization computes at run time); the rounding's gradient passes straight through. Returns a
    function that restores the plain layers."""
    import torch

    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for layer in layers:
        layer.forward = partial(_fake_quantized_linear, layer, qmax=64 if reduce_range else 127)

    def restore() -> None:
        for layer in layers:
            del layer.forward  # back to nn.Linear.forward

    return restore


def _fake_quantized_linear(layer, x, qmax: int = 127):
    import torch
    import torch.nn.functional as F

    lo, hi = torch.aminmax(x.detach())
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi - lo) / 255.0, min=1e-8).float()
    zero = torch.round(-lo / scale).to(torch.int32)
    x = torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)
    w = layer.weight
    w_scale = torch.clamp(w.detach().abs().amax(dim=1) / qmax, min=1e-8).float()
    w = torch.fake_quantize_per_channel_affine(w, w_scale, torch.zeros_like(w_scale, dtype=torch.int32), 0, -qmax, qmax)
    return F.linear(x, w, layer.bias)


# ------------------------------------------------------------------------------------------ causal LMs

LM_EVAL_TEXTS = 200  # held-out texts scored for perplexity (a seeded sample when there are more)
LM_PROMPTS = 16  # prompts whose greedy continuations are compared
LM_GREEDY_TOKENS = 16


def quantize_lm(cfg: QuantizeConfig, src: Path, out: Path, manifest: dict, overwrite: bool) -> QuantizeResult:
    """An exported causal LM to int8 (ONNX Runtime dynamic: MatMul weights and the embedding table), measured on
    held-out text instead of accuracy: perplexity of fp32 and int8, and how many greedy tokens agree (the
    continuations of the held-out texts' first halves, compared up to the first difference)."""
    from slmkit.export_lm import LM_FILES, probe_prompts
    from slmkit.runtime import LMGenerator

    if cfg.method != "dynamic":
        raise UserError(f"--method {cfg.method}: a causal LM is quantized with --method dynamic (int8 weights, activations quantized per step)")
    if cfg.max_drop is not None:
        raise UserError("--max-drop: the accuracy budget is for classifiers; a causal LM's int8 is reported by perplexity and greedy agreement (metrics.json)")
    texts, source = lm_eval_texts(cfg, src)
    fp32 = LMGenerator(src)
    prompts = probe_prompts(fp32.tokenizer, texts, LM_PROMPTS, min(32, fp32.context_length - LM_GREEDY_TOKENS - 1))
    with artifacts.staged(out, overwrite) as staging:
        artifacts.copy_serving_files(src, staging)
        for name in LM_FILES:
            if (src / name).is_file():
                shutil.copy(src / name, staging / name)
        quantize_file(cfg, src / artifacts.ONNX_MODEL, staging / artifacts.ONNX_MODEL, list(cfg.exclude), None)
        chosen = {"method": cfg.method, "per_channel": cfg.per_channel, "step": "as asked", "excluded_nodes": list(cfg.exclude)}
        artifacts.write_json(staging / artifacts.MANIFEST, {**manifest, "precision": "int8", "quantization": chosen})
        int8 = LMGenerator(staging)
        ppl_fp32, tokens = lm_perplexity(fp32, texts)
        ppl_int8, _ = lm_perplexity(int8, texts)
        greedy = dict(max_new_tokens=LM_GREEDY_TOKENS, temperature=0.0)
        agreed, identical = 0, 0
        from slmkit.generate import GenerationConfig

        for prompt in prompts:
            a = fp32.generate_ids(prompt, GenerationConfig(**greedy), stop_at_eos=False)
            b = int8.generate_ids(prompt, GenerationConfig(**greedy), stop_at_eos=False)
            same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            agreed += same
            identical += a == b
        fp32_bytes, int8_bytes = (src / artifacts.ONNX_MODEL).stat().st_size, (staging / artifacts.ONNX_MODEL).stat().st_size
        metrics = {
            "chosen": chosen,
            "fell_back_to_fp32": False,
            "metric_name": "perplexity",
            "fp32_metric": None,  # no accuracy: the LM's figures are below
            "perplexity": {"fp32": ppl_fp32, "int8": ppl_int8, "change_pct": 100 * (ppl_int8 / ppl_fp32 - 1)},
            "greedy": {"prompts": len(prompts), "tokens_each": LM_GREEDY_TOKENS, "agreement": agreed / (len(prompts) * LM_GREEDY_TOKENS),
                       "identical_continuations": identical},
            "eval": {"texts": len(texts), "tokens": tokens, "source": str(source)},
            "max_drop": None,
            "fp32_bytes": fp32_bytes,
            "bytes": int8_bytes,
            "size_ratio": int8_bytes / fp32_bytes,
            "int8_instructions": int8_speedup_expected(),
            "note": None if int8_speedup_expected() else "this CPU has no VNNI/AMX int8 instructions: int8 may be no faster than fp32 here",
        }
        save_config(replace(cfg, model=str(src.resolve())), staging / artifacts.CONFIG)
        artifacts.write_json(staging / artifacts.METRICS, metrics)
    return QuantizeResult(out, metrics)


def lm_eval_texts(cfg: QuantizeConfig, src: Path) -> tuple[list[str], str]:
    """Held-out documents (see slmkit.export_lm.lm_texts: --eval-data, the recorded held-out split, or the built-in
    sentences), a seeded sample of LM_EVAL_TEXTS when there are more."""
    from slmkit.export_lm import lm_texts

    texts, source = lm_texts(cfg.eval_data, src, "eval", "--eval-data", cfg.text_col)
    if len(texts) > LM_EVAL_TEXTS:
        rng = np.random.default_rng(cfg.seed)
        texts = [texts[i] for i in sorted(rng.choice(len(texts), LM_EVAL_TEXTS, replace=False))]
    return texts, source


def lm_perplexity(generator, texts: list[str]) -> tuple[float, int]:
    """exp(mean negative log-likelihood per token) over `texts`, and the number of tokens scored."""
    nll = np.concatenate([generator.token_nll(t) for t in texts])
    if not len(nll):
        raise UserError("the held-out texts have no token to score (each is one token or empty): pass longer --eval-data")
    return float(np.exp(nll.mean())), int(len(nll))
