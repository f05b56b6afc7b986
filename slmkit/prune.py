"""`slm prune`: remove the least important attention heads and FFN neurons of a BERT classifier, then recover.

Read top to bottom: `prune(cfg)` loads the trained model (the teacher) and its recorded data, scores every
head and FFN neuron, picks the globally least important ones, slices them out of the weights into a smaller
dense model (`slmkit.pruned_bert`), proves on a probe batch that the sliced model computes exactly what the
original computes with those units masked to zero, recovers accuracy with a short fine-tune, and writes the
model directory with the before/after numbers.

Importance is Michel et al. 2019 ("Are Sixteen Heads Really Better than One?"): a mask of ones multiplies
each head's context vectors (and, the same way, each FFN neuron's activation); |d loss / d mask| summed over
`importance_batches` training batches is the unit's importance, normalized per layer by its L2 norm so that
layers compare on one scale. The masks are forward pre-hooks, so any BERT layer can be scored unchanged:

    attention.output.dense input  (batch, seq, heads * head_size)  x  head mask repeated over head_size
    output.dense input            (batch, seq, neurons)             x  neuron mask

Recovery uses slmkit's one training loop (`train.run_epochs`). With `distill` the loss is the mean of the
distillation loss KL(teacher/T || student/T)·T² and the cross-entropy on the labels (0.5 each, from
`slmkit.losses`); the teacher's logits are computed once before the loop and travel in the features, since
running the teacher in the loop makes each step 3-4x slower on a CPU.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from slmkit import artifacts, losses
from slmkit.config import OptimConfig, PruneConfig, save_config
from slmkit.data import check_known_labels
from slmkit.distill import collate_with_teacher
from slmkit.encoding import bucketed_order, iterate, make_encoder, uses_token_types
from slmkit.errors import UserError
from slmkit.lineage import examples_from
from slmkit.progress import StepProgress
from slmkit.tasks import get_task
from slmkit.train import EpochEnd, Step, make_optimizer, run_epochs

SUPPORTED_TYPES = ("bert", "slm_pruned_bert")  # config.json model_type values this stage can slice
DISTILL_WEIGHT = 0.5  # recovery loss = DISTILL_WEIGHT * KD + (1 - DISTILL_WEIGHT) * CE
PARITY_TOLERANCE = 1e-4  # largest |logit difference| between the sliced and the masked model on the probe batch
PROBE_SIZE = 64  # eval examples in the parity probe batch


@dataclass
class PruneResult:
    out: Path
    metrics: dict  # the metrics.json written into `out`


# ------------------------------------------------------------------------------------------ the stage


def prune(cfg: PruneConfig, overwrite: bool = False, progress: bool = True) -> PruneResult:
    """Prune `cfg.model` by `cfg.heads` / `cfg.ffn`, recover, and write the model directory `cfg.out`."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    started = time.perf_counter()
    cfg.validate()
    model_dir, out = Path(cfg.model), Path(cfg.out)
    artifacts.check_output(out, overwrite)
    artifacts.check_model_dir(model_dir)
    if artifacts.model_task(model_dir) != "classification":
        raise UserError(f"{model_dir}: a {artifacts.model_task(model_dir)} model: slm prune works on classification models only; shrink NER and QA models with slm quantize (dynamic, static or qat)")
    model_type = artifacts.read_json(model_dir / artifacts.HF_CONFIG).get("model_type")
    if model_type not in SUPPORTED_TYPES:
        raise UserError(f"{model_dir}: model_type {model_type!r} cannot be pruned: only BERT-architecture models (model_type bert) are supported")

    # data: the model's recorded training and eval examples unless --data / --eval say otherwise
    labels = artifacts.model_labels(model_dir)
    label2id = {label: i for i, label in enumerate(labels)}
    train_ex, train_path = examples_from(cfg.data, model_dir, "train", "--data", cfg.text_col, cfg.label_col)
    eval_ex, eval_path = examples_from(cfg.eval, model_dir, "eval", "--eval", cfg.text_col, cfg.label_col)
    check_known_labels(train_ex, train_path, labels, "is not one the model knows", "fix the label or pass other --data")
    check_known_labels(eval_ex, eval_path, labels, "is not one the model knows", "fix the label or pass other --eval")

    # the unpruned model is the teacher: frozen, it is only scored and (for distillation) asked for soft targets
    teacher, hf_tokenizer = artifacts.load_model(model_dir)
    teacher.requires_grad_(False)
    task = get_task(artifacts.model_task(model_dir))
    encoder = make_encoder(hf_tokenizer, hf_tokenizer.model_max_length)
    train_feats = task.encode(train_ex, encoder, label2id)
    eval_feats = task.encode(eval_ex, encoder, label2id)
    collate = partial(task.collate, pad_id=hf_tokenizer.pad_token_id or 0, token_types=uses_token_types(teacher, hf_tokenizer))
    staging = artifacts.begin(out, overwrite)  # only now: bad input above leaves nothing behind
    save_config(replace(cfg, model=str(Path(cfg.model).resolve())), staging / artifacts.CONFIG)  # absolute: the lineage to the data

    eval_y = np.array([f["label"] for f in eval_feats])
    teacher_eval = task.predict_logits(teacher, eval_feats, collate, cfg.batch_size)  # (n_eval, n_classes)

    # 1. score every head and neuron on training batches, keep the most important ones
    rng = np.random.default_rng([cfg.seed, 0])
    lengths = np.array([len(f["input_ids"]) for f in train_feats])
    score_batches = bucketed_order(lengths, cfg.batch_size, rng)[: cfg.importance_batches]
    with StepProgress(progress) as bar:
        bar.start("importance", len(score_batches))
        head_scores, neuron_scores = _importance(teacher, train_feats, score_batches, collate, task.loss, bar)
    keep_heads = units_to_keep(head_scores, cfg.heads)
    keep_neurons = units_to_keep(neuron_scores, cfg.ffn)

    # 2. slice them out of the weights, and prove the sliced model is the masked original
    student = slice_model(teacher, keep_heads, keep_neurons)
    probe = collate([eval_feats[i] for i in range(min(PROBE_SIZE, len(eval_feats)))])
    parity = _max_logit_diff(teacher, student, probe, keep_heads, keep_neurons)
    if parity > PARITY_TOLERANCE:  # a bug in slicing, not bad input
        raise RuntimeError(f"sliced model differs from the masked model by {parity:.2e} in logits (tolerance {PARITY_TOLERANCE:.0e})")
    pruned_eval = task.predict_logits(student, eval_feats, collate, cfg.batch_size)

    # 3. recover with the training loop: distillation from the cached teacher logits plus the labels
    history, recovery_seconds, n_recovery = [], 0.0, 0
    if cfg.recovery_epochs:
        features = train_feats
        if cfg.recovery_limit and cfg.recovery_limit < len(features):
            subset = np.sort(np.random.default_rng([cfg.seed, 1]).choice(len(features), cfg.recovery_limit, replace=False))
            features = [features[i] for i in subset]  # the same seeded subset in every pass
        n_recovery = len(features)
        if cfg.distill:
            cached = task.predict_logits(teacher, features, collate, cfg.batch_size)
            features = [{**f, "teacher_logits": row} for f, row in zip(features, cached)]
            train_collate: Callable = partial(collate_with_teacher, collate=collate)
            loss_fn: Callable = partial(_recovery_loss, temperature=cfg.temperature)
        else:
            train_collate, loss_fn = collate, task.loss
        o = OptimConfig(epochs=cfg.recovery_epochs, batch_size=cfg.batch_size, lr=cfg.recovery_lr, seed=cfg.seed)
        steps_per_epoch = math.ceil(len(features) / o.batch_size)
        optimizer, scheduler = make_optimizer(student, o, steps_per_epoch * o.epochs)
        with StepProgress(progress) as bar:
            bar.start(f"recovery 1/{o.epochs}", steps_per_epoch)
            for record in run_epochs(student, optimizer, scheduler, features, train_collate, loss_fn, o):
                if isinstance(record, Step):
                    bar.advance(record.loss, record.examples_per_s)
                    continue
                assert isinstance(record, EpochEnd)
                scores = task.quick_metrics(eval_y, task.decode(task.predict_logits(student, eval_feats, collate, cfg.batch_size)))
                recovery_seconds += record.seconds
                history.append({"epoch": record.epoch, "train_loss": record.train_loss, **scores, "seconds": record.seconds})
                bar.log(f"recovery {record.epoch}: loss {record.train_loss:.4f}  eval accuracy {scores['accuracy']:.4f}")
                if record.epoch < o.epochs:
                    bar.start(f"recovery {record.epoch + 1}/{o.epochs}", steps_per_epoch)
    student.eval()
    recovered_eval = task.predict_logits(student, eval_feats, collate, cfg.batch_size) if cfg.recovery_epochs else None

    # 4. write the smaller model and what changed
    artifacts.save_model(student, hf_tokenizer, staging)
    final = recovered_eval if recovered_eval is not None else pruned_eval
    teacher_pred = teacher_eval.argmax(axis=1)

    def scored(logits: np.ndarray | None) -> dict | None:
        if logits is None:
            return None
        return {**task.quick_metrics(eval_y, task.decode(logits)), "agreement": float(np.mean(logits.argmax(axis=1) == teacher_pred))}

    result = {
        "task": task.name,
        "source": str(model_dir),
        "labels": labels,
        "train_source": str(train_path),
        "eval_source": str(eval_path) if eval_path != train_path else f"the held-out split of {eval_path} recorded for {model_dir}",
        "n_train": len(train_feats),
        "n_eval": len(eval_feats),
        "parameters": {"before": _count(teacher), "after": _count(student)},
        "heads": {
            "before": [len(s) for s in head_scores],
            "after": [len(k) for k in keep_heads],
            "kept": keep_heads,  # head indices of the source model, per layer
            "importance": [s.round(4).tolist() for s in head_scores],  # per layer, L2-normalized
        },
        "ffn_neurons": {"before": [len(s) for s in neuron_scores], "after": [len(k) for k in keep_neurons]},
        "importance_batches": len(score_batches),
        "parity": {"probe_size": len(probe["input_ids"]), "max_abs_logit_diff": parity},
        # accuracy and macro-F1 on the eval set; agreement: fraction of argmax predictions equal to the unpruned model's
        "compare": {"unpruned": scored(teacher_eval), "pruned": scored(pruned_eval), "recovered": scored(recovered_eval)},
        "recovery": {
            "epochs": cfg.recovery_epochs,
            "n_examples": n_recovery,
            "loss": f"{DISTILL_WEIGHT} * KL(T={cfg.temperature}) * T^2 + {1 - DISTILL_WEIGHT} * CE" if cfg.distill else "CE",
            "seconds": recovery_seconds,
            "history": history,
        },
        "eval": task.metrics(eval_y, task.decode(final), labels, seed=cfg.seed),
        "seconds": time.perf_counter() - started,
    }
    artifacts.write_json(staging / artifacts.METRICS, result)
    artifacts.commit(staging, out)
    return PruneResult(out, result)


# ------------------------------------------------------------------------------------------ importance


def _layers(model: Any) -> list:
    return list(model.bert.encoder.layer)


@contextmanager
def _masked(model: Any, head_masks: list, neuron_masks: list) -> Iterator[None]:
    """Within the block, multiply layer i's head contexts by head_masks[i] (heads,) and its FFN activations by
    neuron_masks[i] (neurons,), with forward pre-hooks on the two down projections."""
    handles = []
    for layer, head_mask, neuron_mask in zip(_layers(model), head_masks, neuron_masks):
        head_size = layer.attention.self.attention_head_size

        def on_heads(module, args, mask=head_mask, size=head_size):
            return (args[0] * mask.repeat_interleave(size),)  # (batch, seq, heads * size): head h is columns h*size ..

        def on_neurons(module, args, mask=neuron_mask):
            return (args[0] * mask,)  # (batch, seq, neurons)

        handles.append(layer.attention.output.dense.register_forward_pre_hook(on_heads))
        handles.append(layer.output.dense.register_forward_pre_hook(on_neurons))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _importance(model, features, batches, collate, loss_fn, bar: StepProgress) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per layer: |d loss / d mask| summed over `batches`, L2-normalized within the layer (heads, then neurons)."""
    import torch

    layers = _layers(model)
    head_masks = [torch.ones(l.attention.self.num_attention_heads, requires_grad=True) for l in layers]
    neuron_masks = [torch.ones(l.intermediate.dense.out_features, requires_grad=True) for l in layers]
    head_sum = [torch.zeros_like(m) for m in head_masks]
    neuron_sum = [torch.zeros_like(m) for m in neuron_masks]
    model.eval()  # no dropout: the gradients measure the model that will be pruned
    with _masked(model, head_masks, neuron_masks):
        for batch in iterate(features, batches, collate):
            started = time.perf_counter()
            loss = loss_fn(model, batch)
            loss.backward()
            for mask, total in zip(head_masks + neuron_masks, head_sum + neuron_sum):
                total += mask.grad.abs()
                mask.grad = None
            bar.advance(loss.item(), len(batch["input_ids"]) / (time.perf_counter() - started))

    def normalized(scores: list) -> list[np.ndarray]:
        return [(s / s.norm().clamp_min(1e-20)).numpy().astype(np.float64) for s in scores]

    return normalized(head_sum), normalized(neuron_sum)


def units_to_keep(scores: list[np.ndarray], fraction: float) -> list[list[int]]:
    """Indices to keep per layer after removing the globally lowest-scored `fraction` of all units (rounded
    down), never the last unit of a layer. Ties go to the earlier layer and index (deterministic)."""
    total = sum(len(s) for s in scores)
    n_remove = math.floor(fraction * total + 1e-9)
    units = sorted((float(score), layer, index) for layer, s in enumerate(scores) for index, score in enumerate(s))
    left = [len(s) for s in scores]
    removed = [set() for _ in scores]
    for _, layer, index in units:
        if n_remove == 0:
            break
        if left[layer] > 1:
            removed[layer].add(index)
            left[layer] -= 1
            n_remove -= 1
    return [[i for i in range(len(s)) if i not in gone] for s, gone in zip(scores, removed)]


# ------------------------------------------------------------------------------------------ slicing


def slice_model(model: Any, keep_heads: list[list[int]], keep_neurons: list[list[int]]) -> Any:
    """A `PrunedBertForSequenceClassification` holding only the kept heads and neurons of the BERT `model`.

    Per layer: query/key/value keep the rows of the kept heads, attention.output.dense the matching columns;
    intermediate.dense keeps the rows of the kept neurons, output.dense the matching columns. Everything else
    is copied. The result computes what `model` computes with the other units masked to zero."""
    import torch

    from slmkit.pruned_bert import PrunedBertConfig, PrunedBertForSequenceClassification

    layers = _layers(model)
    head_size = layers[0].attention.self.attention_head_size
    state = dict(model.state_dict())
    for i, (heads, neurons) in enumerate(zip(keep_heads, keep_neurons)):
        rows = torch.tensor([h * head_size + d for h in heads for d in range(head_size)], dtype=torch.long)
        cols = torch.tensor(neurons, dtype=torch.long)
        p = f"bert.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            state[f"{p}attention.self.{name}.weight"] = state[f"{p}attention.self.{name}.weight"][rows]  # (out, hidden)
            state[f"{p}attention.self.{name}.bias"] = state[f"{p}attention.self.{name}.bias"][rows]
        state[f"{p}attention.output.dense.weight"] = state[f"{p}attention.output.dense.weight"][:, rows]  # (hidden, in)
        state[f"{p}intermediate.dense.weight"] = state[f"{p}intermediate.dense.weight"][cols]
        state[f"{p}intermediate.dense.bias"] = state[f"{p}intermediate.dense.bias"][cols]
        state[f"{p}output.dense.weight"] = state[f"{p}output.dense.weight"][:, cols]

    values = {k: v for k, v in model.config.to_dict().items() if k not in ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path")}
    values.update(layer_heads=[len(h) for h in keep_heads], layer_intermediate=[len(n) for n in keep_neurons], attention_head_size=head_size)
    config = PrunedBertConfig.from_dict(values)
    config._attn_implementation = model.config._attn_implementation  # same attention kernel: same numbers
    pruned = PrunedBertForSequenceClassification(config)
    pruned.load_state_dict({k: v.contiguous().clone() for k, v in state.items()})  # strict: every shape must fit
    return pruned.eval()


def _max_logit_diff(model, pruned, batch: dict, keep_heads, keep_neurons) -> float:
    """max |logits(pruned) - logits(model with the removed units masked to zero)| on `batch`."""
    import torch

    layers = _layers(model)
    head_masks = [torch.zeros(l.attention.self.num_attention_heads).index_fill_(0, torch.tensor(k), 1.0) for l, k in zip(layers, keep_heads)]
    neuron_masks = [torch.zeros(l.intermediate.dense.out_features).index_fill_(0, torch.tensor(k), 1.0) for l, k in zip(layers, keep_neurons)]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    model.eval()
    pruned.eval()
    with torch.inference_mode(), _masked(model, head_masks, neuron_masks):
        masked = model(**inputs).logits
    with torch.inference_mode():
        sliced = pruned(**inputs).logits
    return float((masked - sliced).abs().max())


# ------------------------------------------------------------------------------------------ recovery


def _recovery_loss(model, batch: dict, temperature: float):
    """DISTILL_WEIGHT * KL(teacher/T || student/T) * T² + (1 - DISTILL_WEIGHT) * cross-entropy on the labels."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "teacher_logits")}
    logits = model(**inputs).logits  # (batch, n_classes)
    kd = losses.kd_loss(logits, batch["teacher_logits"], temperature)
    return DISTILL_WEIGHT * kd + (1 - DISTILL_WEIGHT) * losses.ce_loss(logits, batch["labels"])


# ------------------------------------------------------------------------------------------ helpers


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())
