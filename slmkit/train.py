"""`slm train`: fine-tune a base encoder on labeled text (or train a causal LM on plain text, `--task lm`), with
slmkit's one training loop.

Read top to bottom: `train(cfg)` reads and checks the data, resolves the base model, builds the task's
model, then drives `run_epochs` — the training loop, a generator that yields a record per optimizer step
and one per finished epoch. `train` evaluates at each epoch end, keeps the best weights (early stopping on
the eval metric), checkpoints for `--resume`, and finally writes the artifact directory.

The loop is written once: later stages (distillation) reuse `run_epochs` with their own loss function and
features. It is deterministic: shuffling is seeded by (seed, epoch) and torch's RNG is reseeded at every
epoch start, so a resumed run continues exactly as an uninterrupted one would.

Under `torchrun` the same code trains data-parallel (`slmkit.distributed`: each global batch split across the
processes, gradients averaged by DistributedDataParallel); only rank 0 evaluates, writes and logs.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from slmkit import artifacts, distributed, packing
from slmkit.base import resolve_base
from slmkit.config import LOWER_IS_BETTER, OptimConfig, TrainConfig, save_config
from slmkit.encoding import bucketed_order, make_encoder, uses_token_types
from slmkit.errors import UserError
from slmkit.hardware import native_bf16
from slmkit.progress import StepProgress, stderr
from slmkit.tasks import get_task, task_options


@dataclass
class Step:
    """One optimizer step of the loop."""

    epoch: int  # 1-based
    step: int  # 1-based within the epoch
    steps_per_epoch: int
    loss: float  # this process's share of the batch, under torchrun
    lr: float
    examples_per_s: float


@dataclass
class EpochEnd:
    epoch: int  # 1-based
    train_loss: float  # mean over the epoch's steps (of the whole batches', under torchrun)
    seconds: float
    examples_per_s: float


@dataclass
class TrainResult:
    out: Path
    metrics: dict  # the metrics.json written into `out`


# ------------------------------------------------------------------------------------------ the loop


def on_device(collate: Callable[[list[dict]], dict], device: str, rows: list[dict]) -> dict:
    """`collate`, with the batch's tensors moved to `device`."""
    return {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in collate(rows).items()}


def make_optimizer(model, cfg: OptimConfig, total_steps: int):
    """AdamW without weight decay on biases and LayerNorm weights; linear warmup, then linear decay to 0."""
    import torch

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=True)  # fused: 1.3x faster MiniLM steps on CPU
    warmup = int(cfg.warmup * total_steps)

    def schedule(step: int) -> float:  # multiplier of the peak learning rate
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def run_epochs(
    model,
    optimizer,
    scheduler,
    features: list[dict],
    collate: Callable[[list[dict]], dict],
    loss_fn: Callable[[object, dict], object],
    cfg: OptimConfig,
    start_epoch: int = 0,
    random_order: bool = False,
) -> Iterator[Step | EpochEnd]:
    """The training loop: yields a `Step` after each optimizer step and an `EpochEnd` after each epoch.

    `loss_fn(model, batch) -> scalar tensor`. The caller evaluates, checkpoints and stops (by leaving the loop).
    Batches are random with `random_order` (when `collate` packs them, see slmkit.packing, or the task's
    examples must not be sorted by length) or when `cfg.bucket` is off, else length-bucketed.
    Under torchrun every process runs this loop on its share of each batch (`distributed.shard`); `Step` and
    `EpochEnd` count the examples of all processes.
    """
    import torch

    rank, world = distributed.rank(), distributed.world_size()
    batch_loss = distributed.wrap(model, loss_fn)  # loss_fn(model, ·); under torchrun through DDP
    lengths = np.array([len(f["input_ids"]) for f in features])
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        rng = np.random.default_rng([cfg.seed, epoch])  # the same global batches on every process
        torch.manual_seed((cfg.seed * 1000 + epoch) * world + rank)  # dropout masks depend on (seed, epoch, rank) only
        batches = bucketed_order(lengths, cfg.batch_size, rng, 1 if random_order or not cfg.bucket else cfg.bucket_pool)
        model.train()
        started, seen, losses = time.perf_counter(), 0, []
        for i, idx in enumerate(batches, start=1):
            rows, weight = distributed.shard(idx, rank, world)  # all of idx at weight 1 in a single process
            batch = collate([features[j] for j in rows])
            with torch.autocast(cfg.device.split(":")[0], dtype=torch.bfloat16, enabled=cfg.bf16):
                loss = batch_loss(batch)
            (loss if weight == 1.0 else loss * weight).backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)  # of the averaged gradients
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            seen += len(idx)
            value = loss.item()
            losses.append(value * weight)  # the whole batch's loss: the mean over processes of the weighted shares
            elapsed = time.perf_counter() - started
            yield Step(epoch, i, len(batches), value, scheduler.get_last_lr()[0], seen / elapsed)
        elapsed = time.perf_counter() - started
        yield EpochEnd(epoch, float(np.mean(distributed.mean_across(losses))), elapsed, seen / elapsed)


def track_epoch(state: dict, record: EpochEnd, scores: dict, o: OptimConfig) -> tuple[bool, bool, str]:
    """Early-stopping bookkeeping for a finished epoch scored `scores` on the eval set.

    Updates `state` (best, best_epoch, bad_epochs, epoch, train_seconds, history) and returns (is_best, stop,
    the progress line). A tie keeps the later (longer-trained, more confident) weights but is not progress.
    The first epoch is always the best so far; perplexity is best when lowest, every other metric when highest."""
    value, best, first = scores[o.metric], state["best"], state["best_epoch"] == 0
    if o.metric in LOWER_IS_BETTER:
        improved, is_best = first or value < best, first or value <= best
    else:
        improved, is_best = first or value > best, first or value >= best
    state["bad_epochs"] = 0 if improved else state["bad_epochs"] + 1
    if is_best:
        state.update(best=scores[o.metric], best_epoch=record.epoch)
    state["epoch"] = record.epoch
    state["train_seconds"] += record.seconds
    state["history"].append(
        {"epoch": record.epoch, "train_loss": record.train_loss, **scores, "seconds": record.seconds, "examples_per_s": record.examples_per_s}
    )
    stop = bool(o.patience and state["bad_epochs"] >= o.patience and record.epoch < o.epochs)
    line = (
        f"epoch {record.epoch}: loss {record.train_loss:.4f}  eval {o.metric} {scores[o.metric]:.4f}"
        f"{'  (best)' if is_best else ''}  {record.examples_per_s:.0f} ex/s"
    )
    return is_best, stop, line


# ------------------------------------------------------------------------------------------ the stage


def train(
    cfg: TrainConfig, overwrite: bool = False, resume: bool = False, progress: bool = True, task=None, extra: dict | None = None
) -> TrainResult:
    """Fine-tune `cfg.model.base` on `cfg.data` and write the model directory `cfg.out`.

    `task`: a task object to use instead of the one `cfg.task` names (a stage that varies the loss, such as LM
    distillation with its teacher); `extra`: more entries for metrics.json."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    cfg.validate()
    o = cfg.train
    out = Path(cfg.out)
    artifacts.check_output(out, overwrite)
    if o.threads:
        torch.set_num_threads(o.threads)
    if o.device != "cpu" and not torch.cuda.is_available():
        raise UserError(f"train.device: {o.device} was asked for, but PyTorch sees no GPU here; use --set train.device=cpu")
    o = replace(o, device=distributed.init(o.device))  # under torchrun: join the other processes (cuda: one GPU each)
    main = distributed.is_main()  # rank 0 alone writes the artifact and logs
    if o.bf16 and o.device == "cpu" and not native_bf16() and main:
        stderr.print("warning: --bf16 on a CPU without native bf16 (AVX-512 BF16 or AMX): training will be much slower than fp32")
    task = task or get_task(cfg.task, **task_options(cfg))
    o = replace(o, metric=o.metric or task.metric_names[0], lr=o.lr or task.default_lr)
    cfg = replace(cfg, train=o)

    # data: read, check, split
    d = cfg.data
    train_path = Path(d.train)
    train_ex = task.read(train_path, d)
    if d.eval:
        eval_path = Path(d.eval)
        eval_ex = task.read(eval_path, d)
    else:
        eval_path = train_path
        train_ex, eval_ex = task.split(train_ex, d.eval_split, o.seed)
    labels = task.labels(train_ex, train_path, eval_ex, eval_path)
    label2id = {label: i for i, label in enumerate(labels)}

    # model and features
    if hasattr(task, "resolve_base"):  # lm: a local causal LM, or a tokenizer trained on the corpus and a fresh config
        base = task.resolve_base(cfg.model.base, train_ex, train_path, cfg.model.dropout)
        cfg = replace(cfg, model=replace(cfg.model, base=base.name))
        max_length = task.default_max_length(base.hf_tokenizer, train_ex, base.config, cfg.model.max_length)
    else:
        base = resolve_base(cfg.model.base)
        max_length = cfg.model.max_length or task.default_max_length(base.hf_tokenizer, train_ex)
    # only now: bad input above leaves nothing behind. The other processes write nothing; with --resume they
    # read the checkpoint too (then `begin` only checks it is there)
    staging = artifacts.begin(out, overwrite, resume) if main or resume else artifacts.staging_dir(out)
    cfg = replace(cfg, model=replace(cfg.model, max_length=max_length))
    encoder = make_encoder(base.hf_tokenizer, max_length)
    train_feats = task.encode(train_ex, encoder, label2id)
    eval_feats = getattr(task, "encode_eval", task.encode)(eval_ex, encoder, label2id)  # lm: one document at a time
    torch.manual_seed(o.seed)  # the new head's initialization
    model = task.build_model(base, labels, cfg.model.dropout).to(o.device)
    if o.grad_checkpoint:
        # activations recomputed in the backward pass: less memory, slower steps (transformers 5.x renamed the method)
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    collate = partial(task.collate, pad_id=base.hf_tokenizer.pad_token_id or 0, token_types=uses_token_types(model, base.hf_tokenizer))
    to_packed, why = packing.plan(model, train_feats, collate) if o.pack and getattr(task, "packs", False) else (None, "")
    train_collate = packing.packed_collate(to_packed, collate) if to_packed else collate
    bucket = o.bucket and getattr(task, "buckets", True)
    if why and main:
        stderr.print(f"note: train.pack: {why}; {'length-bucketed' if bucket else 'random'} batches instead")
    batches = "packed" if to_packed else "bucketed" if bucket else "random"
    if o.device != "cpu":
        collate, train_collate = partial(on_device, collate, o.device), partial(on_device, train_collate, o.device)
    base.hf_tokenizer.model_max_length = max_length  # predict and transformers.pipeline truncate here

    steps_per_epoch = math.ceil(len(train_feats) / o.batch_size)
    optimizer, scheduler = make_optimizer(model, o, steps_per_epoch * o.epochs)
    class_weights = None
    if o.class_weights:
        counts = np.bincount([f["label"] for f in train_feats], minlength=len(labels))
        class_weights = torch.tensor(len(train_feats) / (len(labels) * np.maximum(counts, 1)), dtype=torch.float32, device=o.device)
    loss_fn = partial(task.loss, class_weights=class_weights, label_smoothing=o.label_smoothing)
    if to_packed:  # random batches, their texts sharing rows: the speed of bucketing, without its sorted batches
        loss_fn = packing.packed_loss(loss_fn)

    state = {"epoch": 0, "best": -1.0, "best_epoch": 0, "bad_epochs": 0, "history": [], "train_seconds": 0.0}
    if resume:
        state = artifacts.load_checkpoint(staging, model, optimizer)
        # the optimizer's param groups carry the current learning rate; the schedule continues from here
        scheduler.last_epoch = state["epoch"] * steps_per_epoch
    # recorded with absolute paths: later stages (export, quantize, prune) find the same data from anywhere
    recorded = replace(d, train=str(train_path.resolve()), eval=str(Path(d.eval).resolve()) if d.eval else None)
    if main:
        save_config(replace(cfg, data=recorded), staging / artifacts.CONFIG)

    def eval_scores(full: bool) -> dict:
        outputs = task.predict_logits(model, eval_feats, collate, o.eval_batch_size)
        return task.score(eval_ex, eval_feats, outputs, labels, full, seed=o.seed)

    stopped_early = False
    with StepProgress(progress and main) as bar:
        if state["epoch"] < o.epochs:
            bar.start(f"epoch {state['epoch'] + 1}/{o.epochs}", steps_per_epoch)
        for record in run_epochs(model, optimizer, scheduler, train_feats, train_collate, loss_fn, o, state["epoch"], random_order=batches != "bucketed"):
            if isinstance(record, Step):
                bar.advance(record.loss, record.examples_per_s)
                continue
            # rank 0 scores the epoch; every process takes the same best/stop decisions from its scores
            scores = distributed.from_main(lambda: eval_scores(full=False))
            is_best, stop, line = track_epoch(state, record, scores, o)
            if main:
                if is_best:  # a task may save its own way (lm with --lora: the adapter)
                    getattr(task, "save_model", artifacts.save_model)(model, base.hf_tokenizer, staging)
                artifacts.save_checkpoint(staging, model, optimizer, state)
            bar.log(line)
            if stop:
                stopped_early = True
                break
            if record.epoch < o.epochs:
                bar.start(f"epoch {record.epoch + 1}/{o.epochs}", steps_per_epoch)

    if not main:  # rank 0 scores, writes and commits; the others return its metrics once it has
        return TrainResult(out, distributed.broadcast(None))

    # restore the best epoch's weights and score them fully
    getattr(task, "load_weights", artifacts.load_weights)(model, staging)
    trained = sum(h["examples_per_s"] * h["seconds"] for h in state["history"])
    result = {
        "task": task.name,
        "base": cfg.model.base,
        "labels": labels,
        "n_train": len(train_ex),
        "n_eval": len(eval_ex),
        "eval_source": str(eval_path) if d.eval else f"{d.eval_split:.0%} held-out split of {train_path}",
        "max_length": max_length,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batches": batches,  # packed, bucketed or random (train.pack, train.bucket)
        "processes": distributed.world_size(),  # under torchrun: each took a share of every batch
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "stopped_early": stopped_early,
        "train_seconds": state["train_seconds"],
        "train_examples_per_s": trained / max(state["train_seconds"], 1e-9),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "eval": eval_scores(full=True),
        "history": state["history"],
        **(extra or {}),
    }
    if hasattr(task, "finish"):  # lm with --lora: merge the adapters into the base (--merge); what it did, for metrics
        result.update(task.finish(model, base.hf_tokenizer, staging))
    artifacts.write_json(staging / artifacts.METRICS, result)
    artifacts.commit(staging, out)
    return TrainResult(out, distributed.broadcast(result))
